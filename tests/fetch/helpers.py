"""Helpers of the download tests: run medret's CLI in a child process (a hang is a failure, never a stuck suite),
and a small StatPearls-like archive."""
from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Run:
    rc: int
    stderr: str
    stdout: str
    seconds: float
    max_rss_bytes: int


def run_medret(*args: str, env: dict[str, str] | None = None, limit: float = 120) -> Run:
    """``python -m medret.cli ARGS`` with this checkout's medret; its wall time and peak RSS (VmHWM)."""
    full = {**os.environ, "PYTHONPATH": str(ROOT), "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
            **(env or {})}
    for var in ("HF_HUB_OFFLINE", "HF_HUB_CACHE", "MEDRET_MODELS_DIR", "HF_TOKEN"):
        if var not in (env or {}):
            full.pop(var, None)
    peak_file = tempfile.NamedTemporaryFile(prefix="medret-peak-", delete=False)
    peak_file.close()
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-c", _WITH_PEAK, peak_file.name, *args], env=full,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    got: dict[str, str] = {}
    readers = [threading.Thread(target=lambda k=k, f=f: got.__setitem__(k, f.read()), daemon=True)
               for k, f in (("out", proc.stdout), ("err", proc.stderr))]
    for t in readers:
        t.start()
    try:
        proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"medret {' '.join(args)} still ran after {limit} s") from None
    finally:
        for t in readers:
            t.join()
        peak = Path(peak_file.name).read_text().strip()
        os.unlink(peak_file.name)
    return Run(proc.returncode, got.get("err", ""), got.get("out", ""), time.monotonic() - start,
               int(peak or 0) * 1024)


#: runs medret's CLI and, at exit, writes the process's peak RSS (VmHWM, kB) to the file named first: the peak
#: of this program only (``wait4``'s ru_maxrss would also count the forked test process before its exec)
_WITH_PEAK = """
import atexit, runpy, sys
out = sys.argv.pop(1)
def peak():
    with open("/proc/self/status") as f:
        kb = next((line.split()[1] for line in f if line.startswith("VmHWM:")), "0")
    with open(out, "w") as f:
        f.write(kb)
atexit.register(peak)
sys.argv[0] = "medret"
runpy.run_module("medret.cli", run_name="__main__", alter_sys=True)
"""


def article(stem: str, paragraphs: int = 3) -> bytes:
    # ~1 KB of hex per paragraph, different everywhere, keeps the archive from compressing to almost nothing
    def token(i: int) -> str:
        return "".join(hashlib.sha512(f"{stem}/{i}/{j}".encode()).hexdigest() for j in range(8))

    body = "".join(f"<p>Paragraph {i} of {stem} about sepsis and kidney injury in the elderly. {token(i)}</p>"
                   for i in range(paragraphs))
    return (f'<?xml version="1.0"?><book-part-wrapper><book-part><book-part-meta><title-group><title>{stem}'
            f'</title></title-group></book-part-meta><body><sec><title>Intro</title>{body}</sec></body></book-part>'
            f'</book-part-wrapper>').encode()


def statpearls_archive(n: int = 300) -> bytes:
    """A StatPearls-like ``.tar.gz``: ``n`` articles ``statpearls_NBK430685/article-<i>.nxml``."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for i in range(n):
            data = article(f"article-{i}")
            ti = tarfile.TarInfo(f"statpearls_NBK430685/article-{i}.nxml")
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()
