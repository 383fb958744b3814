"""An index belongs to its encoder (issue 17, issue 13 item 2): indexes keyed by the encoder identity, local model
folders configured like Search-R1's e5, models changed in place refused, hub revisions recorded.

Every expectation is a brute-force reference written here: each text encoded alone with ``transformers`` (no
padding, no batching), pooled and scored with numpy, ranked by score then row."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medret import clear_cache, get_retriever
from medret.cli import main
from medret.errors import ConfigError, IndexBuildError

LONG = " ".join(["sepsis in elderly icu patients carries a high mortality risk and needs early treatment"] * 30)
DOCS = [
    ("Sepsis", "Sepsis in elderly ICU patients carries a high mortality risk."),
    ("Septic shock?", "Septic shock needs vasopressors when fluids fail to restore blood pressure."),
    ("Heart failure", "Heart failure reduces cardiac output and causes congestion."),
    ("Pneumonia.", "Pneumonia is an infection of the lung that often leads to sepsis."),
    ("Acute kidney injury", "Acute kidney injury raises serum creatinine and lowers urine output."),
    ("Atrial fibrillation", "Atrial fibrillation raises stroke risk; anticoagulation lowers it."),
    ("Delirium", "Delirium in the ICU is common in elderly patients and predicts mortality."),
    ("Diabetic ketoacidosis", "Diabetic ketoacidosis is treated with insulin, fluids and potassium."),
    ("Long sepsis review", LONG + " Vasopressors come last."),
    ("Long kidney review", "Kidney injury in the ICU. " + LONG),
]
QUERIES = ["sepsis mortality in elderly patients", "what is the treatment of ketoacidosis",
           "kidney injury creatinine", "how does heart failure reduce output"]
K = 5


def write_corpus(folder: Path, docs=DOCS) -> Path:
    (folder / "chunk").mkdir(parents=True)
    half = len(docs) // 2
    for stem, part in (("part_a", docs[:half]), ("part_b", docs[half:])):
        with open(folder / "chunk" / f"{stem}.jsonl", "w") as f:
            for i, (t, c) in enumerate(part):
                f.write(json.dumps({"id": f"{stem}_{i}", "title": t, "content": c}) + "\n")
    return folder


def corpus_rows(folder: Path) -> list[dict]:
    """The corpus as its files hold it, in row order (chunk files sorted by name)."""
    rows = []
    for p in sorted((folder / "chunk").glob("*.jsonl")):
        rows += [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
    return rows


# ----------------------------------------------------------------------------------------------- the reference


def encode(model_dir, texts, max_len: int, pooling: str, normalize: bool) -> np.ndarray:
    """Each text (a string, or a (first, second) pair) encoded alone: no padding can leak into it."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModel.from_pretrained(str(model_dir)).eval()
    out = []
    with torch.no_grad():
        for t in texts:
            args = t if isinstance(t, tuple) else (t,)
            # segment ids of a pair ([title, content], as MedCPT's BERT tokenizer returns them)
            enc = tok(*args, truncation=True, max_length=max_len, return_tensors="pt", return_token_type_ids=True)
            h = model(**enc).last_hidden_state[0].double()
            v = h.mean(0) if pooling == "mean" else h[0]
            if normalize:
                v = v / v.norm()
            out.append(v.numpy())
    return np.stack(out)


def medrag_concat(title: str, content: str) -> str:
    """MedRAG's default join of title and content (a sentence end needs no extra period)."""
    t, c = title.strip(), content.strip()
    return f"{t} {c}" if t.endswith((".", "?", "!")) else f"{t}. {c}"


def ranking(q: np.ndarray, d: np.ndarray, ids: list[str], k: int) -> list[tuple[list[str], np.ndarray]]:
    scores = q @ d.T
    out = []
    for row in scores:
        order = np.lexsort((np.arange(len(row)), -row))[:k]
        out.append(([ids[j] for j in order], row[order], row))
    return out


