"""Every network step of every download command is bounded (issue 24 item 1, item 12's stalls): against a host that
accepts the connection and never answers, or one that stops in the middle of a body, the command ends within a
few seconds of ``--timeout`` with one line naming the host, the timeout and the fix. Before: ``corpus download
--list`` waited 600 s (``HfApi.list_repo_tree`` has no timeout), StatPearls, the embeddings and ``models download``
hung forever on a stalled body.

Each command runs as a child process (a hang fails the test instead of holding the suite)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fetch.helpers import run_medret, statpearls_archive
from tests.hubfake import FakeHub, SilentServer

TIMEOUT = "1"
QUERY_ID, DOC_ID = "ncbi/MedCPT-Query-Encoder", "ncbi/MedCPT-Article-Encoder"
CHUNKS = {f"chunk/{s}.jsonl": (json.dumps({"id": f"{s}_0", "title": s, "content": "text"}) + "\n").encode()
          for s in ("Anatomy_Gray", "Tiny_Notes")}


def env_for(endpoint: str, tmp_path: Path) -> dict[str, str]:
    return {"HF_ENDPOINT": endpoint, "HF_HOME": str(tmp_path / "hf_home"), "MEDRET_CACHE": str(tmp_path / "cache")}


def one_line(run) -> str:
    lines = run.stderr.strip().splitlines()
    assert run.rc == 1 and len(lines) == 1, run.stderr[-3000:]
    assert lines[0].startswith("medret: error: ")
    return lines[0]


@pytest.fixture
def silent():
    with SilentServer() as s:
        yield s


def test_corpus_list_against_a_hub_that_never_answers(silent, tmp_path):
    run = run_medret("corpus", "download", "Textbooks", "--db-dir", str(tmp_path / "db"), "--list", "--timeout",
                     TIMEOUT, env=env_for(silent.endpoint, tmp_path))
    msg = one_line(run)
    assert run.seconds < 20, run.seconds  # python start-up plus one 1 s deadline, not 600 s
    assert f"127.0.0.1:{silent.port} did not answer within 1 s" in msg and "MedRAG/textbooks" in msg
    assert "HF_ENDPOINT" in msg and "HF_HUB_OFFLINE=1" in msg and "raise --timeout" in msg
    # the download itself asks the same listing: same bound, same line
    run = run_medret("corpus", "download", "Textbooks", "--db-dir", str(tmp_path / "db"), "--timeout", TIMEOUT,
                     env=env_for(silent.endpoint, tmp_path))
    assert run.seconds < 20 and f"127.0.0.1:{silent.port} did not answer within 1 s" in one_line(run)
    assert not (tmp_path / "db" / "textbooks" / "chunk").exists()


def test_models_download_against_a_hub_that_never_answers(silent, tmp_path):
    run = run_medret("models", "download", "MedCPT", "--dir", str(tmp_path / "models"), "--timeout", TIMEOUT,
                     env=env_for(silent.endpoint, tmp_path))
    msg = one_line(run)
    assert run.seconds < 20, run.seconds
    assert f"127.0.0.1:{silent.port} did not answer within 1 s" in msg and QUERY_ID in msg
    assert "login node" in msg and "HF_ENDPOINT" in msg and "--models-dir" in msg
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").rglob("*.part"))


def test_statpearls_host_that_never_answers(silent, tmp_path):
    url = f"{silent.endpoint}/pub/statpearls_NBK430685.tar.gz"
    run = run_medret("corpus", "download", "StatPearls", "--db-dir", str(tmp_path / "db"), "--statpearls-url", url,
                     "--timeout", TIMEOUT, "--no-progress", env=env_for(silent.endpoint, tmp_path))
    msg = one_line(run)
    assert run.seconds < 20, run.seconds
    assert f"127.0.0.1:{silent.port} did not answer within 1 s" in msg and "--from FILE" in msg


def test_embeddings_host_that_never_answers(silent, tmp_path):
    with FakeHub({("dataset", "MedRAG/textbooks"): CHUNKS}) as hub:
        env = env_for(hub.endpoint, tmp_path)
        db = tmp_path / "db"
        run = run_medret("corpus", "download", "Textbooks", "--db-dir", str(db), "--embeddings", "MedCPT",
                         "--embeddings-mirror", silent.endpoint, "--timeout", TIMEOUT, "--no-progress", env=env)
        msg = one_line(run)
        assert run.seconds < 20, run.seconds
        assert f"127.0.0.1:{silent.port} did not answer within 1 s" in msg and "MEDRET_EMBEDDINGS_MIRROR" in msg
        assert sorted(p.name for p in (db / "textbooks" / "chunk").iterdir()) == ["Anatomy_Gray.jsonl",
                                                                                  "Tiny_Notes.jsonl"]
        assert not (db / "textbooks" / "index").exists() or not any((db / "textbooks" / "index").rglob("*.part"))
        # --list asks the host for the archive's size once, then estimates: bounded too, and not an error
        run = run_medret("corpus", "download", "Textbooks", "--db-dir", str(db), "--embeddings", "RRF-4",
                         "--embeddings-mirror", silent.endpoint, "--timeout", TIMEOUT, "--list", "--json", env=env)
        assert run.rc == 0 and run.seconds < 20, (run.seconds, run.stderr[-2000:])
        emb = json.loads(run.stdout)["embeddings"]
        assert len(emb) == 3 and {e["size_from"] for e in emb} == {"estimate"}


def test_statpearls_body_that_stalls_midway_fails_then_resumes(tmp_path):
    data = statpearls_archive(40)
    with FakeHub(static={"statpearls_NBK430685.tar.gz": data}) as hub:
        stop = 32768  # a multiple of 16 KiB: requests on urllib3 1.x reads the body in 16 KiB blocks
        assert len(data) > 2 * stop
        hub.stall["/blob/statpearls_NBK430685.tar.gz"] = stop
        db = tmp_path / "db"
        argv = ["corpus", "download", "StatPearls", "--db-dir", str(db), "--statpearls-url",
                f"{hub.endpoint}/mirror/statpearls_NBK430685.tar.gz", "--timeout", TIMEOUT, "--no-progress"]
        run = run_medret(*argv, env=env_for(hub.endpoint, tmp_path))
        msg = one_line(run)
        # the first GET stalls after half the body, the resumed one (Range) at once: two deadlines, then one line
        assert run.seconds < 25, run.seconds
        assert f"localhost:{hub.port} did not answer within 1 s" in msg and "to resume" in msg
        part = db / "statpearls" / ".statpearls_NBK430685.tar.gz.part"
        assert part.read_bytes() == data[:stop]
        assert [e["range"] for e in hub.gets("/blob/")] == [None, f"bytes={stop}-"]
        assert not (db / "statpearls" / "chunk").exists()
        hub.stall.clear()  # the host recovers: the next run resumes where the first stopped
        run = run_medret(*argv, env=env_for(hub.endpoint, tmp_path))
        assert run.rc == 0, run.stderr[-2000:]
        assert hub.gets("/blob/")[-1]["range"] == f"bytes={stop}-"
        assert len(list((db / "statpearls" / "chunk").glob("*.jsonl"))) == 40


def test_models_download_body_that_stalls_midway(tmp_path):
    weights = bytes(range(256)) * 256  # 64 KB: an LFS file, redirected to the storage host
    repos = {("model", m): {"config.json": b'{"hidden_size": 32}', "model.safetensors": weights}
             for m in (QUERY_ID, DOC_ID)}
    with FakeHub(repos) as hub:
        hub.stall[f"/lfs/model/{QUERY_ID}/model.safetensors"] = 32768
        run = run_medret("models", "download", "MedCPT", "--dir", str(tmp_path / "models"), "--timeout", TIMEOUT,
                         "--no-progress", env=env_for(hub.endpoint, tmp_path))
        msg = one_line(run)
        assert run.seconds < 25, run.seconds
        assert f"localhost:{hub.port} did not answer within 1 s" in msg and "model.safetensors" in msg
        record = json.loads((tmp_path / "models" / QUERY_ID / ".medret-download.json").read_text())
        assert record["complete"] is False  # never loaded half-downloaded
        assert (tmp_path / "models" / QUERY_ID / ".model.safetensors.part").read_bytes() == weights[:32768]
