"""Is a model folder the model a named retriever's recipe names?

A folder found for a hub model id in the models dir (``$MEDRET_MODELS_DIR/ncbi/MedCPT-Query-Encoder``) is trusted
to be that model only as far as it can be checked without loading it:

* a folder `medret models download` wrote carries its record (``.medret-download.json``): the record must be for
  this model id, and every file it lists must still be there with its recorded size, and, when its size or mtime
  moved since, its recorded content (the hub's LFS sha256, or the git blob id of a small file);
* a folder copied there by hand has no record: its ``config.json`` must match the recipe's architecture
  (``model_type``), width (``hidden_size``) and vocabulary (``vocab_size``): MedRAG's and Search-R1's indexes, and
  ``corpus info`` / ``plan``, size everything for these.

A model given as an explicit folder (``--query-model DIR``, ``--retriever DIR``) is the user's choice and is not
held to a recipe; whatever the folders, the query and document encoders of one retriever must agree in width.
The loader (:class:`medret.encoders.hf.Encoder`) refuses a folder that fails; ``medret doctor`` reports it.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medret.encoders.fingerprint import file_digest
from medret.encoders.locate import DOWNLOAD_RECORD, is_local, model_dim
from medret.encoders.specs import REGISTRY
from medret.errors import ModelNotFoundError
from medret.fetch.files import git_blob_id


@dataclass(frozen=True)
class ModelShape:
    """What a hub model's config.json says (the published model's own values)."""

    model_type: str
    hidden_size: int
    vocab_size: int


#: the published config.json of each model a named retriever loads, from the registry (EncoderSpec.model_type,
#: dim = hidden_size, vocab_size)
RECIPE_MODELS: dict[str, ModelShape] = {
    model: ModelShape(spec.model_type, spec.dim, spec.vocab_size)
    for spec in REGISTRY.values() if spec.model_type and spec.dim and spec.vocab_size
    for model in (spec.query_model, spec.doc_model)
}


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def shape_differences(model_id: str, folder: str | os.PathLike[str]) -> list[str]:
    """What in ``folder/config.json`` differs from the published ``model_id`` (empty when nothing, or not known)."""
    want = RECIPE_MODELS.get(model_id)
    if want is None:
        return []
    config = _read_json(Path(folder) / "config.json")
    if not isinstance(config, dict):
        return ["config.json is missing or is not a JSON object"]
    out = []
    for key in ("model_type", "hidden_size", "vocab_size"):
        have, expected = config.get(key), getattr(want, key)
        if have != expected:
            out.append(f"{key} {have!r} where {model_id} has {expected!r}")
    return out


def download_differences(model_id: str, folder: str | os.PathLike[str]) -> list[str] | None:
    """None when ``folder`` has no download record; else what differs from what the download recorded."""
    root = Path(folder)
    record = _read_json(root / DOWNLOAD_RECORD)
    if record is None and not (root / DOWNLOAD_RECORD).exists():
        return None
    if not isinstance(record, dict) or not isinstance(record.get("files"), dict):
        return [f"its download record {DOWNLOAD_RECORD} is damaged"]
    if record.get("repo_id") != model_id:
        return [f"its download record is for {record.get('repo_id')!r}, not {model_id}"]
    out = []
    for name, entry in sorted(record["files"].items()):
        path = root / name
        if not isinstance(entry, dict) or "/" in name or name.startswith("."):
            out.append(f"the record's entry for {name!r} is damaged")
            continue
        try:
            st = path.stat()
        except OSError:
            out.append(f"{name} is missing")
            continue
        if st.st_size != entry.get("size"):
            out.append(f"{name} is {st.st_size:,} bytes where the download recorded {entry.get('size')!r}")
        elif entry.get("stat") != [st.st_size, st.st_mtime_ns]:  # touched since: its content decides
            if entry.get("sha256") and file_digest(path) != entry["sha256"]:
                out.append(f"{name} changed since the download (sha256 differs)")
            elif not entry.get("sha256") and entry.get("blob_id") and git_blob_id(path) != entry["blob_id"]:
                out.append(f"{name} changed since the download (content differs)")
    return out


def folder_problem(spec_name: str, role: str, model_id: str, folder: str | os.PathLike[str]) -> str | None:
    """Why ``folder`` (found for ``model_id`` in the models dir) is not the model retriever ``spec_name`` names;
    None when it is (or nothing is known to check it against)."""
    dl = download_differences(model_id, folder)
    if dl is not None:
        if not dl:
            return None
        what, how = "differs from what `medret models download` fetched", "; ".join(dl)
    else:
        diff = shape_differences(model_id, folder)
        if not diff:
            return None
        what, how = f"is not {model_id} (copied by hand, no download record)", "; ".join(diff)
    flag = "--query-model" if role == "query" else "--doc-model"
    return (f"the {'query' if role == 'query' else 'document'} model of retriever {spec_name!r} in {folder} {what}: "
            f"{how}. Fix: `medret models download {spec_name} --dir DIR` puts the published model there (or delete "
            f"{folder}); to use this model on purpose, give its folder with {flag} {folder}")


def folder_summary(model_id: str, folder: str | os.PathLike[str]) -> str:
    """What :func:`folder_problem` found right about ``folder``, for doctor's ok line."""
    record = _read_json(Path(folder) / DOWNLOAD_RECORD)
    if isinstance(record, dict) and record.get("repo_id") == model_id:
        return f"downloaded by medret at revision {str(record.get('revision'))[:12]}, files as recorded"
    want = RECIPE_MODELS.get(model_id)
    if want is None:
        return ""
    return (f"config.json as published for {model_id} ({want.model_type}, hidden_size {want.hidden_size}, "
            f"vocab_size {want.vocab_size})")


def require_recipe_model(spec_name: str, role: str, model_id: str, explicit: object, location: str) -> None:
    """ModelNotFoundError when ``location`` was found for ``model_id`` (``explicit`` is None: no folder given on
    purpose) and is not the model the recipe names (see :func:`folder_problem`)."""
    if explicit is None and is_local(location):
        problem = folder_problem(spec_name, role, model_id, location)
        if problem:
            raise ModelNotFoundError(problem)


def width_problem(spec_name: str, query_loc: str, doc_loc: str) -> str | None:
    """Why the query and document models of one retriever cannot work together (another width); None if they can."""
    if query_loc == doc_loc:
        return None
    q, d = model_dim(query_loc), model_dim(doc_loc)
    if q is None or d is None or q == d:
        return None
    return (f"the query and document encoders of retriever {spec_name!r} disagree in width: {query_loc} makes "
            f"{q}-d vectors, {doc_loc} {d}-d (hidden_size in their config.json); queries must land in the documents' "
            "space. Fix: give a query and a document model of the same width (--query-model / --doc-model)")