def assert_same_ranking(hits, ref, tol=1e-4) -> None:
    """Same ids in the same order (ties of equal score in any order) and the same scores."""
    ref_ids, ref_scores, all_scores = ref
    assert len(hits) == len(ref_ids)
    np.testing.assert_allclose([h.score for h in hits], ref_scores, rtol=tol, atol=tol)
    for i, h in enumerate(hits):
        tied = {ref_ids[j] for j in range(len(ref_ids)) if abs(ref_scores[j] - ref_scores[i]) <= 1e-9}
        assert h.id == ref_ids[i] or h.id in tied, (i, [x.id for x in hits], ref_ids)


def plain_reference(model_dir, corpus: Path, queries=QUERIES, k=K):
    """A local folder with --pooling mean and nothing else: no prefixes, no normalisation, 512 tokens, MedRAG's
    concat text, inner product."""
    rows = corpus_rows(corpus)
    d = encode(model_dir, [medrag_concat(r["title"], r["content"]) for r in rows], 512, "mean", False)
    q = encode(model_dir, queries, 512, "mean", False)
    return ranking(q, d, [r["id"] for r in rows], k)


def searchr1_e5_reference(model_dir, corpus: Path, queries=QUERIES, k=K, max_len=256):
    """Search-R1's e5 rules (retrieval_server.py, index_builder.py): a document is its corpus `contents`, the quoted
    title, a newline and the text, after 'passage: '; a query follows 'query: '; at most 256 tokens; mean pooling
    over the attention mask; L2-normalised; inner product."""
    rows = corpus_rows(corpus)
    contents = ['"' + r["title"] + '"\n' + r["content"] for r in rows]
    d = encode(model_dir, ["passage: " + c for c in contents], max_len, "mean", True)
    q = encode(model_dir, ["query: " + x for x in queries], max_len, "mean", True)
    return ranking(q, d, [r["id"] for r in rows], k)


def index_folders(corpus: Path) -> list[str]:
    root = corpus / "medret" / "index"
    return sorted(p.name for p in root.iterdir() if (p / "manifest.json").is_file())


def manifest_of(corpus: Path, name: str) -> dict:
    return json.loads((corpus / "medret" / "index" / name / "manifest.json").read_text())


# ----------------------------------------------------------------------------------------------- two encoders


def test_two_local_models_with_one_folder_name_keep_their_own_indexes(tmp_path, make_tiny_bert):
    """Three models on one corpus, two with the same folder name and dimension (the silent-mix case), one with
    another dimension: each query is answered from that model's own index, also after the others were built."""
    corpus = write_corpus(tmp_path / "corpus")
    models = [make_tiny_bert(tmp_path / "run1" / "checkpoint", seed=1),
              make_tiny_bert(tmp_path / "run2" / "checkpoint", seed=2),
              make_tiny_bert(tmp_path / "run3" / "checkpoint", seed=3, hidden=48)]
    refs = [plain_reference(m, corpus) for m in models]
    for m, ref in zip(models, refs):
        hits = get_retriever(str(corpus), str(m), pooling="mean", device="cpu").search(QUERIES, K)
        for h, r in zip(hits, ref):
            assert_same_ranking(h, r)
    assert len(index_folders(corpus)) == 3
    assert {manifest_of(corpus, n)["encoder"]["doc_model"]["location"] for n in index_folders(corpus)} == \
        {str(m.resolve()) for m in models}
    clear_cache()
    for m, ref in zip(models, refs):  # each still finds its own index (nothing was overwritten or rebuilt)
        hits = get_retriever(str(corpus), str(m), pooling="mean", device="cpu", auto_build=False).search(QUERIES, K)
        for h, r in zip(hits, ref):
            assert_same_ranking(h, r)


