"""Issue 13 item 4: damaged embedding files are detected (at open, on build resume, by `medret doctor`).

The break reproduced: zeroing or NaN-filling one emb_*.npy at the same size made its rows vanish from results with
exit 0 (the manifest checked sizes only).
"""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from medret.errors import IndexBuildError
from medret.index.dense_build import build_dense_index, load_dense_index, partial_dir
from tests.index.test_dense_build import (
    CONFIG,
    SPEC,
    Crash,
    FakeEncoder,
    ListStore,
    crash_after,
    make_docs,
)


def overwrite_rows(path, rows, value) -> None:
    """Overwrite ``rows`` of a .npy file in place with ``value`` (0 or NaN): same size, same header."""
    arr = np.load(path, mmap_mode="r+")
    arr[rows] = value
    arr.flush()
    del arr


def changed_files(index_dir, manifest):
    """The embedding files whose sha256 (hashlib, read here) is not the one the manifest records."""
    return sorted(f for f, h in manifest["emb_sha256"].items()
                  if hashlib.sha256((index_dir / f).read_bytes()).hexdigest() != h)


@pytest.mark.parametrize("value", [0.0, np.nan], ids=["zeroed", "nan"])
def test_zeroed_or_nan_filled_file_is_refused_at_open(tmp_path, value):
    store = ListStore(make_docs(30))
    out = build_dense_index(store, tmp_path / "ix", CONFIG, encoder=FakeEncoder(), chunk_rows=10, progress=False)
    m = json.loads((out / "manifest.json").read_text())
    assert sorted(m["emb_sha256"]) == ["emb_000000.npy", "emb_000001.npy", "emb_000002.npy"]
    target = out / "emb_000001.npy"
    size = target.stat().st_size
    assert load_dense_index(out, store=store).search(np.ones((1, 12), np.float32), 30)[1].shape == (1, 30)

    overwrite_rows(target, slice(None), value)

    assert target.stat().st_size == size == m["files"]["emb_000001.npy"]  # the size check alone passes
    with pytest.raises(IndexBuildError, match=r"damaged: emb_000001.npy rows 0..9: (all zero|not finite).*"
                                              r"--rebuild"):
        load_dense_index(out, store=store, spec=SPEC, corpus_name="Textbooks")
    assert changed_files(out, m) == ["emb_000001.npy"]


@pytest.mark.parametrize("value", [0.0, np.nan], ids=["zeroed", "nan"])
def test_damaged_chunk_is_encoded_again_on_resume(tmp_path, value):
    store = ListStore(make_docs(30))
    ref = build_dense_index(store, tmp_path / "ref", CONFIG, encoder=FakeEncoder(), chunk_rows=10, progress=False)
    out = tmp_path / "ix"
    with pytest.raises(Crash):
        build_dense_index(store, out, CONFIG, encoder=FakeEncoder(), chunk_rows=10, progress=False,
                          on_chunk=crash_after(2))
    work = partial_dir(out)
    assert (work / "emb_000001.npy.sha256").is_file()
    overwrite_rows(work / "emb_000001.npy", slice(3, 4), value)  # one row: shape and dtype still right
    enc = FakeEncoder()
    build_dense_index(store, out, CONFIG, encoder=enc, chunk_rows=10, progress=False)
    assert enc.seen == [f"c_{i}" for i in range(10, 30)]  # chunk 1 again, then chunk 2
    for f in sorted(ref.glob("emb_*.npy")):
        np.testing.assert_array_equal(np.load(f), np.load(out / f.name))
    assert not list(out.glob("*.sha256"))  # the checksums went into the manifest
    m = json.loads((out / "manifest.json").read_text())
    assert changed_files(out, m) == []


def test_chunk_without_checksum_is_kept_only_if_its_vectors_are_sound(tmp_path):
    """A partial folder of an older medret (or a kill between a chunk and its checksum) has no checksums."""
    store = ListStore(make_docs(30))
    out = tmp_path / "ix"
    with pytest.raises(Crash):
        build_dense_index(store, out, CONFIG, encoder=FakeEncoder(), chunk_rows=10, progress=False,
                          on_chunk=crash_after(2))
    work = partial_dir(out)
    for side in work.glob("*.sha256"):
        side.unlink()
    overwrite_rows(work / "emb_000001.npy", slice(7, 8), np.nan)
    enc = FakeEncoder()
    build_dense_index(store, out, CONFIG, encoder=enc, chunk_rows=10, progress=False)
    assert enc.seen == [f"c_{i}" for i in range(10, 30)]  # chunk 0 kept (sound), chunk 1 encoded again


def test_one_damaged_row_is_refused_at_open_and_by_doctor(tmp_path, tiny_bert_dir):
    """Every vector of a file edited after the build is checked at the next open (it was the first, middle and last
    only: row 2 here went unseen); `medret doctor` finds it too, and its checksums name the file."""
    import subprocess
    import sys

    from medret import clear_cache, get_retriever
    from tests.conftest import TOY_DOCS, write_chunks

    corpus = write_chunks(tmp_path / "toy", {"toy_a": TOY_DOCS[:5], "toy_b": TOY_DOCS[5:]})
    kw = dict(corpus_name=str(corpus), retriever_name=str(tiny_bert_dir), pooling="cls", device="cpu")
    get_retriever(**kw).search(["sepsis"], 2)
    clear_cache()
    [ix] = [p for p in (corpus / "medret" / "index").iterdir() if p.is_dir()]
    overwrite_rows(ix / "emb_000000.npy", slice(2, 3), 0.0)  # rows 0, 4 (middle) and 7 were the sampled ones
    with pytest.raises(IndexBuildError, match=r"emb_000000.npy row 2: all zero"):
        get_retriever(**kw).search(["sepsis"], 2)
    clear_cache()
    out = subprocess.run([sys.executable, "-m", "medret", "doctor", "--corpus", str(corpus), "--retriever",
                          str(tiny_bert_dir), "--pooling", "cls", "--device", "cpu", "--no-search", "--json"],
                         capture_output=True, text=True)
    checks = json.loads(out.stdout)["checks"]
    assert out.returncode == 1, out.stderr
    [bad] = [c for c in checks if c["key"] == "integrity" and c["status"] == "fail"]
    assert "1 of 1 files differ" in bad["title"] and str(ix / "emb_000000.npy") in bad["detail"]
    assert "--rebuild" in bad["fix"]
    [index] = [c for c in checks if c["key"] == "index" and c["status"] == "fail"]
    assert "emb_000000.npy row 2: all zero" in index["detail"]
