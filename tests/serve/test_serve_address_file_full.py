"""`medret serve --address-file` on a full file system (issue 24 item 19): exit non-zero with one clear line, no
thread traceback, and no server left running without its address (a job would wait its whole health timeout).
Real tmpfs mounts (tests/storage's helper: needs root, as the tests run)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading

import pytest

from medret.config import RetrieverConfig
from medret.errors import StorageError
from medret.serve.app import ServeSettings
from medret.serve.server import run_server
from tests.storage.test_storage_errors import fill, tmpfs

pytestmark = pytest.mark.integration


def test_a_full_file_system_is_refused_before_the_index_loads(toy_corpus, tmp_path):
    with tmpfs(tmp_path / "small", "64k") as fs:
        fill(fs, 0)
        r = subprocess.run([sys.executable, "-m", "medret", "serve", "--corpus", str(toy_corpus), "--retriever",
                            "BM25", "--port", "0", "--address-file", str(fs / "addr")], capture_output=True, text=True,
                           timeout=120, env=dict(os.environ))
        left = sorted(p.name for p in fs.iterdir())
    assert r.returncode == 1, r.stderr[-3000:]
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("medret: error:")]
    assert len(errors) == 1 and f"--address-file {str(fs / 'addr')!r} cannot be written" in errors[0], r.stderr
    assert "No space left on device" in errors[0] and "did not start" in errors[0]
    assert left == ["filler"]  # no address file, no probe or temporary file left behind
    assert not (toy_corpus / "medret").exists()  # refused before anything was built


def test_the_disk_filling_up_while_the_index_loads_stops_the_server(toy_corpus, tmp_path):
    """The probe passes, then the file system fills (here: from the callback that runs once the socket is bound,
    before the engine loads); writing the address fails: the server stops and says why, instead of serving
    without its address."""
    with tmpfs(tmp_path / "small", "64k") as fs:
        bound: list[str] = []

        def on_address(address: str) -> None:
            bound.append(address)
            fill(fs, 0)

        config = RetrieverConfig.from_mapping({"corpus_name": str(toy_corpus), "retriever_name": "BM25"})
        # never hang the suite: a server that keeps running (the bug) gets SIGTERM, which stops it gracefully
        guard = threading.Timer(60, lambda: os.kill(os.getpid(), signal.SIGTERM))
        guard.daemon = True
        guard.start()
        try:
            with pytest.raises(StorageError) as e:
                run_server(config, ServeSettings(), address_file=fs / "addr", on_address=on_address,
                           log_level="warning")
        finally:
            guard.cancel()
        left = sorted(p.name for p in fs.iterdir())
    msg = str(e.value)
    assert bound and "No space left on device" in msg and "the server stopped" in msg, msg
    assert left == ["filler"]
    host, port = bound[0].rsplit(":", 1)
    with pytest.raises(OSError):  # the server is gone: nothing listens on its port
        socket.create_connection((host, int(port)), timeout=2).close()
