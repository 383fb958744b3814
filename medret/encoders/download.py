"""`medret models download RETRIEVER`: every model a retriever needs, ahead of time, for compute nodes without
internet.

Each model goes to ``<models dir>/<model id>/`` (e.g. ``~/.cache/medret/models/ncbi/MedCPT-Query-Encoder``), where
the encoder loader looks first (:mod:`medret.encoders.locate`). The file list (sizes, LFS sha256, git blob ids)
comes from the hub's API at one commit; each file is fetched from the hub's ``resolve`` URL with medret's own
resumable, verified downloader (:func:`medret.fetch.transfer.fetch_url`, the one the corpus download uses):
``.<file>.part`` with HTTP ``Range`` resume, size and checksum checked, renamed when correct. The folder's record
(``.medret-download.json``) says ``complete`` only after every file is in place, so a half-downloaded model is
never loaded. Every request (the listing too) is bounded by ``--timeout`` (:class:`medret.fetch.settings.FetchOptions`).

Files taken: the top-level ``*.json`` (config, tokenizer, weight index), ``*.txt`` (vocabularies, merges) and
``*.model`` (sentencepiece) files, and the weights ``from_pretrained`` loads: ``*.safetensors`` when the repository
has them, else ``pytorch_model*.bin``. Other frameworks' weights (TensorFlow, Flax, ONNX, OpenVINO, ...) and
sub-folders are left out.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from medret import compat
from medret.encoders.locate import (
    DOWNLOAD_RECORD,
    MODELS_DIR_ENV,
    check_model_id,
    models_root,
)
from medret.encoders.specs import get_reranker_spec, get_spec
from medret.errors import ConfigError, ModelNotFoundError
from medret.fetch import files as ff
from medret.fetch.env import hf_endpoint, hf_offline, require_hub
from medret.fetch.hub import list_repo_files
from medret.fetch.settings import FetchOptions
from medret.fetch.transfer import fetch_url
from medret.retrievers import retriever_parts
from medret.storage.atomic import atomic_write_text

logger = logging.getLogger(__name__)

_SMALL_SUFFIXES = (".json", ".txt", ".model")


@dataclass(frozen=True)
class ModelNeed:
    """One model a retriever loads: which part of the retriever, which role, which hub id."""

    retriever: str  # the part's display name, e.g. "MedCPT"
    role: str  # "query", "doc", or "query+doc" when one model does both
    model_id: str


def required_models(retriever: str) -> list[ModelNeed]:
    """The hub models ``retriever`` loads (BM25 and local model folders: none), each once, in order; a named
    cross-encoder (``MedCPT-Cross-Encoder``) is its one model."""
    cross = get_reranker_spec(retriever)
    if cross is not None:
        return [ModelNeed(cross.name, "reranker", check_model_id(cross.model))]
    out: list[ModelNeed] = []
    seen: set[str] = set()
    for part in retriever_parts(retriever):
        if part == "bm25":
            continue
        spec = get_spec(part)
        if spec is None:  # a local model folder: nothing to download
            continue
        roles = [("query+doc", spec.query_model)] if spec.shares_model else [("query", spec.query_model),
                                                                                ("doc", spec.doc_model)]
        for role, model in roles:
            if model not in seen:
                seen.add(model)
                out.append(ModelNeed(spec.name, role, check_model_id(model)))
    return out


def select_files(files: list[ff.RemoteFile]) -> list[ff.RemoteFile]:
    """The files ``from_pretrained`` needs (see the module docstring)."""
    top = [f for f in files if "/" not in f.path]
    small = [f for f in top if f.path.endswith(_SMALL_SUFFIXES)]
    weights = [f for f in top if f.path.endswith(".safetensors")]
    if not weights:
        weights = [f for f in top if f.path.startswith("pytorch_model") and f.path.endswith(".bin")]
    return sorted(small + weights, key=lambda f: f.path)


@dataclass
class ModelPlan:
    """What a download of one model will do."""

    model_id: str
    revision: str
    dest: Path  # <models dir>/<model id>
    files: list[ff.FileState] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(f.remote.size for f in self.files)

    @property
    def bytes_to_fetch(self) -> int:
        return sum(f.bytes_to_fetch for f in self.files)

    @property
    def to_fetch(self) -> list[ff.FileState]:
        return [f for f in self.files if f.needs_fetch]


@dataclass
class ModelResult:
    model_id: str
    dest: Path
    revision: str
    fetched: list[str] = field(default_factory=list)
    already_ok: list[str] = field(default_factory=list)
    bytes_fetched: int = 0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["dest"] = str(self.dest)
        return d


def _read_record(dest: Path) -> dict:
    try:
        return json.loads((dest / DOWNLOAD_RECORD).read_text())
    except (OSError, ValueError):
        return {}


def _write_record(dest: Path, plan: ModelPlan, files: dict, complete: bool) -> None:
    atomic_write_text(dest / DOWNLOAD_RECORD, json.dumps(
        {"repo_id": plan.model_id, "revision": plan.revision, "complete": complete, "files": files},
        indent=1, sort_keys=True))


def _refuse_offline() -> None:
    if hf_offline():
        raise ModelNotFoundError("HF_HUB_OFFLINE is set, so models cannot be downloaded: run `medret models download` "
                                 "where the hub is reachable (a login node) with HF_HUB_OFFLINE unset")


def plan_model(model_id: str, root: str | os.PathLike[str], *, token: str | bool | None = None,
               endpoint: str | None = None, options: FetchOptions | None = None) -> ModelPlan:
    """List ``model_id``'s files on the hub (one commit of ``main``) and compare them with ``root/<model id>``."""
    require_hub()
    _refuse_offline()
    check_model_id(model_id)
    endpoint = endpoint or hf_endpoint()
    fix = ("downloading needs the hub: run this on a node with internet (a login node; HF_ENDPOINT for a mirror, "
           f"HF_TOKEN for a gated model), then give --models-dir DIR (or {MODELS_DIR_ENV}=DIR) where the models are "
           "loaded")
    # one request per listing page, no retries: an unreachable hub fails at once with one line
    commit, listed = list_repo_files("model", model_id, None, recursive=False, token=token, endpoint=endpoint,
                                     options=options, fix=fix, error=ModelNotFoundError)
    files = select_files(listed)
    if not any(f.path.endswith((".safetensors", ".bin")) for f in files):
        raise ModelNotFoundError(f"model {model_id} at {commit} on {endpoint} has no model.safetensors or "
                                 "pytorch_model.bin at its top level: it cannot be loaded with from_pretrained")
    dest = Path(root).expanduser() / model_id
    record = _read_record(dest)
    known = record.get("files", {}) if record.get("repo_id") == model_id else {}
    plan = ModelPlan(model_id, commit, dest)
    for rf in files:
        plan.files.append(ff.inspect_local(rf, dest / rf.path, known))
    return plan


