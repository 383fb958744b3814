"""Issue 24 item 10: NaN, inf, huge and zeroed rows in stored embeddings never reach an answer.

The break reproduced: 10 NaN rows written into an emb_*.npy after the build became the top hits of every query
(score NaN, ``null`` in JSON); rows of 1e30 dominated; zeroed rows silently dropped out. The open-time check read
only the first, middle and last row of each file, so the damage below is placed away from those rows.
"""
from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest

from medret.errors import IndexBuildError
from medret.storage import vectors
from medret.storage.vectors import NORM_RATIO, RECORD, reference_norm, row_damage, scan
from tests.index.test_dense_build import DIM, SPEC, FakeEncoder, ListStore, config_for, make_docs

ROWS = 80
CHUNK = 40  # two files of 40 rows: the former sample read rows 0, 20 and 39 of each


def overwrite_rows(path, rows, value) -> None:
    """Write ``value`` into ``rows`` of a .npy file in place (same size, same header), as the break-it run did."""
    arr = np.load(path, mmap_mode="r+")
    with np.errstate(over="ignore"):  # 1e30 into fp16: inf
        arr[rows] = value
    arr.flush()
    del arr


def build(tmp_path, fp16: bool = True):
    from medret.index.dense_build import build_dense_index

    store = ListStore(make_docs(ROWS))
    out = build_dense_index(store, tmp_path / "ix", config_for(fp16=fp16), encoder=FakeEncoder(), chunk_rows=CHUNK,
                            progress=False)
    return store, out


def load(out, store):
    from medret.index.dense_build import load_dense_index

    return load_dense_index(out, store=store, spec=SPEC, corpus_name="Textbooks")


def test_ten_nan_rows_written_after_the_build_are_refused_at_open(tmp_path):
    store, out = build(tmp_path)
    target = out / "emb_000001.npy"
    size = target.stat().st_size
    assert load(out, store).ntotal == ROWS
    overwrite_rows(target, slice(5, 15), np.nan)
    assert target.stat().st_size == size  # the size check of the manifest alone passes
    with pytest.raises(IndexBuildError, match=r"damaged: emb_000001\.npy rows 5\.\.14: not finite \(NaN or inf\)"
                                              r".*--rebuild"):
        load(out, store)


@pytest.mark.parametrize("fp16", [True, False], ids=["fp16", "fp32"])
def test_rows_of_1e30_are_refused(tmp_path, fp16):
    store, out = build(tmp_path, fp16)
    overwrite_rows(out / "emb_000000.npy", slice(5, 8), 1e30)
    if fp16:  # 1e30 does not fit in fp16: the stored value is inf
        expect = r"emb_000000\.npy rows 5\.\.7: not finite"
    else:  # finite, but every score of these rows would be ~1e30: refused by their norm
        expect = re.escape(f"emb_000000.npy rows 5..7: norm {1e30 * np.sqrt(DIM):.3g}, more than {NORM_RATIO:g}x "
                           "above the index's median norm")
    with pytest.raises(IndexBuildError, match=expect):
        load(out, store)


def test_zeroed_rows_are_refused(tmp_path):
    store, out = build(tmp_path)
    overwrite_rows(out / "emb_000000.npy", slice(30, 34), 0.0)
    overwrite_rows(out / "emb_000000.npy", slice(36, 37), 0.0)
    with pytest.raises(IndexBuildError, match=r"emb_000000\.npy rows 30\.\.33: all zero \(5 damaged rows in the "
                                              r"file\)"):
        load(out, store)


def test_verified_files_are_not_scanned_again_until_they_change(tmp_path, monkeypatch):
    store, out = build(tmp_path)
    record = json.loads((out / RECORD).read_text())["files"]  # written by the build, which scanned them
    assert sorted(record) == ["emb_000000.npy", "emb_000001.npy"]
    scanned = []
    real_scan = vectors.scan
    monkeypatch.setattr(vectors, "scan", lambda arr, name, ref: scanned.append(name) or real_scan(arr, name, ref))
    assert load(out, store).ntotal == ROWS
    assert scanned == []  # a stat a file
    target = out / "emb_000001.npy"
    target.write_bytes(target.read_bytes())  # the same bytes written again: another mtime and ctime
    assert load(out, store).ntotal == ROWS
    assert scanned == ["emb_000001.npy"]
    assert load(out, store).ntotal == ROWS
    assert scanned == ["emb_000001.npy"]  # recorded again


