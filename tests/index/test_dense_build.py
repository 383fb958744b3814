"""Index building: resume after a crash, atomic final rename, manifest checks, stale-corpus refusal."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from medret.config import EngineOptions
from medret.encoders.specs import resolve_spec
from medret.errors import ConfigError, IndexBuildError
from medret.index.dense import DenseIndex
from medret.index.dense_build import build_dense_index, load_dense_index, partial_dir

DIM = 12


class ListStore:
    """A duck-typed document store over a list (the interface the engine's DocStore offers)."""

    def __init__(self, docs: list[dict], tag: str = "v1"):
        self.docs = docs
        self.checksum = hashlib.sha256((tag + str(len(docs))).encode()).hexdigest()

    def __len__(self) -> int:
        return len(self.docs)

    def get(self, rows):
        return [dict(self.docs[int(r)]) for r in rows]


def make_docs(n: int) -> list[dict]:
    return [{"id": f"c_{i}", "title": f"T{i}", "content": f"content number {i}"} for i in range(n)]


def vec_of(doc: dict) -> np.ndarray:
    seed = int(hashlib.md5(doc["id"].encode()).hexdigest()[:8], 16)
    return np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)


class FakeEncoder:
    """Deterministic per-document vectors; records which documents it was asked to encode."""

    def __init__(self):
        self.seen: list[str] = []

    def encode_docs(self, docs, batch_size=64):
        self.seen += [d["id"] for d in docs]
        return np.stack([vec_of(d) for d in docs])


class Crash(RuntimeError):
    pass


def crash_after(n_chunks: int):
    def cb(i, done):
        if i + 1 == n_chunks:
            raise Crash(f"simulated crash after chunk {i}")

    return cb


SPEC = resolve_spec("MedCPT")


def config_for(retriever: str = "MedCPT", **options) -> EngineOptions:
    """The configuration an index is built for (fp16 storage, as on a GPU node, unless told)."""
    return EngineOptions(**{"retriever_name": retriever, "corpus_name": "Textbooks", "device": "cpu", "fp16": True,
                            **options})


CONFIG = config_for()  # its encoder is SPEC


def brute(emb, q, k, metric="ip"):
    s = q @ emb.T if metric == "ip" else -((q[:, None] - emb[None]) ** 2).sum(-1)
    return np.argsort(-s, axis=1, kind="stable")[:, :k]


def test_flat_build_searches_like_brute_force(tmp_path):
    store = ListStore(make_docs(95))
    out = build_dense_index(store, tmp_path / "medcpt", CONFIG, encoder=FakeEncoder(), chunk_rows=20, progress=False)
    m = json.loads((out / "manifest.json").read_text())
    assert m["complete"] and m["count"] == 95 and m["dim"] == DIM and m["dtype"] == "float16"
    assert m["doc_model"] == "ncbi/MedCPT-Article-Encoder" and m["pooling"] == "cls" and m["metric"] == "ip"
    assert m["store_checksum"] == store.checksum and m["index_type"] == "flat"
    assert sorted(p.name for p in out.glob("emb_*.npy")) == [f"emb_{i:06d}.npy" for i in range(5)]
    idx = load_dense_index(out, store=store, spec=SPEC)
    assert idx.backend == "exact" and isinstance(idx.embeddings[0], np.memmap)
    emb16 = np.stack([vec_of(d) for d in store.docs]).astype(np.float16).astype(np.float32)
    q = np.random.default_rng(5).standard_normal((4, DIM)).astype(np.float32)
    np.testing.assert_array_equal(idx.search(q, 7)[1], brute(emb16, q, 7))


def test_interrupted_build_resumes_and_equals_uninterrupted(tmp_path):
    store = ListStore(make_docs(103))
    ref = build_dense_index(store, tmp_path / "ref", CONFIG, encoder=FakeEncoder(), chunk_rows=10, progress=False)

    out = tmp_path / "resumed"
    first = FakeEncoder()
    with pytest.raises(Crash):
        build_dense_index(store, out, CONFIG, encoder=first, chunk_rows=10, progress=False, on_chunk=crash_after(4))
    assert len(first.seen) == 40
    assert not out.exists()  # nothing where the loader looks
    with pytest.raises(IndexBuildError, match="interrupted"):
        load_dense_index(out, store=store)

    second = FakeEncoder()
    build_dense_index(store, out, CONFIG, encoder=second, chunk_rows=10, progress=True)
    assert second.seen == [f"c_{i}" for i in range(40, 103)]  # only the remaining rows were encoded
    assert not partial_dir(out).exists()
    for f in sorted(ref.glob("emb_*.npy")):
        np.testing.assert_array_equal(np.load(f), np.load(out / f.name))
    q = np.random.default_rng(2).standard_normal((3, DIM)).astype(np.float32)
    a = load_dense_index(ref, store=store).search(q, 5)
    b = load_dense_index(out, store=store).search(q, 5)
    np.testing.assert_array_equal(a[1], b[1])


