"""`medret doctor`: each failing condition is produced for real in a temporary set-up and must give its fail line
and a non-zero exit status; a healthy set-up passes with exit status 0."""
from __future__ import annotations

import json
import shutil
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from medret import cli
from medret.doctor import Check, check_memory, check_server, format_checks
from medret.doctor import Need as _Need

TESTS = Path(__file__).resolve().parents[1]
SEARCHR1_FAKE = TESTS / "integrations" / "fixtures" / "searchr1_fake"

DOCS = [
    ("Sepsis", "Sepsis in elderly ICU patients carries a high mortality risk."),
    ("Septic shock", "Septic shock needs vasopressors when fluids fail to restore blood pressure."),
    ("Heart failure", "Heart failure reduces cardiac output and causes congestion."),
    ("Pneumonia", "Pneumonia is an infection of the lung that often leads to sepsis."),
    ("Delirium", "Delirium in the ICU is common in elderly patients and predicts mortality."),
]


def write_source(db: Path, source: str, files: dict[str, list[tuple[str, str]]]) -> Path:
    chunk = db / source / "chunk"
    chunk.mkdir(parents=True, exist_ok=True)
    for stem, docs in files.items():
        (chunk / f"{stem}.jsonl").write_text("".join(
            json.dumps({"id": f"{stem}_{i}", "title": t, "content": c, "contents": f"{t}. {c}"}) + "\n"
            for i, (t, c) in enumerate(docs)))
    return chunk


@pytest.fixture
def db(tmp_path) -> Path:
    d = tmp_path / "db"
    write_source(d, "textbooks", {"Internal_Harrison": DOCS[:3], "Pharmacology_Katzung": DOCS[3:]})
    return d


def doctor(capsys, *argv: str) -> tuple[int, list[dict]]:
    rc = cli.main(["doctor", "--json", *argv])
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] == (rc == 0)
    return rc, out["checks"]


def lines(checks: list[dict], key: str, status: str | None = None) -> list[dict]:
    return [c for c in checks if c["key"] == key and (status is None or c["status"] == status)]


def build(db: Path, retriever: str = "BM25", **kw) -> None:
    from medret import clear_cache, get_retriever

    r = get_retriever(corpus_name="Textbooks", retriever_name=retriever, db_dir=str(db), device="cpu", **kw)
    assert r.search(["sepsis mortality"], 2)[0]
    clear_cache()


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_healthy_setup_passes(db, tiny_bert_dir, tmp_path, capsys):
    retriever = f"BM25+{tiny_bert_dir}"
    build(db, retriever, pooling="cls")
    checkout = shutil.copytree(SEARCHR1_FAKE, tmp_path / "Search-R1")
    from medret.integrations.searchr1_patch import patch

    patch(checkout)
    job = write_job(tmp_path / "train.sbatch", db)
    rc, checks = doctor(capsys, "--corpus", "Textbooks", "--db-dir", str(db), "--retriever", retriever,
                        "--pooling", "cls", "--device", "cpu", "--searchr1", str(checkout), "--sbatch", str(job))
    assert rc == 0, [c for c in checks if c["status"] != "ok"]
    statuses = {c["key"]: c["status"] for c in checks}
    for key in ("python", "packages", "torch", "gpu", "store", "index", "memory", "encoder", "search", "searchr1",
                "slurm"):
        assert key in statuses, key
    # the only non-ok line allowed: this toy Textbooks is not MedRAG's 125,847 snippets
    assert [(c["key"], c["status"]) for c in checks if c["status"] != "ok"] == [("corpus", "warn")]
    corpus = lines(checks, "corpus")[0]
    assert "5 snippets" in corpus["title"] and "125,847" in corpus["detail"]
    assert len(lines(checks, "index", "ok")) == 2  # BM25 and the dense index both match
    assert "3 results" in lines(checks, "search")[0]["title"]


def test_missing_corpus_fails_with_download_fix(tmp_path, capsys):
    (tmp_path / "db").mkdir()
    rc, checks = doctor(capsys, "--corpus", "PubMed", "--db-dir", str(tmp_path / "db"))
    assert rc == 1
    [fail] = lines(checks, "corpus", "fail")
    assert f"medret corpus download PubMed --db-dir {tmp_path / 'db'}" == fail["fix"]
    assert [c["status"] for c in lines(checks, "search")] == ["warn"]  # no test query on a missing corpus


def test_git_lfs_pointer_files_fail(db, capsys):
    target = db / "textbooks" / "chunk" / "Pharmacology_Katzung.jsonl"
    target.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:" + "0" * 64 + "\nsize 123\n")
    rc, checks = doctor(capsys, "--corpus", "Textbooks", "--db-dir", str(db))
    assert rc == 1
    [fail] = lines(checks, "corpus", "fail")
    assert "1 of 2 chunk files are git-lfs pointers" in fail["title"]
    assert "Pharmacology_Katzung.jsonl" in fail["detail"] and fail["fix"].startswith("medret corpus download Textbooks")


