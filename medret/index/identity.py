"""An index belongs to its encoder: where a dense index lives and how its manifest names the encoder.

**Location.** ``<source>/medret/index/<model>-<key>/``, where ``<model>`` is the document model's folder name (or
hub id, ``/`` written ``--``) in lower case and ``<key>`` is the first 12 hex digits of the sha256 over the
*configured* encoder: the document model's resolved folder (or hub id) and the recipe that shapes document
vectors (pooling, normalisation, document prefix, document token limit, document text format, metric). Two
encoders on one corpus therefore build and keep two folders side by side. The retriever's display name is not part
of it (``--retriever e5 --doc-model DIR`` and ``--retriever DIR --like e5`` are one encoder), nor are the query-side
settings (query model, prefix, token limit: they do not change stored vectors), nor the dtype (an index encoded in
fp16 on a GPU serves fp32 CPU queries: the vectors agree to ~1e-3).

**Manifest.** ``manifest.json["encoder"]`` records the key, the recipe, the document model's identity (name,
``local``/``hub``, resolved folder, hub revision, per-file sha256 and the fingerprint:
:mod:`medret.encoders.fingerprint`), the query model's name and where it was loaded from, and the dtype the
documents were encoded in. Opening an index compares the recipe and the fingerprint with the encoder now
configured; a model changed in place (new weights, tokenizer or config in the same folder, or a new hub revision
with other files) is refused with the ``--rebuild`` hint, naming both.

**Copies.** When the keyed folder is missing, an index built from the same files (same fingerprint, same recipe)
at another path is used: a model staged to node-local disk per job finds the index built from the shared copy.

**Older layout.** Indexes of medret's first layout (``<source>/medret/index/<retriever name>/``) recorded the
retriever's hub name, not the weights actually used, so they cannot be trusted to match: they are never opened
silently. Small corpora (auto-built) get a new index and a warning; larger ones a one-line message offering
``medret index build ... --adopt-legacy`` (moves the folder into the new layout, recording the encoder configured
now, with no re-encoding) or ``--rebuild``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medret.encoders.fingerprint import ModelIdentity, model_identity
from medret.encoders.locate import model_dim, model_location
from medret.encoders.specs import EncoderSpec
from medret.errors import IndexBuildError, MedretError
from medret.index.manifest import MANIFEST
from medret.storage.atomic import atomic_write_text

logger = logging.getLogger(__name__)

IDENTITY_VERSION = 1
#: the spec fields that shape document vectors (with the document model, they make the index key)
RECIPE_KEYS = ("pooling", "normalize", "doc_prefix", "doc_max_len", "doc_format", "metric")
MANIFEST_KEY = "encoder"


@dataclass(frozen=True)
class EncoderIdentity:
    """The document encoder an index is built with: the spec's recipe and the document model's identity."""

    spec: EncoderSpec
    doc: ModelIdentity
    query_location: str | None = None

    @property
    def recipe(self) -> dict[str, Any]:
        return {k: getattr(self.spec, k) for k in RECIPE_KEYS}

    @property
    def key(self) -> str:
        blob = json.dumps({"model": self.doc.location, **self.recipe}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    @property
    def folder_name(self) -> str:
        base = self.doc.location.rstrip("/\\")
        base = os.path.basename(base) if self.doc.source == "local" else base.replace("/", "--")
        slug = re.sub(r"[^a-z0-9._-]+", "-", base.lower()).strip("-.")[:60] or "model"
        return f"{slug}-{self.key}"

    def to_manifest(self, encode_dtype: str | None = None) -> dict[str, Any]:
        return {"version": IDENTITY_VERSION, "key": self.key, "recipe": self.recipe, "doc_model": self.doc.to_dict(),
                "query_model": {"name": self.spec.query_model, "location": self.query_location},
                "encode_dtype": encode_dtype}

    def describe(self) -> str:
        return f"{self.doc.describe()} with {recipe_text(self.recipe)}"


def recipe_text(r: dict[str, Any]) -> str:
    return (f"{r.get('pooling')} pooling, {'normalized' if r.get('normalize') else 'not normalized'}, "
            f"doc prefix {r.get('doc_prefix')!r}, {r.get('doc_max_len')} doc tokens, {r.get('doc_format')} text, "
            f"{r.get('metric')}")


def encoder_identity(spec: EncoderSpec, doc_model_path: str | os.PathLike[str] | None = None,
                     query_model_path: str | os.PathLike[str] | None = None,
                     models_dir: str | os.PathLike[str] | None = None) -> EncoderIdentity:
    """The identity of ``spec``'s document encoder, loaded from ``doc_model_path`` (else where
    :func:`medret.encoders.locate.model_location` finds ``spec.doc_model``: ``models_dir``, the hub cache)."""
    doc_loc = model_location(spec.doc_model, doc_model_path, models_dir)
    q_loc = model_location(spec.query_model, query_model_path, models_dir)
    # found in the models folder (not given as a path): the hub model itself, wherever its files are
    hub_copy = doc_model_path is None and doc_loc != spec.doc_model
    return EncoderIdentity(spec, model_identity(spec.doc_model, doc_loc, hub_copy=hub_copy), q_loc)


def keyed_dir(source: Any, identity: EncoderIdentity) -> Path:
    """Where ``source``'s index for ``identity`` lives (``<source>/medret/index/<model>-<key>``)."""
    return Path(source.artifact_dir) / "index" / identity.folder_name