def test_damaged_chunk_is_reencoded_on_resume(tmp_path):
    store = ListStore(make_docs(30))
    out = tmp_path / "ix"
    with pytest.raises(Crash):
        build_dense_index(store, out, CONFIG, encoder=FakeEncoder(), chunk_rows=10, progress=False,
                          on_chunk=crash_after(2))
    work = partial_dir(out)
    data = (work / "emb_000001.npy").read_bytes()
    (work / "emb_000001.npy").write_bytes(data[: len(data) // 2])  # a torn file
    enc = FakeEncoder()
    build_dense_index(store, out, CONFIG, encoder=enc, chunk_rows=10, progress=False)
    assert enc.seen == [f"c_{i}" for i in range(10, 30)]


def test_resume_discards_work_for_another_corpus(tmp_path):
    out = tmp_path / "ix"
    with pytest.raises(Crash):
        build_dense_index(ListStore(make_docs(30)), out, CONFIG, encoder=FakeEncoder(), chunk_rows=10,
                          progress=False, on_chunk=crash_after(2))
    enc = FakeEncoder()
    build_dense_index(ListStore(make_docs(30), tag="v2"), out, CONFIG, encoder=enc, chunk_rows=10, progress=False)
    assert len(enc.seen) == 30


def test_crash_while_finalizing_leaves_no_loadable_index(tmp_path, monkeypatch):
    store = ListStore(make_docs(25))
    out = tmp_path / "ix"

    def boom(self, directory, embedding_files=None):
        raise Crash("disk full while writing the index")

    monkeypatch.setattr(DenseIndex, "write_into", boom)
    with pytest.raises(Crash):
        build_dense_index(store, out, CONFIG, encoder=FakeEncoder(), chunk_rows=10, progress=False)
    assert not out.exists()
    with pytest.raises(IndexBuildError):
        load_dense_index(out, store=store)
    monkeypatch.undo()
    enc = FakeEncoder()
    build_dense_index(store, out, CONFIG, encoder=enc, chunk_rows=10, progress=False)
    assert enc.seen == []  # every chunk was already complete
    assert load_dense_index(out, store=store).ntotal == 25


def test_incomplete_or_damaged_manifest_refused(tmp_path):
    store = ListStore(make_docs(12))
    out = build_dense_index(store, tmp_path / "ix", CONFIG, encoder=FakeEncoder(), chunk_rows=5, progress=False)
    m = json.loads((out / "manifest.json").read_text())
    (out / "emb_000002.npy").write_bytes(b"")
    with pytest.raises(IndexBuildError, match="damaged: emb_000002.npy"):
        load_dense_index(out, store=store)
    m["complete"] = False
    (out / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(IndexBuildError, match="incomplete"):
        load_dense_index(out, store=store)


def test_changed_corpus_is_refused_with_rebuild_hint(tmp_path):
    store = ListStore(make_docs(12))
    out = build_dense_index(store, tmp_path / "ix", CONFIG, encoder=FakeEncoder(), chunk_rows=5, progress=False)
    changed = ListStore(make_docs(12), tag="edited")
    with pytest.raises(IndexBuildError) as e:
        load_dense_index(out, store=changed, spec=SPEC, corpus_name="Textbooks")
    msg = str(e.value)
    assert "corpus changed" in msg
    assert "medret index build --corpus Textbooks --retriever MedCPT --rebuild" in msg


def test_other_model_index_is_refused(tmp_path):
    store = ListStore(make_docs(12))
    out = build_dense_index(store, tmp_path / "ix", CONFIG, encoder=FakeEncoder(), chunk_rows=5, progress=False)
    with pytest.raises(IndexBuildError, match="facebook/contriever"):
        load_dense_index(out, store=store, spec=resolve_spec("contriever"))


def test_existing_index_kept_refused_or_rebuilt(tmp_path):
    store = ListStore(make_docs(12))
    out = build_dense_index(store, tmp_path / "ix", CONFIG, encoder=FakeEncoder(), chunk_rows=5, progress=False)

    class Forbidden:
        def encode_docs(self, docs, batch_size=64):
            raise AssertionError("an up-to-date index must not be re-encoded")

    assert build_dense_index(store, out, CONFIG, encoder=Forbidden(), chunk_rows=5, progress=False) == out
    bigger = ListStore(make_docs(14), tag="v2")
    with pytest.raises(IndexBuildError, match="--rebuild"):
        build_dense_index(bigger, out, CONFIG, encoder=FakeEncoder(), chunk_rows=5, progress=False)
    assert load_dense_index(out, store=store).ntotal == 12  # untouched by the refusal
    build_dense_index(bigger, out, CONFIG, encoder=FakeEncoder(), chunk_rows=5, progress=False, rebuild=True)
    assert load_dense_index(out, store=bigger).ntotal == 14
    assert [p.name for p in tmp_path.glob(".ix.*")] == [".ix.lock"]  # no partial/old folder; the lock file stays


@pytest.mark.parametrize("index_type", ["hnsw", "IVF4,Flat"])
def test_faiss_index_types_through_the_builder(tmp_path, index_type):
    store = ListStore(make_docs(300))
    config = config_for(fp16=False, nprobe=4 if index_type.startswith("IVF") else None)
    out = build_dense_index(store, tmp_path / "ix", config, encoder=FakeEncoder(), chunk_rows=64, progress=False,
                            index_type=index_type)
    assert (out / "faiss.index").is_file()
    idx = load_dense_index(out, store=store)
    assert idx.backend == "faiss"
    emb = np.stack([vec_of(d) for d in store.docs])
    q = np.random.default_rng(3).standard_normal((5, DIM)).astype(np.float32)
    rows = idx.search(q, 5)[1]
    ref = brute(emb, q, 5)
    recall = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(rows, ref)])
    assert recall >= 0.9  # 300 vectors: HNSW (ef 128) and IVF with every list probed are ~exact


def test_bad_arguments(tmp_path):
    store = ListStore(make_docs(5))
    with pytest.raises(ConfigError, match="batch_size=0"):
        build_dense_index(store, tmp_path / "a", config_for(batch_size=0), encoder=FakeEncoder())
    with pytest.raises(ConfigError, match="chunk_rows=-1"):
        build_dense_index(store, tmp_path / "a", CONFIG, chunk_rows=-1, encoder=FakeEncoder())
    with pytest.raises(IndexBuildError, match="empty"):
        build_dense_index(ListStore([]), tmp_path / "a", CONFIG, encoder=FakeEncoder())
    with pytest.raises(ConfigError, match=r"index_type \(--index-type\)='Bogus"):
        build_dense_index(store, tmp_path / "a", CONFIG, index_type="Bogus,Thing", encoder=FakeEncoder(),
                          progress=False)
    with pytest.raises(IndexBuildError, match="no dense index"):
        load_dense_index(tmp_path / "nothing")


def test_fp16_overflow_refused(tmp_path):
    class Huge(FakeEncoder):
        def encode_docs(self, docs, batch_size=64):
            return super().encode_docs(docs) * 1e6

    with pytest.raises(IndexBuildError, match="overflow fp16"):
        build_dense_index(ListStore(make_docs(5)), tmp_path / "a", CONFIG, encoder=Huge(), progress=False)


def test_real_encoder_end_to_end(tmp_path, tiny_bert_dir):
    """The default encoder path (from_pretrained on a local dir) builds an index whose search equals brute force."""
    from medret.encoders.hf import Encoder

    spec = resolve_spec(str(tiny_bert_dir), pooling="mean", name="tiny")
    docs = [{"id": f"d{i}", "title": t, "content": c} for i, (t, c) in enumerate([
        ("Sepsis", "Sepsis in elderly ICU patients carries a high mortality risk."),
        ("Heart failure", "Heart failure reduces cardiac output."),
        ("Pneumonia", "Pneumonia is an infection of the lung."),
        ("Delirium", "Delirium in the ICU predicts mortality."),
        ("Atrial fibrillation", "Atrial fibrillation raises stroke risk."),
    ])]
    store = ListStore(docs)
    out = build_dense_index(store, tmp_path / "tiny", config_for(str(tiny_bert_dir), pooling="mean", batch_size=2,
                                                                 fp16=False), chunk_rows=2, progress=False)
    enc = Encoder(spec, "cpu")
    doc_emb = enc.encode_docs(docs)
    np.testing.assert_allclose(np.concatenate([np.load(p) for p in sorted(out.glob("emb_*.npy"))]), doc_emb,
                               rtol=1e-5, atol=1e-6)
    q = enc.encode_queries(["sepsis mortality in elderly icu patients", "stroke risk"])
    s, r = load_dense_index(out, store=store, spec=spec).search(q, 3)
    np.testing.assert_array_equal(r, brute(doc_emb, q, 3))
