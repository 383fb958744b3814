"""docs/walkthrough.md, step by step as a newcomer would follow it, in one folder: the login-node steps download from
local stand-ins for the Hugging Face hub (MedRAG's chunk files, the MedCPT encoders: tiny BERTs), NCBI (a StatPearls
archive) and MedRAG's archive host (MedCPT embeddings), over a small MedCorp made of the sample corpus's snippets;
the compute-node steps then run with the hub gone and ``HF_HUB_OFFLINE=1``. Blocks marked ``docs-test: check``
are checked as in test_docs_commands.py (parsed, ``bash -n``, their dry runs run)."""
from __future__ import annotations

import io
import json
import shutil
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests.corpus.test_statpearls import archive_members, build_archive
from tests.docs.blocks import medret_argvs, read_blocks
from tests.docs.test_docs_commands import REPO, bash, check_statically, docs_env, run_block
from tests.hubfake import FakeHub

DOC = Path("docs/walkthrough.md")
SAMPLE = REPO / "medret" / "data" / "sample" / "chunk"
# MedCorp's sources made of the sample's six chunk files, under names in each source's own style
SOURCES = {"pubmed": {"pubmed23n0001": "cardiology", "pubmed23n0002": "critical_care"},
           "textbooks": {"Harrison_Internal": "infectious_disease", "Katzung_Pharmacology": "pharmacology"},
           "wikipedia": {"wiki_renal": "nephrology_endocrine", "wiki_lung": "pulmonology"}}
ARTICLE = "ncbi/MedCPT-Article-Encoder"
DIM = 32  # the tiny BERT's width


def chunk_file(stem: str, sample: str) -> bytes:
    rows = [json.loads(line) for line in (SAMPLE / f"{sample}.jsonl").read_text(encoding="utf-8").splitlines()]
    for i, row in enumerate(rows):
        row["id"] = f"{stem}_{i}"
    return "\n".join(json.dumps(r) for r in rows).encode() + b"\n"


def embeddings_zip(files: dict[str, bytes], seed: int, vectors: dict[str, np.ndarray]) -> bytes:
    """MedRAG's archive layout: ``embedding/<chunk file stem>.npy``, one row per snippet (also put in ``vectors``)."""
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in sorted(files.items()):
            arr = rng.standard_normal((data.count(b"\n"), DIM)).astype(np.float32)
            vectors[Path(name).stem] = arr
            npy = io.BytesIO()
            np.save(npy, arr)
            z.writestr(f"embedding/{Path(name).stem}.npy", npy.getvalue())
    return buf.getvalue()