def legacy_dir(source: Any, spec: EncoderSpec) -> Path:
    """Where medret's first layout put the index of ``spec`` (``<source>/medret/index/<retriever name>``)."""
    return Path(source.artifact_dir) / "index" / spec.slug.replace("/", "--")


def recorded(manifest: dict[str, Any] | None) -> dict[str, Any] | None:
    """The manifest's encoder entry, or None for an index of the first layout (or no manifest)."""
    entry = (manifest or {}).get(MANIFEST_KEY)
    return entry if isinstance(entry, dict) and isinstance(entry.get("doc_model"), dict) else None


def mismatch(manifest: dict[str, Any], identity: EncoderIdentity) -> str | None:
    """Why the index of ``manifest`` does not belong to ``identity`` (None when it does)."""
    entry = recorded(manifest)
    if entry is None:
        return ("it was built by an older medret that did not record which model weights it used "
                f"(retriever {manifest.get('retriever')!r}, model {manifest.get('doc_model')!r})")
    built_doc = entry["doc_model"]
    built = _describe_recorded(entry)
    if entry.get("recipe") != identity.recipe:
        return f"it was built with {built}; the configured encoder is {identity.describe()}"
    now_fp, built_fp = identity.doc.fingerprint, built_doc.get("fingerprint")
    if now_fp is None or built_fp is None:
        if built_doc.get("location") != identity.doc.location:
            return f"it was built with {built}; the configured encoder is {identity.describe()}"
        logger.warning("cannot verify the weights of %s against the index built with %s (a fingerprint is missing: "
                       "the model's files were not on the machine); using it", identity.doc.location, built)
        return None
    if now_fp != built_fp:
        changed = sorted(n for n in set(built_doc.get("files", {})) | set(identity.doc.files)
                         if built_doc.get("files", {}).get(n) != identity.doc.files.get(n))
        return (f"the model changed since it was built ({', '.join(changed) or 'files'} differ): built with "
                f"{built}; the configured encoder is {identity.describe()}")
    return None


def _describe_recorded(entry: dict[str, Any]) -> str:
    d = entry["doc_model"]
    ident = ModelIdentity(name=d.get("name", "?"), source=d.get("source", "?"), location=d.get("location", "?"),
                          revision=d.get("revision"), fingerprint=d.get("fingerprint"))
    return f"{ident.describe()} with {recipe_text(entry.get('recipe') or {})}"


def check(manifest: dict[str, Any], identity: EncoderIdentity, index_dir: Path, hint: str) -> None:
    """Refuse an index whose manifest names another encoder than ``identity``, naming both and the fix."""
    why = mismatch(manifest, identity)
    if why is not None:
        raise IndexBuildError(f"the dense index at {index_dir} does not belong to this encoder: {why}. "
                              f"Rebuild it with {hint}")


def find_copy(source: Any, identity: EncoderIdentity) -> Path | None:
    """Another complete index of ``source`` built from the same files with the same recipe (a staged copy of the
    model at another path), if any."""
    if identity.doc.fingerprint is None:
        return None
    root = Path(source.artifact_dir) / "index"
    for m in sorted(root.glob("*/manifest.json")) if root.is_dir() else []:
        try:
            manifest = json.loads(m.read_text())
        except (OSError, ValueError):
            continue
        entry = recorded(manifest)
        if (entry and manifest.get("complete") and entry.get("recipe") == identity.recipe
                and entry["doc_model"].get("fingerprint") == identity.doc.fingerprint):
            return m.parent
    return None


