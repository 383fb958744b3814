"""Which model an index was built from: where the model is, its hub revision, and a fingerprint of its files.

**Where.** A model given as a folder (``--retriever DIR``, ``--doc-model DIR``, ``$MEDRET_MODELS_DIR/<id>``) is
identified by its resolved path. A hub id (``intfloat/e5-base-v2``) is looked up in the Hugging Face cache the way
``from_pretrained`` finds it offline: ``<cache>/models--<org>--<name>/refs/main`` names the commit, whose snapshot
folder holds the files; the commit is recorded as the revision.

**What is fingerprinted.** The top-level files of that folder that change the vectors: ``config.json``, the
tokenizer's files (``tokenizer*.json``, ``special_tokens_map.json``, ``added_tokens.json``, ``vocab.*``,
``merges.txt``, ``*.model``) and the weights (``*.safetensors``, ``*.bin`` and their ``*.index.json``). The
fingerprint is the sha256 over each file's name, size and sha256. README files, ``.gitattributes`` and the like
are left out, so editing them does not invalidate an index.

**Cost.** Hashing reads every byte (a BERT-base ``model.safetensors`` is 440 MB: ~0.3 s from the page cache at
1.5 GB/s, several seconds from a cold network filesystem), and every process of a long job (each veRL worker, each
restart of a 72-hour run) would pay it again. So each file's digest is cached in ``$MEDRET_CACHE/fingerprints/``,
keyed by the file's resolved path and its ``(device, inode, size, mtime_ns, ctime_ns)``: a start-up costs one
``stat`` per file, and a file is read again only when one of these changed. Any write to a file moves its ctime,
which users cannot set back (unlike mtime), so a rewrite of the same size, even with its mtime restored, is
hashed again. The cache lives with medret rather than next to the model (model folders and the shared hub cache
are often read-only, and foreign files there would be picked up by other tools) or in one index (one model serves
the indexes of every source). Files of a hub snapshot are symlinks to blobs named by their sha256 (Git LFS files):
their name is the sha256 they were written with, but a blob can be rewritten in place, so it is hashed like
any other file, once (then the stat-keyed cache answers), and one that no longer matches its name is reported.
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medret.encoders.locate import DOWNLOAD_RECORD
from medret.fetch.env import default_cache_dir as cache_dir
from medret.fetch.env import hf_cache_dir
from medret.storage.atomic import atomic_write_text

logger = logging.getLogger(__name__)

#: file name patterns (top level of the model folder) whose content changes the vectors
FINGERPRINTED = ("config.json", "tokenizer*.json", "special_tokens_map.json", "added_tokens.json", "vocab.*",
                 "merges.txt", "*.model", "*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_HASH_BLOCK = 8 << 20


@dataclass(frozen=True)
class ModelIdentity:
    """Where a model's files are and what they hold.

    ``source``: ``local`` (a folder), ``hub`` (a hub id found in the Hugging Face cache) or ``unresolved`` (a hub
    id whose files are not on this machine: only its name is known). ``location`` is what the index location is
    keyed by: the resolved folder for ``local``, the hub id otherwise (so a new revision of a hub model is a
    changed model, not another one).
    """

    name: str
    source: str
    location: str
    folder: str | None = None
    revision: str | None = None
    files: dict[str, dict[str, Any]] = field(default_factory=dict, hash=False, compare=False)
    fingerprint: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "source": self.source, "location": self.location, "folder": self.folder,
                "revision": self.revision, "fingerprint": self.fingerprint, "files": self.files}

    def describe(self) -> str:
        """One phrase for messages: the model, its revision and the start of its fingerprint."""
        where = self.location if self.source == "local" else f"hub model {self.location}"
        bits = []
        if self.revision:
            bits.append(f"revision {self.revision[:12]}")
        bits.append(f"fingerprint {self.fingerprint[:12]}" if self.fingerprint else "files not on this machine")
        return f"{where} ({', '.join(bits)})"


def hub_snapshot(model_id: str) -> tuple[Path, str] | None:
    """``(snapshot folder, commit)`` of a hub id in the local Hugging Face cache, as ``from_pretrained`` resolves it
    with ``revision='main'`` offline; None when the model is not cached (or the id is not a hub id)."""
    if not isinstance(model_id, str) or model_id.count("/") != 1 or model_id.startswith(("/", ".", "~")):
        return None
    try:
        repo = hf_cache_dir() / ("models--" + model_id.replace("/", "--"))
    except ImportError:  # huggingface_hub absent: nothing can be cached
        return None
    snapshots = repo / "snapshots"
    commit = None
    try:
        commit = (repo / "refs" / "main").read_text().strip() or None
    except OSError:
        try:
            found = [p.name for p in snapshots.iterdir() if p.is_dir()]
        except OSError:
            found = []
        commit = found[0] if len(found) == 1 else None
    if commit is None or "/" in commit or commit.startswith("."):
        return None
    folder = snapshots / commit
    return (folder, commit) if (folder / "config.json").exists() else None


def model_identity(name: str, location: str | os.PathLike[str], hub_copy: bool = False) -> ModelIdentity:
    """The identity of the model ``name`` loaded from ``location`` (a folder, or a hub id).

    ``hub_copy``: ``location`` is the hub model ``name`` as `medret models download` saved it in the models folder;
    it is identified as that hub model (keyed by its id, revision from the download record), so an index built
    with the copy is the same index whether the weights come from the models folder, the Hugging Face cache, or
    (only the name checked) from neither — a compute node that holds only the query encoder still finds it."""
    loc = os.fspath(location)
    folder = Path(loc).expanduser()
    if folder.is_dir():
        real = folder.resolve()
        files = fingerprint_files(real)
        if hub_copy:
            return ModelIdentity(name=name, source="hub", location=name, folder=str(real),
                                 revision=_downloaded_revision(real), files=files, fingerprint=combine(files))
        return ModelIdentity(name=name, source="local", location=str(real), folder=str(real), files=files,
                             fingerprint=combine(files))
    snap = hub_snapshot(loc)
    if snap is None:
        return ModelIdentity(name=name, source="unresolved", location=loc)
    snap_dir, commit = snap
    files = fingerprint_files(snap_dir)
    return ModelIdentity(name=name, source="hub", location=loc, folder=str(snap_dir), revision=commit, files=files,
                         fingerprint=combine(files))


def _downloaded_revision(folder: Path) -> str | None:
    try:
        rev = json.loads((folder / DOWNLOAD_RECORD).read_text()).get("revision")
    except (OSError, ValueError, AttributeError):
        return None
    return rev if isinstance(rev, str) and rev else None


def fingerprinted_names(folder: Path) -> list[str]:
    try:
        names = sorted(p.name for p in folder.iterdir() if p.is_file())
    except OSError:
        return []
    return [n for n in names if any(fnmatch.fnmatchcase(n, pat) for pat in FINGERPRINTED)]


def fingerprint_files(folder: Path) -> dict[str, dict[str, Any]]:
    """``{file name: {"size", "sha256"}}`` of the fingerprinted files of ``folder``."""
    return {n: {"size": os.stat(folder / n).st_size, "sha256": file_digest(folder / n)}
            for n in fingerprinted_names(folder)}


def combine(files: dict[str, dict[str, Any]]) -> str:
    h = hashlib.sha256()
    for n in sorted(files):
        h.update(f"{n}\0{files[n]['size']}\0{files[n]['sha256']}\n".encode())
    return h.hexdigest()


def file_digest(path: Path) -> str:
    """sha256 of a file: from the stat-keyed cache, or by reading it (then cached). A hub blob is read too, once
    (its name is what it held when the hub library wrote it, not what it holds now): one that no longer matches
    its name was rewritten in place, and its real digest is what counts (so an index built from the old bytes is
    refused), with a warning."""
    real = Path(os.path.realpath(path))
    digest = _cached_digest(real)
    if real.parent.name == "blobs" and _SHA256.match(real.name) and digest != real.name:
        logger.warning("%s (the hub cache's copy of %s) no longer holds what its name says (sha256 %s…): it was "
                       "rewritten in place; its content is what this model now is. Delete the model from the "
                       "Hugging Face cache and download it again to restore it", real, Path(path).name,
                       digest[:12])
    return digest


def _cached_digest(real: Path) -> str:
    st = os.stat(real)
    key = [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
    entry = _cache_file(real)
    try:
        cached = json.loads(entry.read_text())
        if cached.get("path") == str(real) and cached.get("stat") == key and _SHA256.match(cached.get("sha256", "")):
            return cached["sha256"]
    except (OSError, ValueError, AttributeError):
        pass
    h = hashlib.sha256()
    with open(real, "rb") as f:
        for block in iter(lambda: f.read(_HASH_BLOCK), b""):
            h.update(block)
    digest = h.hexdigest()
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(entry, json.dumps({"path": str(real), "stat": key, "sha256": digest}))
    except OSError as e:  # a read-only cache only costs the next start-up another read
        logger.debug("cannot cache the digest of %s in %s: %s", real, entry, e)
    return digest


def _cache_file(real: Path) -> Path:
    return cache_dir() / "fingerprints" / (hashlib.sha1(str(real).encode()).hexdigest()[:24] + ".json")