def test_row_damage_follows_the_documented_rule():
    """Against a reference written here: norms in float64, the median of the sampled sound rows, a factor of 100."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((500, 16)).astype(np.float32)
    x[10] = np.nan
    x[11, 3] = np.inf
    x[12] = 0
    x[13] *= 150.0  # beyond 100x the median norm
    x[14] *= 50.0  # within it
    x[15] *= 1e-3  # below a hundredth of it
    x[16] *= 0.05  # within it
    ref = reference_norm([x[:250], x[250:]])
    norms = np.linalg.norm(x.astype(np.float64), axis=1)
    sound = norms[np.isfinite(norms) & (norms > 0)]
    assert ref == pytest.approx(np.median(sound), rel=1e-5)
    with np.errstate(invalid="ignore"):
        expected = ~((norms >= ref / 100) & (norms <= ref * 100))
    assert sorted(np.nonzero(expected)[0]) == [10, 11, 12, 13, 15]
    np.testing.assert_array_equal(row_damage(x, ref), expected)


def test_scan_reports_the_first_run_and_the_count_across_blocks(monkeypatch):
    monkeypatch.setattr(vectors, "SCAN_ROWS", 7)  # runs that cross block boundaries
    x = np.random.default_rng(5).standard_normal((60, 8)).astype(np.float16)
    assert scan(x, "f.npy", reference_norm([x])) is None
    x[12:23] = np.nan
    x[40] = 0
    d = scan(x, "f.npy", reference_norm([x]))
    assert (d.first, d.last, d.count) == (12, 22, 12)
    assert str(d) == "f.npy rows 12..22: not finite (NaN or inf) (12 damaged rows in the file)"


def test_nan_scores_never_reach_an_answer(tmp_path, tiny_bert_dir):
    """Defence in depth: damage that slipped past the open-time check (here a forged record) fails the search,
    naming the row, instead of answering it first with score NaN."""
    from medret import clear_cache, get_retriever
    from tests.conftest import TOY_DOCS, write_chunks

    corpus = write_chunks(tmp_path / "toy", {"toy_a": TOY_DOCS[:5], "toy_b": TOY_DOCS[5:]})
    kw = dict(corpus_name=str(corpus), retriever_name=str(tiny_bert_dir), pooling="cls", device="cpu")
    assert len(get_retriever(**kw).search(["sepsis"], 3)[0]) == 3
    clear_cache()
    [ix] = [p for p in (corpus / "medret" / "index").iterdir() if p.is_dir()]
    target = ix / "emb_000000.npy"
    overwrite_rows(target, slice(2, 3), np.nan)
    rec = json.loads((ix / RECORD).read_text())
    st = os.stat(target)
    rec["files"][target.name] = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]  # "verified" as it is now
    (ix / RECORD).write_text(json.dumps(rec))
    try:
        with pytest.raises(IndexBuildError, match=r"scored row 2 nan for query 0: its stored vectors are damaged"):
            get_retriever(**kw).search(["sepsis"], 3)
    finally:
        clear_cache()


def test_a_folder_whose_record_cannot_be_written_is_recorded_in_medrets_cache(tmp_path, monkeypatch):
    """A read-only index or MedRAG folder (a shared --db-dir) would be scanned in full at every open: its record
    goes to $MEDRET_CACHE/verified-vectors/ instead. (The record's name is made a folder here: tests run as root,
    for whom permissions do not stop a write.)"""
    monkeypatch.setenv("MEDRET_CACHE", str(tmp_path / "cache"))
    store, out = build(tmp_path)
    (out / RECORD).unlink()
    (out / RECORD).mkdir()
    scanned = []
    real_scan = vectors.scan
    monkeypatch.setattr(vectors, "scan", lambda arr, name, ref: scanned.append(name) or real_scan(arr, name, ref))
    assert load(out, store).ntotal == ROWS
    assert scanned == ["emb_000000.npy", "emb_000001.npy"]
    [kept] = (tmp_path / "cache" / vectors.VERIFIED).iterdir()
    assert sorted(json.loads(kept.read_text())["files"]) == ["emb_000000.npy", "emb_000001.npy"]
    assert load(out, store).ntotal == ROWS
    assert scanned == ["emb_000000.npy", "emb_000001.npy"]  # not scanned again
    overwrite_rows(out / "emb_000001.npy", slice(3, 4), np.nan)
    with pytest.raises(IndexBuildError, match=r"emb_000001\.npy row 3: not finite"):
        load(out, store)


def test_a_query_encoder_that_returns_nan_fails_the_search(tmp_path, make_tiny_bert):
    """NaN query vectors would score every row NaN: the search fails naming the query instead."""
    import torch
    from transformers import BertModel

    from medret import clear_cache, get_retriever
    from tests.conftest import TOY_DOCS, write_chunks

    corpus = write_chunks(tmp_path / "toy", {"toy_a": TOY_DOCS[:5], "toy_b": TOY_DOCS[5:]})
    docs = make_tiny_bert(tmp_path / "docs", seed=3)
    broken = make_tiny_bert(tmp_path / "queries", seed=3)
    model = BertModel.from_pretrained(broken)
    with torch.no_grad():
        model.encoder.layer[0].output.dense.bias.fill_(float("nan"))
    model.save_pretrained(broken)
    kw = dict(corpus_name=str(corpus), retriever_name=str(docs), pooling="cls", device="cpu")
    try:
        assert len(get_retriever(**kw).search(["sepsis"], 3)[0]) == 3  # the index is built with sound vectors
        clear_cache()
        with pytest.raises(IndexBuildError, match=r"the query encoder of .* returned NaN/inf for query 0 \('sepsis'\)"):
            get_retriever(**kw, query_model=str(broken)).search(["sepsis"], 3)
    finally:
        clear_cache()