def test_named_retriever_with_local_weights_is_keyed_by_the_weights(tmp_path, make_tiny_bert):
    """`--retriever e5 --query-model A --doc-model A` then B (issue 17's report): two indexes, each right."""
    corpus = write_corpus(tmp_path / "corpus")
    a = make_tiny_bert(tmp_path / "a" / "e5", seed=4)
    b = make_tiny_bert(tmp_path / "b" / "e5", seed=5)
    for m in (a, b):
        hits = get_retriever(str(corpus), "e5", query_model=str(m), doc_model=str(m), device="cpu").search(QUERIES, K)
        for h, r in zip(hits, searchr1_e5_reference(m, corpus)):
            assert_same_ranking(h, r)
    assert len(index_folders(corpus)) == 2


# ----------------------------------------------------------------------------------------------- Search-R1's e5


def test_local_folder_like_e5_reproduces_searchr1(tmp_path, make_tiny_bert, capsys):
    """A local folder configured like Search-R1's e5 (--like e5, or the same recipe flag by flag) gives the top-k
    (ids, order and scores) of a brute-force reference that follows Search-R1's rules."""
    corpus = write_corpus(tmp_path / "corpus")
    model = make_tiny_bert(tmp_path / "models" / "e5-local", seed=6)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model))
    assert len(tok('passage: "Long sepsis review"\n' + DOCS[8][1])["input_ids"]) > 512  # truncation matters
    ref = searchr1_e5_reference(model, corpus)
    assert not np.allclose(ref[0][2], searchr1_e5_reference(model, corpus, max_len=512)[0][2])

    hits = get_retriever(str(corpus), str(model), like="e5", device="cpu").search(QUERIES, K)
    for h, r in zip(hits, ref):
        assert_same_ranking(h, r)

    explicit = ["--corpus", str(corpus), "--retriever", str(model), "--pooling", "mean", "--query-prefix", "query: ",
                "--doc-prefix", "passage: ", "--normalize", "--max-length", "256", "--doc-format", "searchr1",
                "--device", "cpu", "--topk", str(K), "--json"]
    like = ["--corpus", str(corpus), "--retriever", str(model), "--like", "e5", "--device", "cpu", "--topk", str(K),
            "--json"]
    answers = []
    for argv in (explicit, like):
        clear_cache()
        assert main(["search", *argv, *QUERIES]) == 0
        answers.append(json.loads(capsys.readouterr().out))
    assert answers[0] == answers[1]
    for items, r in zip(answers[0]["result"], ref):
        assert [i["document"]["id"] for i in items] == r[0]
    assert len(index_folders(corpus)) == 1  # one encoder, one index, whichever way it was configured


def test_without_the_recipe_a_local_folder_does_not_match_searchr1(tmp_path, make_tiny_bert):
    """The documented trap of issue 17: --pooling mean alone is not e5 (no prefixes, no normalisation, 512 tokens,
    MedRAG's text): its scores differ from Search-R1's."""
    corpus = write_corpus(tmp_path / "corpus")
    model = make_tiny_bert(tmp_path / "m" / "model", seed=6)
    hits = get_retriever(str(corpus), str(model), pooling="mean", device="cpu").search(QUERIES[:1], K)[0]
    ref_ids, ref_scores, _ = searchr1_e5_reference(model, corpus)[0]
    assert not np.allclose([h.score for h in hits], ref_scores, atol=1e-3)


def test_like_and_lengths_in_every_configuration_surface(tmp_path):
    from medret.config import RetrieverConfig
    from medret.encoders.specs import spec_for

    cfg = RetrieverConfig.from_mapping({"corpus": "sample", "retriever": str(tmp_path), "like": "E5",
                                        "query_max_length": "32", "normalize": "false", "topk": 3})
    spec = spec_for(str(tmp_path), cfg)
    assert (spec.pooling, spec.query_prefix, spec.doc_prefix, spec.normalize, spec.query_max_len, spec.doc_max_len,
            spec.doc_format, spec.metric) == ("mean", "query: ", "passage: ", False, 32, 256, "searchr1", "ip")
    assert (spec.query_model, spec.doc_model) == (str(tmp_path), str(tmp_path))
    med = spec_for(str(tmp_path), RetrieverConfig(like="medcpt", max_length=128))
    assert (med.pooling, med.doc_format, med.query_max_len, med.doc_max_len) == ("cls", "pair", 128, 128)
    with pytest.raises(ConfigError, match="like='bm25' is invalid"):
        RetrieverConfig(like="bm25")
    with pytest.raises(ConfigError, match="like='e5' is invalid with retriever='MedCPT'"):
        spec_for("MedCPT", RetrieverConfig(like="e5"))
    with pytest.raises(ConfigError, match="max_length=1 is invalid"):
        RetrieverConfig(max_length=1)
    with pytest.raises(ConfigError, match="doc_format='title' is invalid"):
        RetrieverConfig(doc_format="title")