def cls(folder: Path, *texts: str, max_length: int) -> np.ndarray:
    """MedCPT's recipe by hand: the CLS vector of ``texts`` (a query, or a (title, content) pair)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()
    enc = tok(*texts, return_tensors="pt", truncation=True, max_length=max_length, return_token_type_ids=True)
    with torch.no_grad():
        return model(**enc).last_hidden_state[0, 0].numpy().astype(np.float64)


@pytest.fixture(scope="module")
def hosts(tiny_bert_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("walkthrough-hosts")
    repos: dict[tuple[str, str], dict[str, bytes]] = {}
    static: dict[str, bytes] = {}
    vectors: dict[str, np.ndarray] = {}  # chunk file stem -> MedRAG's embeddings of its rows
    for i, (source, files) in enumerate(SOURCES.items()):
        chunks = {f"chunk/{stem}.jsonl": chunk_file(stem, sample) for stem, sample in files.items()}
        repos[("dataset", f"MedRAG/{source}")] = chunks
        static[f"{source}/{ARTICLE}/embedding.zip"] = embeddings_zip(chunks, seed=i, vectors=vectors)
    model = {p.name: p.read_bytes() for p in Path(tiny_bert_dir).iterdir() if p.is_file()}
    repos[("model", "ncbi/MedCPT-Query-Encoder")] = model
    repos[("model", ARTICLE)] = model
    static["statpearls_NBK430685.tar.gz"] = build_archive(tmp / "sp.tar.gz", archive_members()).read_bytes()
    hub = FakeHub(repos, static=static)
    hub.vectors = vectors
    hub.model = Path(tiny_bert_dir)
    yield hub
    hub.close()


def test_walkthrough_step_by_step(hosts, tmp_path):
    blocks = read_blocks(REPO / DOC)
    for b in blocks:
        b.path = DOC
    ws = tmp_path / "ws"
    ws.mkdir()
    db, data, kare, searchr1 = ws / "medrag", ws / "data" / "kare", ws / "kare-raw", ws / "Search-R1"
    shutil.copytree(REPO / "tests" / "integrations" / "fixtures" / "searchr1_fake", searchr1)
    # step 8 resumes from the actor checkpoint a training run saved (slurm check refuses a model folder that is not
    # there): the stand-in for the folder step 7's job would have left
    (ws / "verl_checkpoints" / "nq-search-r1-ppo-llama3.2-3b-em" / "actor" / "global_step_300").mkdir(parents=True)
    env = docs_env(tmp_path, tmp_path / "medret-cache", data, db, MEDRET_MODELS_DIR=str(ws / "models"),
                   KARE=str(kare), SEARCHR1=str(searchr1), HF_ENDPOINT=hosts.endpoint,
                   MEDRET_STATPEARLS_URL=f"{hosts.endpoint}/mirror/statpearls_NBK430685.tar.gz",
                   MEDRET_EMBEDDINGS_MIRROR=f"{hosts.endpoint}/mirror")
    env.pop("HF_HUB_OFFLINE")
    env.pop("TRANSFORMERS_OFFLINE")
    # KARE's own files stand in for step 3's inputs (docs/kare.md makes them the same way)
    rc, out = bash(f"medret kare synth --n 400 --seed 0 --out {kare}", ws, env)
    assert rc == 0, out
    last_download = max(i for i, b in enumerate(blocks)
                        if b.mode == "run" and any(a[1:2] == ["download"] for _, a in medret_argvs(b.text)))
    ran: list[str] = []
    for i, block in enumerate(blocks):
        problems = check_statically(block) or run_block(block, ws, env, timeout=300)
        assert not problems, f"{block.where} ({block.mode}):\n" + "\n".join(problems)
        ran.append(f"{block.where} {block.mode}")
        with open(tmp_path / "transcript.txt", "a", encoding="utf-8") as f:  # for a reader of a failed run
            f.write(f"==== {block.where} ({block.mode})\n{block.output}\n")
        if i == last_download:  # the rest is what a compute node does: no internet
            served = len(hosts.log)
            hosts.close()
            env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    assert any(line.endswith("check") for line in ran) and any(line.endswith("run") for line in ran), ran

    # what the steps left behind, against what the stand-ins served
    for source, files in SOURCES.items():
        assert sorted(p.stem for p in (db / source / "chunk").glob("*.jsonl")) == sorted(files)
        emb = db / source / "index" / ARTICLE / "embedding"
        assert sorted(p.stem for p in emb.glob("*.npy")) == sorted(files)
    assert any((db / "statpearls" / "chunk").glob("*.jsonl"))
    assert (data / "train.parquet").is_file() and (data / "val.parquet").is_file()
    assert (ws / "job.sbatch").is_file() and (ws / "smoke.sbatch").is_file() and (ws / "resume.sbatch").is_file()
    assert served > 0 and any("MedCPT-Query-Encoder" in e["path"] for e in hosts.log)
    # step 5 embedded StatPearls only: the other sources are served by MedRAG's embeddings as downloaded
    assert [s for s in ("pubmed", "textbooks", "wikipedia", "statpearls") if (db / s / "medret" / "index").exists()] \
        == ["statpearls"]
    # the compute-node steps found everything offline: a MedCPT search over the whole corpus gives what brute force
    # gives over MedRAG's vectors and StatPearls' snippets encoded by hand with MedCPT's recipe
    query = "acute kidney injury in the elderly"
    r = subprocess.run(["medret", "search", query, "--corpus", "MedCorp", "--retriever", "MedCPT", "--db-dir", str(db),
                        "--topk", "5", "--json"], cwd=ws, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    hits = json.loads(r.stdout)["result"][0]
    rows: list[tuple[str, np.ndarray]] = []
    for stem, arr in hosts.vectors.items():
        rows += [(f"{stem}_{i}", v.astype(np.float64)) for i, v in enumerate(arr)]
    for f in sorted((db / "statpearls" / "chunk").glob("*.jsonl")):
        for line in f.read_text(encoding="utf-8").splitlines():
            doc = json.loads(line)
            rows.append((doc["id"], cls(hosts.model, doc["title"], doc["content"], max_length=512)))
    q = cls(hosts.model, query, max_length=64)
    scores = np.array([v @ q for _, v in rows])
    order = np.argsort(-scores, kind="stable")[:5]
    assert [h["document"]["id"] for h in hits] == [rows[i][0] for i in order]
    np.testing.assert_allclose([h["score"] for h in hits], scores[order], rtol=1e-4, atol=1e-3)