def download_models(plans: list[ModelPlan], *, token: str | bool | None = None, progress: bool = True,
                    max_retries: int = 5, endpoint: str | None = None,
                    options: FetchOptions | None = None) -> list[ModelResult]:
    """Fetch what each plan marks as needed; the record says ``complete`` only when every file is verified."""
    hub = require_hub()
    endpoint = endpoint or hf_endpoint()
    headers = hub.utils.build_hf_headers(token=token, library_name="medret")
    session = compat.hub_session()
    fix = ("check the network (HF_ENDPOINT for a mirror), or download on a node with internet and give --models-dir "
           f"DIR (or {MODELS_DIR_ENV}=DIR) where the models are loaded")
    results = []
    with ff.total_bar(progress, sum(p.bytes_to_fetch for p in plans), "total") as overall:
        for plan in plans:
            res = ModelResult(plan.model_id, plan.dest, plan.revision)
            record = _read_record(plan.dest)
            known = record.get("files", {}) if record.get("repo_id") == plan.model_id else {}
            plan.dest.mkdir(parents=True, exist_ok=True)
            if plan.to_fetch or not record.get("complete"):
                _write_record(plan.dest, plan, known, complete=False)
            for st in plan.files:
                if not st.needs_fetch:
                    res.already_ok.append(st.remote.name)
                    known[st.remote.name] = ff.manifest_entry(st.local, st.remote)
                    continue
                if st.status in ("size", "checksum", "pointer"):
                    logger.warning("%s differs from the hub (%s); downloading it again", st.local, st.status)
                url = hub.hf_hub_url(plan.model_id, st.remote.path, revision=plan.revision, endpoint=endpoint)
                with ff.file_bar(progress, st.remote.size, st.remote.name) as fbar:
                    fetch_url(url, st.local, expected_size=st.remote.size, headers=headers,
                              sha256=st.remote.sha256, blob_id=st.remote.blob_id, max_retries=max_retries,
                              file_bar=fbar, overall_bar=overall, session=session, options=options, fix=fix)
                res.fetched.append(st.remote.name)
                res.bytes_fetched += st.bytes_to_fetch
                known[st.remote.name] = ff.manifest_entry(st.local, st.remote)
                _write_record(plan.dest, plan, known, complete=False)
            _write_record(plan.dest, plan, known, complete=True)
            logger.info("%s: %d files fetched, %d already complete -> %s", plan.model_id, len(res.fetched),
                        len(res.already_ok), plan.dest)
            results.append(res)
    return results


def download(retriever: str, models_dir: str | os.PathLike[str] | None = None, *, token: str | bool | None = None,
             progress: bool = True, max_retries: int = 5, free_fn: Callable[[Path], int] | None = None,
             options: FetchOptions | None = None) -> tuple[Path, list[ModelResult]]:
    """Download (or complete, or repair) every model ``retriever`` needs into ``models_dir`` (see
    :func:`medret.encoders.locate.models_root` for the default); returns the folder and one result per model."""
    if max_retries < 0:
        raise ConfigError(f"--retries={max_retries} is invalid: give 0 or more")
    root = models_root(models_dir)
    needs = required_models(retriever)
    if not needs:
        return root, []
    plans = [plan_model(n.model_id, root, token=token, options=options) for n in needs]
    ff.check_disk(plans, free_fn=free_fn, flag="--dir")
    return root, download_models(plans, token=token, progress=progress, max_retries=max_retries, options=options)


def plans_for(retriever: str, models_dir: str | os.PathLike[str] | None = None, *,
              token: str | bool | None = None,
              options: FetchOptions | None = None) -> tuple[Path, list[tuple[ModelNeed, ModelPlan]]]:
    """What a download would do, model by model (for ``--list``)."""
    root = models_root(models_dir)
    return root, [(n, plan_model(n.model_id, root, token=token, options=options))
                  for n in required_models(retriever)]