def test_verl_tool_and_searchr1_block_take_the_recipe(tmp_path, make_tiny_bert):
    import asyncio

    from medret.integrations import searchr1_runtime as rt
    from medret.integrations.verl_tool import MedretSearchTool

    corpus = write_corpus(tmp_path / "corpus")
    model = make_tiny_bert(tmp_path / "m" / "model", seed=7)
    block = {"backend": "local", "corpus_name": str(corpus), "retriever_name": str(model), "like": "e5",
             "device": "cpu"}
    got = rt.batch_search({**block, "topk": K}, QUERIES)["result"]
    ref = searchr1_e5_reference(model, corpus)
    assert [[i["document"]["id"] for i in row] for row in got] == [r[0] for r in ref]
    tool = MedretSearchTool({"type": "native", "topk": K, **block})

    async def go():
        iid, _ = await tool.create()
        resp, _, metrics = await tool.execute(iid, {"query_list": QUERIES[:1]})
        await tool.release(iid)
        return resp, metrics

    resp, metrics = asyncio.run(go())
    assert metrics["status"] == "success"
    text = json.loads(resp.text)["result"]
    titles = {r["id"]: r["title"] for r in corpus_rows(corpus)}
    assert [line.split("(Title: ")[1].split(")")[0] for line in text.split("\n") if line.startswith("Doc ")] == \
        [f'"{titles[i]}"' for i in ref[0][0]]


# ----------------------------------------------------------------------------------------------- changed models


def test_model_resaved_in_place_is_refused_with_rebuild_hint_and_doctor_fails(tmp_path, make_tiny_bert, capsys):
    from medret.encoders.fingerprint import model_identity

    corpus = write_corpus(tmp_path / "corpus")
    model = make_tiny_bert(tmp_path / "m" / "model", seed=8)
    get_retriever(str(corpus), str(model), pooling="mean", device="cpu").search(QUERIES, K)
    [name] = index_folders(corpus)
    old_fp = manifest_of(corpus, name)["encoder"]["doc_model"]["fingerprint"]
    clear_cache()

    make_tiny_bert(model, seed=9)  # different weights, same folder, same size
    new_fp = model_identity(str(model), str(model)).fingerprint
    assert new_fp != old_fp
    with pytest.raises(IndexBuildError) as err:
        get_retriever(str(corpus), str(model), pooling="mean", device="cpu")
    msg = str(err.value)
    assert "model changed" in msg and "model.safetensors" in msg and "--rebuild" in msg
    assert old_fp[:12] in msg and new_fp[:12] in msg

    flags = ["--corpus", str(corpus), "--retriever", str(model), "--pooling", "mean", "--device", "cpu"]
    rc = main(["doctor", "--json", *flags])
    checks = json.loads(capsys.readouterr().out)["checks"]
    assert rc == 1
    [fail] = [c for c in checks if c["key"] == "index" and c["status"] == "fail"]
    assert "model changed" in fail["detail"] and "--rebuild" in fail["fix"] and "--pooling=mean" in fail["fix"]

    assert main(["index", "build", *flags, "--rebuild"]) == 0
    capsys.readouterr()
    clear_cache()
    hits = get_retriever(str(corpus), str(model), pooling="mean", device="cpu", auto_build=False).search(QUERIES, K)
    for h, r in zip(hits, plain_reference(model, corpus)):
        assert_same_ranking(h, r)
    assert index_folders(corpus) == [name]


