"""A hub cache blob rewritten in place is seen (issue 24 item 14). The hub names each LFS blob by the sha256 it was
written with; medret trusted that name, so after an in-place rewrite the model's fingerprint stayed the same and the
index built from the old weights was served. Now each blob is hashed once, the result cached by its stat
(device, inode, size, mtime, ctime), and a blob that no longer matches its name counts by its content."""
from __future__ import annotations

import hashlib
import json
import logging
import os

from medret.encoders import fingerprint as fpm

MODEL = "org/tiny-model"
COMMIT = "7" * 40


def hub_cache(root, files: dict[str, bytes]):
    """huggingface_hub's layout: blobs named by sha256, snapshot symlinks, refs/main."""
    repo = root / ("models--" + MODEL.replace("/", "--"))
    (repo / "blobs").mkdir(parents=True)
    snap = repo / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    for name, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snap / name).symlink_to(os.path.relpath(blob, snap))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return repo


def test_blob_rewritten_in_place_changes_the_fingerprint(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("MEDRET_CACHE", str(tmp_path / "medret"))
    weights = bytes(range(256)) * 40
    repo = hub_cache(tmp_path / "hub", {"config.json": b'{"hidden_size": 8}', "model.safetensors": weights})
    blob = repo / "blobs" / hashlib.sha256(weights).hexdigest()

    before = fpm.model_identity(MODEL, MODEL)
    assert before.source == "hub" and before.revision == COMMIT
    assert before.files["model.safetensors"]["sha256"] == hashlib.sha256(weights).hexdigest()

    forged = bytes(reversed(weights))  # same size, other bytes, written into the blob itself
    with open(blob, "r+b") as f:
        f.write(forged)
    with caplog.at_level(logging.WARNING, logger="medret.encoders.fingerprint"):
        after = fpm.model_identity(MODEL, MODEL)
    assert after.files["model.safetensors"]["sha256"] == hashlib.sha256(forged).hexdigest()
    assert after.fingerprint != before.fingerprint  # an index built from the old bytes no longer matches
    assert any("rewritten in place" in r.getMessage() for r in caplog.records)


def test_blob_is_hashed_once_then_answered_from_the_stat_keyed_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("MEDRET_CACHE", str(tmp_path / "medret"))
    weights = b"w" * 5000
    repo = hub_cache(tmp_path / "hub", {"config.json": b"{}", "model.safetensors": weights})
    blob = repo / "blobs" / hashlib.sha256(weights).hexdigest()
    assert fpm.file_digest(blob) == hashlib.sha256(weights).hexdigest()
    entry = fpm._cache_file(blob.resolve())
    cached = json.loads(entry.read_text())
    st = os.stat(blob)
    assert cached["stat"] == [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
    # an unchanged blob is not read again: the cached result is what comes back (made recognisable here)
    entry.write_text(json.dumps(dict(cached, sha256="e" * 64)))
    assert fpm.file_digest(blob) == "e" * 64
