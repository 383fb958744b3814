"""Issue 13 item 8: temporary folders left by killed builds are reported by `medret doctor` and removed by the next
build (and by --rebuild), unless a live build may own them.

The break reproduced: each `kill -9` of a build left a `.store.tmp-PID` / `.bm25.tmp-PID` folder (7 kills: 246 MB)
that neither the next build, nor --rebuild, nor doctor mentioned.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medret.corpus.registry import resolve_corpus
from medret.corpus.store import build_store
from medret.storage.locks import artifact_lock

WORDS = ("sepsis mortality elderly patients renal failure creatinine stroke anticoagulation delirium pneumonia "
         "insulin potassium fluids pressure heart lung kidney infection risk treatment outcome").split()


def corpus_of(folder: Path, rows: int = 60_000) -> Path:
    (folder / "chunk").mkdir(parents=True)
    for part in range(4):
        with open(folder / "chunk" / f"part_{part}.jsonl", "w") as f:
            for i in range(rows // 4):
                text = " ".join(WORDS[(i * 13 + part + j * j) % len(WORDS)] for j in range(60))
                f.write(json.dumps({"id": f"part_{part}_{i}", "title": f"Topic {i}", "content": text}) + "\n")
    return folder


def du(path: Path) -> int:
    return sum(os.lstat(os.path.join(r, f)).st_size for r, _, fs in os.walk(path) for f in fs)


def kill_when(cmd: list[str], ready) -> None:
    """Run ``cmd`` and SIGKILL it as soon as ``ready()`` is true (mid-build)."""
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not ready():
            if p.poll() is not None:
                pytest.fail(f"the build ended (rc {p.returncode}) before it could be killed mid-way")
            time.sleep(0.002)
        os.kill(p.pid, signal.SIGKILL)
    finally:
        p.wait()


def doctor(corpus: Path) -> list[dict]:
    out = subprocess.run([sys.executable, "-m", "medret", "doctor", "--corpus", str(corpus), "--no-search", "--json"],
                         capture_output=True, text=True)
    return [c for c in json.loads(out.stdout)["checks"] if c["key"] == "leftovers"]


def test_killed_builds_are_reported_then_removed_by_the_next_build(tmp_path):
    corpus = corpus_of(tmp_path / "big")
    art = corpus / "medret"
    build = [sys.executable, "-m", "medret", "index", "build", "--corpus", str(corpus), "--retriever", "BM25"]

    def store_tmp_growing():
        return any(p.stat().st_size > 0 for p in art.glob(".store.tmp-*/docs.bin"))

    kill_when(build, store_tmp_growing)
    [store_tmp] = list(art.glob(".store.tmp-*"))
    assert not (art / "store").exists()
    # the store is then built by a run that is not killed, and a BM25 build is killed mid-way
    assert subprocess.run(build[:-1] + ["BM25"], capture_output=True).returncode == 0
    assert not store_tmp.exists()  # removed by the next build of the store
    (art / "bm25").rename(art / "bm25-done")

    def bm25_tmp_growing():
        return any(p.stat().st_size > 0 for p in art.glob(".bm25.tmp-*/_build.terms.i32"))

    kill_when(build, bm25_tmp_growing)
    (art / "bm25-done").rename(art / "bm25")
    [bm25_tmp] = list(art.glob(".bm25.tmp-*"))
    size = du(bm25_tmp)
    assert size > 0

    [line] = doctor(corpus)
    assert line["status"] == "warn" and "1 temporary" in line["title"]
    assert f"{bm25_tmp} (" in line["detail"] and "medret index build" in line["fix"]
    from medret.doctor import gb as _gb

    assert _gb(size) in line["title"]

    # --rebuild removes it (and the rebuilt index is a complete one)
    out = subprocess.run(build + ["--rebuild"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert not bm25_tmp.exists() and not list(art.glob(".*.tmp-*"))
    assert "removing" in out.stderr and str(bm25_tmp) in out.stderr
    assert doctor(corpus) == []
    out = subprocess.run([sys.executable, "-m", "medret", "search", "sepsis", "--corpus", str(corpus), "--json"],
                         capture_output=True, text=True)
    assert out.returncode == 0 and len(json.loads(out.stdout)["result"][0]) == 3


def test_leftover_of_a_live_process_is_kept_and_of_a_dead_one_removed(toy_corpus):
    source = resolve_corpus(str(toy_corpus), None).sources[0]
    art = source.artifact_dir
    art.mkdir(parents=True, exist_ok=True)
    sleeper = subprocess.Popen(["sleep", "60"])
    dead_pid = subprocess.Popen(["true"])
    dead_pid.wait()
    try:
        live = art / f".store.tmp-{sleeper.pid}"
        dead = art / f".store.tmp-{dead_pid.pid}"
        old = art / f".store.old-{dead_pid.pid}"
        for p in (live, dead, old):
            p.mkdir()
            (p / "docs.bin").write_bytes(b"x" * 1000)
        build_store(source)
        assert live.exists() and not dead.exists() and not old.exists()
        assert (art / "store" / "manifest.json").is_file()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_doctor_tells_a_running_build_from_an_orphan(toy_corpus):
    source = resolve_corpus(str(toy_corpus), None).sources[0]
    art = source.artifact_dir
    art.mkdir(parents=True, exist_ok=True)
    tmp = art / f".store.tmp-{os.getpid()}"
    tmp.mkdir()
    (tmp / "docs.bin").write_bytes(b"x" * 2048)
    with artifact_lock(source.store_dir, "the document store"):  # a build of it is running (this process)
        [line] = doctor(toy_corpus)
    assert line["status"] == "ok" and "running" in line["title"] and str(os.getpid()) in line["title"]
    [line] = doctor(toy_corpus)
    assert line["status"] == "warn" and str(tmp) in line["detail"]


def start_ticks(pid: int) -> int:
    """Field 22 of /proc/PID/stat (start time after boot, clock ticks), read here independently of medret."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[19])


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="needs Linux's /proc")
def test_leftover_whose_pid_now_belongs_to_another_process_is_removed(toy_corpus):
    """Issue 24 item 16: a leftover named after a PID that another live process has since taken was kept forever.
    Temporary names now carry the writer's start time with its PID."""
    from medret.storage.atomic import temp_name

    assert temp_name(Path("/x/store")).name == f".store.tmp-{os.getpid()}-{start_ticks(os.getpid())}"
    source = resolve_corpus(str(toy_corpus), None).sources[0]
    art = source.artifact_dir
    art.mkdir(parents=True, exist_ok=True)
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        start = start_ticks(sleeper.pid)
        writer = art / f".store.tmp-{sleeper.pid}-{start}"  # written by the sleeper itself: kept
        reused = art / f".store.tmp-{sleeper.pid}-{start - 1}"  # by an earlier process with the same PID
        reused_old = art / f".store.old-{sleeper.pid}-{start + 7}"
        for p in (writer, reused, reused_old):
            p.mkdir()
            (p / "docs.bin").write_bytes(b"x" * 1000)
        build_store(source)
        assert writer.exists() and not reused.exists() and not reused_old.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