def adopt_legacy(legacy: Path, target: Path, identity: EncoderIdentity, store: Any) -> None:
    """Move an index of the first layout to ``target``, recording ``identity`` (the user vouches that it was built
    with this encoder). Its corpus and recipe must match; nothing is re-encoded."""
    manifest = _legacy_manifest(legacy)
    if manifest["store_checksum"] != store.checksum or manifest["count"] != len(store):
        raise IndexBuildError(f"the index at {legacy} was built from other chunk files than the corpus now holds: "
                              "it cannot be adopted; build a new one (without --adopt-legacy)")
    try:
        built = EncoderSpec.from_dict(manifest["spec"])
    except (MedretError, TypeError, ValueError, KeyError) as e:
        raise _damaged_legacy(legacy, "spec", manifest["spec"], f"an encoder recipe ({type(e).__name__}: {e})") \
            from None
    width = model_dim(identity.doc.location)
    if width is not None and width != manifest["dim"]:
        raise IndexBuildError(f"the index at {legacy} holds {manifest['dim']}-dimensional vectors but the configured "
                              f"model {identity.doc.describe()} makes {width}-dimensional ones: it was built with "
                              "another model and cannot be adopted; build a new one (without --adopt-legacy)")
    if {k: getattr(built, k) for k in RECIPE_KEYS} != identity.recipe:
        raise IndexBuildError(f"the index at {legacy} was built with another recipe "
                              f"({recipe_text({k: getattr(built, k, None) for k in RECIPE_KEYS})}) than the "
                              f"configured one ({recipe_text(identity.recipe)}): build a new one")
    if target.exists():
        raise IndexBuildError(f"{target} already exists: remove it or build without --adopt-legacy")
    manifest[MANIFEST_KEY] = dict(identity.to_manifest(None), adopted_from=str(legacy))
    atomic_write_text(legacy / MANIFEST, json.dumps(manifest, indent=2))
    os.replace(legacy, target)
    logger.info("adopted %s as %s (%s)", legacy, target, identity.describe())


def _damaged_legacy(legacy: Path, key: str, value: Any, expected: str) -> IndexBuildError:
    return IndexBuildError(f"the index at {legacy} cannot be adopted: its {MANIFEST} is damaged ({key}={value!r:.80}; "
                           f"expected {expected}); build a new one (without --adopt-legacy, with --rebuild)")


def _legacy_manifest(legacy: Path) -> dict[str, Any]:
    """The manifest of a first-layout index, its fields checked before any is used (clear errors, nothing moved)."""
    path = legacy / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise IndexBuildError(f"no index to adopt at {legacy} ({MANIFEST} is missing): build a new one (without "
                              "--adopt-legacy)") from None
    except (OSError, ValueError) as e:
        raise IndexBuildError(f"the index at {legacy} cannot be adopted: {path} cannot be read ({e}); build a new one "
                              "(without --adopt-legacy, with --rebuild)") from None
    if not isinstance(manifest, dict):
        raise _damaged_legacy(legacy, "manifest", manifest, "a JSON object")
    if manifest.get("complete") is not True:
        raise IndexBuildError(f"the index at {legacy} is not complete (complete={manifest.get('complete')!r} in its "
                              f"{MANIFEST}): it cannot be adopted; build a new one (without --adopt-legacy, with "
                              "--rebuild)")
    for key, expected in (("count", "the number of vectors, a whole number"),
                          ("dim", "the vectors' width, a whole number")):
        v = manifest.get(key)
        if isinstance(v, bool) or not isinstance(v, int) or v < (0 if key == "count" else 1):
            raise _damaged_legacy(legacy, key, v, expected)
    if not isinstance(manifest.get("store_checksum"), str):
        raise _damaged_legacy(legacy, "store_checksum", manifest.get("store_checksum"), "the corpus identity, a string")
    if not isinstance(manifest.get("spec"), dict):
        raise _damaged_legacy(legacy, "spec", manifest.get("spec"), "the encoder recipe, a JSON object")
    return manifest