def test_a_config_change_is_a_changed_model(tmp_path, make_tiny_bert):
    corpus = write_corpus(tmp_path / "corpus")
    model = make_tiny_bert(tmp_path / "m" / "model", seed=10)
    get_retriever(str(corpus), str(model), pooling="mean", device="cpu").search(QUERIES[:1], K)
    clear_cache()
    cfg = json.loads((model / "config.json").read_text())
    cfg["layer_norm_eps"] = 1e-3
    (model / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(IndexBuildError, match=r"model changed since it was built \(config.json differ"):
        get_retriever(str(corpus), str(model), pooling="mean", device="cpu")


def test_a_copy_of_the_model_at_another_path_uses_the_same_index(tmp_path, make_tiny_bert):
    """A model staged to another path (node-local disk) finds the index built from the same files."""
    corpus = write_corpus(tmp_path / "corpus")
    model = make_tiny_bert(tmp_path / "shared" / "model", seed=11)
    first = get_retriever(str(corpus), str(model), pooling="mean", device="cpu").search(QUERIES, K)
    staged = shutil.copytree(model, tmp_path / "scratch" / "job1" / "model")
    clear_cache()
    again = get_retriever(str(corpus), str(staged), pooling="mean", device="cpu", auto_build=False).search(QUERIES, K)
    assert [[(h.id, h.score) for h in row] for row in again] == [[(h.id, h.score) for h in row] for row in first]
    assert len(index_folders(corpus)) == 1


# ----------------------------------------------------------------------------------------------- fingerprint cost


def test_file_digest_is_cached_by_stat_and_any_rewrite_is_read_again(tmp_path, monkeypatch):
    from medret.encoders import fingerprint as fpm

    f = tmp_path / "model.safetensors"
    f.write_bytes(b"a" * 4096)
    assert fpm.file_digest(f) == hashlib.sha256(b"a" * 4096).hexdigest()
    # unchanged files are not read again: the cached digest is what comes back (here deliberately wrong)
    entry = fpm._cache_file(f.resolve())
    cached = json.loads(entry.read_text())
    entry.write_text(json.dumps(dict(cached, sha256="0" * 64)))
    assert fpm.file_digest(f) == "0" * 64
    # a rewrite of the same size with its mtime put back is still seen (ctime moved)
    st = os.stat(f)
    with open(f, "r+b") as h:
        h.write(b"b")
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(f).st_size == st.st_size and os.stat(f).st_mtime_ns == st.st_mtime_ns
    assert fpm.file_digest(f) == hashlib.sha256(b"b" + b"a" * 4095).hexdigest()


def test_only_files_that_shape_vectors_are_fingerprinted(tmp_path, make_tiny_bert):
    from medret.encoders.fingerprint import model_identity

    model = make_tiny_bert(tmp_path / "model", seed=12)
    ident = model_identity("m", str(model))
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= set(ident.files)
    (model / "README.md").write_text("notes")
    assert model_identity("m", str(model)).fingerprint == ident.fingerprint
    (model / "vocab.txt").write_text("extra\n")
    assert model_identity("m", str(model)).fingerprint != ident.fingerprint


# ----------------------------------------------------------------------------------------------- hub revisions


def hub_snapshot(cache: Path, repo_id: str, model_dir: Path, commit: str) -> Path:
    """Lay ``model_dir``'s files out as huggingface_hub's cache does: blobs named by content hash (sha256 for
    large files, a 40-hex git id for small ones), snapshot symlinks, refs/main naming the commit."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    for f in sorted(model_dir.iterdir()):
        data = f.read_bytes()
        name = hashlib.sha256(data).hexdigest() if f.suffix == ".safetensors" else hashlib.sha1(data).hexdigest()
        (repo / "blobs" / name).write_bytes(data)
        (snap / f.name).symlink_to(Path("..") / ".." / "blobs" / name)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snap


def test_hub_model_records_its_revision_and_a_new_revision_is_refused(tmp_path, make_tiny_bert):
    """`--retriever e5` resolved offline through a Hugging Face cache laid out as the hub writes it."""
    cache = tmp_path / "hf" / "hub"
    corpus = write_corpus(tmp_path / "corpus")
    v1, v2 = "1" * 40, "2" * 40
    w1 = make_tiny_bert(tmp_path / "w1", seed=13)
    hub_snapshot(cache, "intfloat/e5-base-v2", w1, v1)
    env = dict(os.environ, HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               MEDRET_CACHE=str(tmp_path / "medret-cache"), PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    env.pop("MEDRET_MODELS_DIR", None)
    argv = [sys.executable, "-m", "medret.cli", "search", "--corpus", str(corpus), "--retriever", "e5",
            "--device", "cpu", "--topk", str(K), "--json", *QUERIES]
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout)["result"]
    assert [[i["document"]["id"] for i in row] for row in got] == [r[0] for r in searchr1_e5_reference(w1, corpus)]
    [name] = index_folders(corpus)
    assert name.startswith("intfloat--e5-base-v2-")
    doc = manifest_of(corpus, name)["encoder"]["doc_model"]
    assert (doc["source"], doc["location"], doc["revision"]) == ("hub", "intfloat/e5-base-v2", v1)
    assert doc["files"]["model.safetensors"]["sha256"] == \
        hashlib.sha256((w1 / "model.safetensors").read_bytes()).hexdigest()

    w2 = make_tiny_bert(tmp_path / "w2", seed=14)  # the cache moves to a new revision with other weights
    hub_snapshot(cache, "intfloat/e5-base-v2", w2, v2)
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert "model changed" in out.stderr and "revision 111111111111" in out.stderr \
        and "revision 222222222222" in out.stderr and "--rebuild" in out.stderr


# ----------------------------------------------------------------------------------------------- older layout


def _to_first_layout(corpus: Path, name: str, legacy: str) -> Path:
    """Make the index look as medret's first layout left it: named after the retriever, no encoder record."""
    root = corpus / "medret" / "index"
    os.replace(root / name, root / legacy)
    m = json.loads((root / legacy / "manifest.json").read_text())
    del m["encoder"]
    (root / legacy / "manifest.json").write_text(json.dumps(m))
    return root / legacy


def _first_layout_index(tmp_path: Path, make_tiny_bert, seed: int) -> tuple[Path, Path, str, Path]:
    """(corpus, model, the index folder's name now, the index in the first layout) for a tiny mean-pooled model."""
    corpus = write_corpus(tmp_path / "corpus")
    model = make_tiny_bert(tmp_path / "m" / "model", seed=seed)
    get_retriever(str(corpus), str(model), pooling="mean", device="cpu").search(QUERIES[:1], K)
    [name] = index_folders(corpus)
    clear_cache()
    return corpus, model, name, _to_first_layout(corpus, name, "model")


def test_first_layout_index_gets_a_migration_message_and_can_be_adopted(tmp_path, make_tiny_bert, capsys):
    corpus, model, name, legacy = _first_layout_index(tmp_path, make_tiny_bert, seed=15)
    emb_inode = (legacy / "emb_000000.npy").stat().st_ino
    with pytest.raises(IndexBuildError) as err:
        get_retriever(str(corpus), str(model), pooling="mean", device="cpu", auto_build=False)
    msg = str(err.value)
    assert "first layout" in msg and "--adopt-legacy" in msg and "--rebuild" in msg and "\n" not in msg
    flags = ["--corpus", str(corpus), "--retriever", str(model), "--pooling", "mean", "--device", "cpu"]
    assert main(["index", "build", *flags, "--adopt-legacy"]) == 0
    assert "adopted" in capsys.readouterr().out
    assert index_folders(corpus) == [name] and not legacy.exists()
    assert (corpus / "medret" / "index" / name / "emb_000000.npy").stat().st_ino == emb_inode  # not re-encoded
    assert manifest_of(corpus, name)["encoder"]["adopted_from"] == str(legacy)
    hits = get_retriever(str(corpus), str(model), pooling="mean", device="cpu", auto_build=False).search(QUERIES, K)
    for h, r in zip(hits, plain_reference(model, corpus)):
        assert_same_ranking(h, r)


def test_first_layout_index_is_not_adopted_for_another_recipe_or_other_chunk_files(tmp_path, make_tiny_bert,
                                                                                   capsys):
    corpus, model, name, legacy = _first_layout_index(tmp_path, make_tiny_bert, seed=17)
    before = {p.name: p.read_bytes() for p in legacy.iterdir()}
    flags = ["--corpus", str(corpus), "--retriever", str(model), "--device", "cpu", "--adopt-legacy"]
    capsys.readouterr()
    # the index was built with mean pooling; the configured recipe takes the [CLS] vector
    assert main(["index", "build", *flags, "--pooling", "cls"]) != 0
    err = capsys.readouterr().err
    assert f"the index at {legacy} was built with another recipe (mean pooling, " in err
    assert "than the configured one (cls pooling, " in err and "build a new one" in err
    assert index_folders(corpus) == ["model"] and {p.name: p.read_bytes() for p in legacy.iterdir()} == before
    # the chunk files changed since it was built (one more snippet): its rows would point at other snippets
    with open(corpus / "chunk" / "part_b.jsonl", "a") as f:
        f.write(json.dumps({"id": "part_b_new", "title": "Added", "content": "a snippet added later"}) + "\n")
    assert main(["index", "build", "--corpus", str(corpus), "--retriever", "BM25", "--rebuild"]) == 0  # new store
    capsys.readouterr()
    assert main(["index", "build", *flags, "--pooling", "mean"]) != 0
    err = capsys.readouterr().err
    assert f"the index at {legacy} was built from other chunk files than the corpus now holds" in err
    assert "build a new one (without --adopt-legacy)" in err
    assert index_folders(corpus) == ["model"] and {p.name: p.read_bytes() for p in legacy.iterdir()} == before


@pytest.mark.parametrize("damage, message", [
    ("{not json", "manifest.json cannot be read"),
    ({"complete": "no"}, "is not complete (complete='no' in its manifest.json)"),
    ({"count": "abc"}, "its manifest.json is damaged (count='abc'; expected the number of vectors"),
    ({"dim": None}, "its manifest.json is damaged (dim=None; expected the vectors' width"),
    ({"spec": "MedCPT"}, "its manifest.json is damaged (spec='MedCPT'; expected the encoder recipe"),
    ({"spec": {"pooling": 3}}, "its manifest.json is damaged (spec={'pooling': 3}; expected an encoder recipe"),
    ({"store_checksum": ["x"]}, "its manifest.json is damaged (store_checksum=['x']; expected the corpus identity"),
], ids=["not-json", "complete-no", "count", "dim", "spec-string", "spec-fields", "checksum"])
def test_first_layout_index_with_a_damaged_manifest_is_refused_with_one_line(tmp_path, make_tiny_bert, capsys,
                                                                             damage, message):
    """Issue 24 item 18: raw errors (or, for complete: "no", an adoption) before; one line naming the field now."""
    corpus, model, name, legacy = _first_layout_index(tmp_path, make_tiny_bert, seed=19)
    m = legacy / "manifest.json"
    m.write_text(damage if isinstance(damage, str) else json.dumps({**json.loads(m.read_text()), **damage}))
    before = {p.name: p.read_bytes() for p in legacy.iterdir()}
    capsys.readouterr()
    flags = ["--corpus", str(corpus), "--retriever", str(model), "--pooling", "mean", "--device", "cpu"]
    assert main(["index", "build", *flags, "--adopt-legacy"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("medret: error:") and f"the index at {legacy}" in err and message in err, err
    assert "Traceback" not in err and "without --adopt-legacy" in err
    assert index_folders(corpus) == ["model"] and {p.name: p.read_bytes() for p in legacy.iterdir()} == before


def test_first_layout_index_of_another_width_is_refused_at_adoption(tmp_path, make_tiny_bert, capsys):
    """Adopted, every search failed later on the width; now the configured model's width is checked first."""
    corpus, model, name, legacy = _first_layout_index(tmp_path, make_tiny_bert, seed=20)  # 32-d vectors
    make_tiny_bert(model, seed=21, hidden=16)  # the folder now holds a 16-d model
    before = {p.name: p.read_bytes() for p in legacy.iterdir()}
    capsys.readouterr()
    flags = ["--corpus", str(corpus), "--retriever", str(model), "--pooling", "mean", "--device", "cpu"]
    assert main(["index", "build", *flags, "--adopt-legacy"]) == 1
    err = capsys.readouterr().err
    assert f"the index at {legacy} holds 32-dimensional vectors but the configured model" in err
    assert "makes 16-dimensional ones" in err and "without --adopt-legacy" in err
    assert index_folders(corpus) == ["model"] and {p.name: p.read_bytes() for p in legacy.iterdir()} == before


def test_first_layout_index_of_a_small_corpus_is_left_aside_and_rebuilt(tmp_path, make_tiny_bert, caplog):
    corpus, model, name, legacy = _first_layout_index(tmp_path, make_tiny_bert, seed=16)
    hits = get_retriever(str(corpus), str(model), pooling="mean", device="cpu").search(QUERIES, K)
    for h, r in zip(hits, plain_reference(model, corpus)):
        assert_same_ranking(h, r)
    assert "first layout did not record" in caplog.text
    assert index_folders(corpus) == sorted(["model", name]) and legacy.is_dir()


# ----------------------------------------------------------------------------------------------- MedRAG's indexes


def test_medrag_precomputed_index_serves_medcpt_with_local_weights_only(tmp_path, make_tiny_bert):
    """MedRAG's precomputed vectors (<source>/index/ncbi/MedCPT-Article-Encoder/embedding/*.npy) are what
    `--retriever MedCPT` with local copies of its models searches; a local folder `--like MedCPT` is another model
    and gets its own index."""
    db = tmp_path / "db"
    src = write_corpus(db / "textbooks")
    model = make_tiny_bert(tmp_path / "m" / "MedCPT-Query-Encoder", seed=17)
    rows = corpus_rows(src)
    emb_dir = src / "index" / "ncbi" / "MedCPT-Article-Encoder" / "embedding"
    emb_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((len(rows), 32)).astype(np.float32)
    half = len(rows) // 2
    np.save(emb_dir / "part_a.npy", vecs[:half])
    np.save(emb_dir / "part_b.npy", vecs[half:])
    ids = [r["id"] for r in rows]

    q = encode(model, QUERIES, 64, "cls", False)  # MedCPT's query side: CLS, 64 tokens
    hits = get_retriever("Textbooks", "MedCPT", db_dir=str(db), query_model=str(model), doc_model=str(model),
                         device="cpu").search(QUERIES, K)
    for h, r in zip(hits, ranking(q, vecs.astype(np.float64), ids, K)):
        assert_same_ranking(h, r)
    assert not (src / "medret" / "index").exists() or index_folders(src) == []

    # (mean pooling here: a random tiny BERT's CLS vectors are nearly identical, which would test nothing)
    own = get_retriever("Textbooks", str(model), like="MedCPT", pooling="mean", db_dir=str(db),
                        device="cpu").search(QUERIES, K)
    d = encode(model, [(r["title"].strip(), r["content"].strip()) for r in rows], 512, "mean", False)
    q = encode(model, QUERIES, 64, "mean", False)
    for h, r in zip(own, ranking(q, d, ids, K)):
        assert_same_ranking(h, r)
    assert len(index_folders(src)) == 1