def test_stale_store_and_stale_indexes_fail(db, tiny_bert_dir, capsys):
    retriever = f"BM25+{tiny_bert_dir}"
    build(db, retriever, pooling="cls")
    args = ("--corpus", "Textbooks", "--db-dir", str(db), "--retriever", retriever, "--pooling", "cls",
            "--device", "cpu")
    # the corpus changes after the indexes were built
    with open(db / "textbooks" / "chunk" / "Internal_Harrison.jsonl", "a") as f:
        f.write(json.dumps({"id": "Internal_Harrison_3", "title": "New", "content": "A new snippet."}) + "\n")
    rc, checks = doctor(capsys, *args)
    assert rc == 1
    [fail] = lines(checks, "store", "fail")
    assert "stale" in fail["title"] and "--rebuild" in fail["fix"]
    # the store is rebuilt, the indexes are not: both index lines fail as stale
    from medret.corpus.registry import resolve_corpus
    from medret.corpus.store import build_store

    build_store(resolve_corpus("Textbooks", str(db)).sources[0])
    rc, checks = doctor(capsys, *args)
    assert rc == 1
    assert lines(checks, "store", "ok")
    fails = lines(checks, "index", "fail")
    assert len(fails) == 2
    assert "BM25" in fails[0]["title"] and "stale" in fails[0]["title"]
    assert "does not match" in fails[1]["title"] and "changed" in fails[1]["detail"]
    assert all("--rebuild" in f["fix"] for f in fails)


def test_empty_cuda_visible_devices(db, monkeypatch, capsys):
    build(db)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    # CUDA asked for, no GPU visible: fail, with the Ray fix
    rc, checks = doctor(capsys, "--corpus", "Textbooks", "--db-dir", str(db), "--device", "cuda")
    assert rc == 1
    [fail] = lines(checks, "gpu", "fail")
    assert "CUDA_VISIBLE_DEVICES=''" in fail["detail"] and "num_gpus" in fail["fix"]
    # device left to auto: a warning only, the CPU run is fine
    rc, checks = doctor(capsys, "--corpus", "Textbooks", "--db-dir", str(db))
    [warn] = lines(checks, "gpu")
    assert warn["status"] == "warn" and "hides every GPU" in warn["title"]


def test_unreachable_server_url_and_address_file_fail(tmp_path, capsys):
    url = f"http://127.0.0.1:{free_port()}"
    rc, checks = doctor(capsys, "--url", url)
    assert rc == 1
    [fail] = lines(checks, "server", "fail")
    assert url in fail["title"] and "does not answer /health" in fail["title"]
    assert [c["status"] for c in lines(checks, "search")] == ["warn"]
    addr = tmp_path / "addr.txt"
    addr.write_text(url.removeprefix("http://") + "\n")
    rc, checks = doctor(capsys, "--backend", "http", "--address-file", str(addr))
    assert rc == 1 and url in lines(checks, "server", "fail")[0]["title"]
    rc, checks = doctor(capsys, "--backend", "http", "--address-file", str(tmp_path / "missing.txt"))
    assert rc == 1 and "cannot be read" in lines(checks, "server", "fail")[0]["detail"]


