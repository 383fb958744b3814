"""`medret doctor`'s content and leftover checks.

**Content** (:func:`check_integrity`): the sha256 recorded at build time of every file the configured retriever
reads — the corpus's chunk files (store manifest ``chunk_files``), the document store's ``docs.bin``,
``offsets.npy`` and ``row_sums.npy`` (``sha256``, ``offsets_sha256``, ``row_sums_sha256``), the BM25 index's files
(``file_sha256``) and each dense index's ``emb_*.npy`` (``emb_sha256``) — are compared with the files as they are
now. Hashing reads every byte (MedCorp: ~100 GB of chunk files, ~80 GB of fp16 embeddings; ~1 GB/s per core for
sha256, often less from disk), so by default it runs only when the files total at most :data:`DEEP_AUTO_BYTES`
(about a second), and always with ``medret doctor --deep``. The cheap checks that run at every open (chunk files'
size/mtime/ctime/inode, store and index file sizes and shapes, vectors scanned once and recorded) run in the
doctor's ``store`` and ``index`` lines regardless.

**Leftovers** (:func:`check_leftovers`): temporary folders of interrupted builds (``.store.tmp-PID-START``,
``.bm25.tmp-PID-START``, ``.<name>.old-PID-START``: :mod:`medret.storage.pids`; a dense index's
``.<name>.partial``) with their size; the ones whose build lock is held now belong to a running build and are
reported as such.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from medret.doctor.checks import FAIL, OK, WARN, Check, gb
from medret.doctor.data import corpus_of
from medret.encoders.specs import spec_for
from medret.errors import MedretError
from medret.index.hints import build_command
from medret.index.identity import encoder_identity
from medret.index.locate import bm25_dir, locate_dense
from medret.index.manifest import read_manifest
from medret.retrievers import retriever_parts
from medret.storage.checksums import mismatches, total_bytes
from medret.storage.leftovers import find_leftovers
from medret.storage.locks import holder

DEEP_AUTO_BYTES = 1 << 30

HASH_BYTES_PER_S = 1e9  # for the time estimate shown when hashing is skipped


def _targets(config: Any, corpus: Any) -> list[tuple[str, Path, dict[str, str], str, list[str]]]:
    """(label, folder, {file: sha256}, fix, notes) for every recorded file the configuration reads."""
    build = build_command(config)
    out: list[tuple[str, Path, dict[str, str], str, list[str]]] = []
    for src in corpus.sources:
        m = read_manifest(src.store_dir)
        if m is None:
            continue
        records = m.get("chunk_files")
        if records:
            out.append((f"chunk files of {src.name}", src.chunk_files[0].parent,
                        {r["name"]: r["sha256"] for r in records},
                        f"{build} --rebuild (the chunk files changed), or download them again", []))
        sums = {k: m[key] for k, key in (("docs.bin", "sha256"), ("offsets.npy", "offsets_sha256"),
                                         ("row_sums.npy", "row_sums_sha256")) if m.get(key)}
        out.append((f"document store of {src.name}", src.store_dir, sums,
                    f"delete {src.store_dir} and run `{build}`", [] if records else ["built by an older medret"]))
    try:
        parts = retriever_parts(config.retriever_name)
    except MedretError:
        parts = ()
    for part in parts:
        if part == "bm25":
            folder = bm25_dir(corpus)
            m = read_manifest(folder)
            if m is not None:
                out.append((f"BM25 index of {corpus.display_name}", folder, dict(m.get("file_sha256") or {}),
                            f"{build} --rebuild", [] if m.get("file_sha256") else ["no hashes recorded"]))
            continue
        try:
            spec = spec_for(part, config)
            identity = encoder_identity(spec, config.doc_model, config.query_model, config.models_dir)
        except MedretError:
            continue
        for src in corpus.sources:
            kind, folder, _ = locate_dense(src, 0, spec, identity, config)  # the index a search of this config opens
            if kind not in ("own", "copy"):
                continue
            m = read_manifest(folder)
            if m is not None:
                out.append((f"{spec.name} index of {src.name}", folder, dict(m.get("emb_sha256") or {}),
                            f"{build} --rebuild", [] if m.get("emb_sha256") else ["no hashes recorded"]))
    return out


def check_integrity(config: Any, deep: bool = False) -> list[Check]:
    corpus, err = corpus_of(config)
    if err is not None:
        return []
    targets = _targets(config, corpus)
    if not targets:
        return []
    total = sum(total_bytes(folder, sums) for _, folder, sums, _, _ in targets)
    labels = ", ".join(label for label, *_ in targets)
    if not deep and total > DEEP_AUTO_BYTES:
        return [Check("integrity", OK, f"content hashes not checked ({gb(total)} to read, about "
                      f"{total / HASH_BYTES_PER_S / 60:.0f} min): `medret doctor --deep` checks them", labels)]
    t0 = time.perf_counter()
    fails, notes = [], []
    for label, folder, sums, fix, extra in targets:
        notes += [f"{label}: {n}" for n in extra]
        bad = mismatches(folder, sums)
        if bad:
            fails.append(Check("integrity", FAIL, f"{label}: {len(bad)} of {len(sums)} files differ from what was "
                               "built", ", ".join(str(folder / b) for b in bad[:5]), fix))
    if fails:
        return fails
    detail = labels + (f"; not recorded: {'; '.join(notes)}" if notes else "")
    return [Check("integrity", OK, f"content hashes match: {gb(total)} read in {time.perf_counter() - t0:.1f}s",
                  detail)]


def check_leftovers(config: Any) -> list[Check]:
    corpus, err = corpus_of(config)
    if err is not None:
        return []
    folders = []
    for src in corpus.sources:
        folders += [src.artifact_dir, src.artifact_dir / "index"]
    folders.append(corpus.artifact_dir)
    seen, found = set(), []
    for folder in folders:
        if folder in seen:
            continue
        seen.add(folder)
        found += find_leftovers(folder)
    if not found:
        return []
    running = [(left, holder(left.artifact)) for left in found]
    busy = [(left, who) for left, who in running if who]
    stale = [left for left, who in running if not who]
    out = []
    if busy:
        out.append(Check("leftovers", OK, f"{len(busy)} build(s) running now: " + ", ".join(
            f"{left.artifact.name} by {who}" for left, who in busy[:3]),
            ", ".join(f"{left.path} ({gb(left.nbytes)})" for left, _ in busy[:5])))
    if stale:
        size = sum(left.nbytes for left in stale)
        partial = [left for left in stale if left.kind == "partial"]
        fix = ("the next `medret index build` of the same artifact removes them" +
               (" (a .partial folder is resumed by it, or discarded when its settings differ)" if partial else "")
               + "; or delete them: rm -r " + " ".join(str(left.path) for left in stale[:5]))
        out.append(Check("leftovers", WARN, f"{len(stale)} temporary file(s)/folder(s) left by interrupted builds, "
                         f"{gb(size)}", "; ".join(f"{left.path} ({gb(left.nbytes)})" for left in stale[:5])
                         + (f" and {len(stale) - 5} more" if len(stale) > 5 else ""), fix))
    return out
