"""Fixtures of the serve tests: a real uvicorn server on loopback, in a thread or as a `medret serve` process."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Running:
    base: str            # http://127.0.0.1:PORT
    app: Any
    server: Any
    thread: threading.Thread

    @property
    def url(self) -> str:
        return self.base + "/retrieve"

    @property
    def service(self):
        return self.app.state.service

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def start_in_thread(config, settings=None, loader: Callable | None = None, wait_ready: bool = True,
                    port: int = 0) -> Running:
    """create_app + uvicorn.Server on a socket bound by medret.serve.server.bind_socket, run in a thread."""
    import uvicorn

    from medret.serve.app import create_app
    from medret.serve.server import bind_socket, uvicorn_config

    app = create_app(config, settings, loader)
    sock = bind_socket("127.0.0.1", port)
    port = sock.getsockname()[1]
    # the same uvicorn settings as `medret serve` (request-head timeout, keep-alive)
    server = uvicorn.Server(uvicorn_config(app, app.state.service.settings, "warning", timeout_graceful_shutdown=5))
    t = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="test-uvicorn")
    t.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert t.is_alive(), "the uvicorn thread died while starting"
        assert time.monotonic() < deadline, "uvicorn did not start within 30 s"
        time.sleep(0.005)
    running = Running(f"http://127.0.0.1:{port}", app, server, t)
    if wait_ready:
        assert app.state.service.batcher.ready.wait(60), "the engine did not load within 60 s"
        assert app.state.service.batcher.status == "ready", app.state.service.batcher.error
    return running


@pytest.fixture
def serve_thread():
    """Factory: serve_thread(config, settings=None, loader=None, wait_ready=True) -> Running (stopped at teardown)."""
    started: list[Running] = []

    def start(*args: Any, **kwargs: Any) -> Running:
        r = start_in_thread(*args, **kwargs)
        started.append(r)
        return r

    yield start
    for r in started:
        r.stop()


@dataclass
class Proc:
    proc: subprocess.Popen
    address_file: Path
    log: Path

    @property
    def base(self) -> str:
        return "http://" + self.address_file.read_text().strip()

    @property
    def url(self) -> str:
        return self.base + "/retrieve"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_address(self, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while not self.address_file.exists():
            if self.proc.poll() is not None:
                raise AssertionError(f"medret serve exited with {self.proc.returncode}:\n{self.output()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no address file after {timeout} s:\n{self.output()}")
            time.sleep(0.02)
        return self.base

    def terminate(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)


@pytest.fixture
def serve_process(tmp_path):
    """Factory: serve_process(*flags, env=None) starts `python -m medret.cli serve --port 0 --address-file F *flags`."""
    procs: list[Proc] = []

    def start(*flags: str, env: dict | None = None, address_file: Path | None = None) -> Proc:
        n = len(procs)
        addr = address_file or tmp_path / f"server-{n}.addr"
        log = tmp_path / f"server-{n}.log"
        full_env = {**os.environ, **(env or {})}
        full_env["PYTHONPATH"] = str(REPO) + os.pathsep + full_env.get("PYTHONPATH", "")
        args = [sys.executable, "-m", "medret.cli", "serve", "--address-file", str(addr), "--log-level", "info",
                *flags]
        if "--port" not in flags:
            args += ["--port", "0"]
        with open(log, "wb") as f:
            p = subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, env=full_env, cwd=str(tmp_path))
        proc = Proc(p, addr, log)
        procs.append(proc)
        return proc

    yield start
    for p in procs:
        if p.proc.poll() is None:
            p.proc.kill()
            p.proc.wait(10)



WORDS = ("sepsis mortality elderly icu patients septic shock vasopressors fluids blood pressure heart failure cardiac "
         "output congestion pneumonia lung infection kidney injury creatinine urine atrial fibrillation stroke "
         "anticoagulation delirium diabetic ketoacidosis insulin potassium antibiotics lactate ventilation "
         "oxygen fever cough asthma steroids dialysis transfusion anemia platelets bleeding surgery pain opioid "
         "sedation nutrition glucose troponin infarction aspirin statin hypertension").split()


def write_corpus(folder: Path, n_docs: int = 60, seed: int = 7) -> Path:
    """A MedRAG-layout corpus of n_docs random medical-word snippets in two chunk files (ids <stem>_<line>)."""
    import json
    import random

    rng = random.Random(seed)
    (folder / "chunk").mkdir(parents=True, exist_ok=True)
    half = n_docs // 2
    for stem, count in (("part_a", half), ("part_b", n_docs - half)):
        with open(folder / "chunk" / f"{stem}.jsonl", "w", encoding="utf-8") as f:
            for i in range(count):
                title = " ".join(rng.sample(WORDS, 2)).title()
                content = " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 24))) + "."
                f.write(json.dumps({"id": f"{stem}_{i}", "title": title, "content": content,
                                    "contents": f"{title}. {content}"}) + "\n")
    return folder


def random_queries(rng, n: int, dup_rate: float = 0.2) -> list[str]:
    out: list[str] = []
    for _ in range(n):
        if out and rng.random() < dup_rate:
            out.append(rng.choice(out))
        else:
            out.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 6))))
    return out


@pytest.fixture(scope="session")
def serve_corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("serve-corpus") / "servecorp")


@pytest.fixture(scope="session")
def serve_helpers():
    """The helpers above, for test modules (conftest modules are not importable by name)."""
    import types

    return types.SimpleNamespace(start_in_thread=start_in_thread, write_corpus=write_corpus,
                                 random_queries=random_queries, WORDS=WORDS)