def test_server_that_answers_health_is_ok(tmp_path):
    class H(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            body = b'{"status": "ok"}' if self.path == "/health" else b"{}"
            self.send_response(200 if self.path == "/health" else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        addr = tmp_path / "addr.json"
        addr.write_text(json.dumps({"host": "127.0.0.1", "port": srv.server_address[1]}))
        [c] = check_server(None, str(addr))
        assert c.status == "ok" and '"status": "ok"' in c.detail
    finally:
        srv.shutdown()
        srv.server_close()


def test_encoder_not_in_offline_cache_fails(db, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_hf_home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("MEDRET_MODELS_DIR", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rc, checks = doctor(capsys, "--corpus", "Textbooks", "--db-dir", str(db), "--retriever", "MedCPT",
                        "--device", "cpu")
    assert rc == 1
    [fail] = lines(checks, "encoder", "fail")
    assert "ncbi/MedCPT-Query-Encoder" in fail["title"] and "HF_HUB_OFFLINE" in fail["title"]
    assert "medret models download MedCPT --dir DIR" in fail["fix"] and "HF_HUB_OFFLINE=1" in fail["fix"]


def test_searchr1_checkout_not_patched_fails(tmp_path, capsys):
    checkout = shutil.copytree(SEARCHR1_FAKE, tmp_path / "Search-R1")
    rc, checks = doctor(capsys, "--searchr1", str(checkout), "--no-search")
    assert rc == 1
    [fail] = lines(checks, "searchr1", "fail")
    assert "not patched" in fail["title"] and fail["fix"] == f"medret searchr1 patch {checkout}"
    rc, checks = doctor(capsys, "--searchr1", str(tmp_path / "nowhere"), "--no-search")
    assert rc == 1 and lines(checks, "searchr1", "fail")


def write_job(path: Path, db: Path, drop_trap: bool = False) -> Path:
    import re

    from medret.launch.slurm import JobSpec, render_job

    data = path.parent / "data"  # the training data the job reads: `slurm check` looks for it
    data.mkdir(exist_ok=True)
    for name in ("train.parquet", "val.parquet"):
        (data / name).write_bytes(b"PAR1")
    text = render_job(JobSpec.from_mapping({"layout": "local", "gpus_per_node": 4, "corpus": "Textbooks",
                                            "db_dir": str(db), "data_dir": str(data)}))
    if drop_trap:
        text = re.sub(r"(?m)^\s*trap .*$", "", text)
    path.write_text(text)
    return path


def test_job_script_failing_slurm_checks(db, tmp_path, capsys):
    job = write_job(tmp_path / "bad.sbatch", db, drop_trap=True)
    rc, checks = doctor(capsys, "--sbatch", str(job), "--no-search")
    assert rc == 1
    [fail] = lines(checks, "slurm")
    assert fail["status"] == "fail" and "trap" in fail["title"] and "medret slurm render" in fail["fix"]
    rc, checks = doctor(capsys, "--sbatch", str(tmp_path / "missing.sbatch"), "--no-search")
    assert rc == 1 and "cannot be read" in lines(checks, "slurm", "fail")[0]["title"]
    job = write_job(tmp_path / "good.sbatch", db)
    rc, checks = doctor(capsys, "--sbatch", str(job), "--no-search")
    assert rc == 0 and "retriever_gpus [3]" in lines(checks, "slurm", "ok")[0]["detail"]


def test_config_file_and_invalid_config(db, tmp_path, capsys):
    build(db)
    cfg = tmp_path / "ppo.yaml"
    cfg.write_text(f"retriever:\n  corpus_name: Textbooks\n  retriever_name: BM25\n  db_dir: {db}\n  topk: 3\n")
    rc, checks = doctor(capsys, "--config", str(cfg))
    # BM25 returns only matches: the default test query (diabetes) matches none of these five snippets
    assert lines(checks, "store", "ok") and "matched no snippet" in lines(checks, "search", "warn")[0]["title"]
    rc, checks = doctor(capsys, "--config", str(cfg), "--query", "sepsis mortality")
    assert lines(checks, "store", "ok") and lines(checks, "search", "ok")
    bad = tmp_path / "bad.yaml"
    bad.write_text("retriever:\n  corpus_name: Textbooks\n  gpu_idd: 3\n")
    rc, checks = doctor(capsys, "--config", str(bad))
    assert rc == 1
    [fail] = lines(checks, "config", "fail")
    assert "gpu_idd" in fail["detail"]


def test_memory_against_free():
    gib = 1024**3
    needs = [_Need("MedCPT index pubmed", 30 * gib, "cuda:0"), _Need("document store pubmed", 20 * gib, "host")]
    [gpu, host] = check_memory(needs, gpu_free=lambda i: 10 * gib, host_free=lambda: 100 * gib)
    assert gpu.status == "fail" and "needs 30.0 GiB, 10.0 GiB free" in gpu.title and "ivfpq" in gpu.fix
    assert host.status == "ok"
    [gpu] = check_memory(needs[:1], gpu_free=lambda i: 35 * gib)
    assert gpu.status == "warn"  # fits, but with less than 20% to spare
    [gpu] = check_memory(needs[:1], gpu_free=lambda i: 80 * gib)
    assert gpu.status == "ok"
    [host] = check_memory(needs[1:], host_free=lambda: 5 * gib)
    assert host.status == "warn"


def test_text_output_shows_fix_only_for_problems():
    text = format_checks([Check("a", "ok", "fine", "d", "f"), Check("b", "fail", "broken", "why", "do this")])
    assert text.splitlines() == ["[  ok] fine", "[FAIL] broken", "       why", "       fix: do this",
                                 "1 ok, 0 warn, 1 fail"]


@pytest.mark.integration
def test_real_medret_serve_answers_health(tmp_path, capsys):
    import os
    import subprocess
    import sys
    import time

    addr = tmp_path / "serve.addr"
    proc = subprocess.Popen([sys.executable, "-m", "medret.cli", "serve", "--corpus", "sample", "--port", "0",
                             "--address-file", str(addr), "--log-level", "warning"],
                            env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 90
        while not addr.exists():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "medret serve did not write its address file"
            time.sleep(0.1)
        rc, checks = doctor(capsys, "--backend", "http", "--address-file", str(addr))
        assert rc == 0, checks
        [ok] = lines(checks, "server", "ok")
        assert addr.read_text().strip() in ok["title"]
        [search] = lines(checks, "search", "ok")  # the test query went through the server
        assert "3 results" in search["title"] and "backend http" in search["title"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    # the server is gone: the same check now fails
    addr.write_text(ok["title"].split()[1].removeprefix("http://"))
    rc, checks = doctor(capsys, "--backend", "http", "--address-file", str(addr), "--no-search")
    assert rc == 1 and lines(checks, "server", "fail")
