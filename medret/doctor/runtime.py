"""Runtime checks: the encoders load and encode, a test query comes back well formed, the server answers."""
from __future__ import annotations

import http.client
import json
import time
from pathlib import Path
from typing import Any

from medret import optional
from medret.api import Retriever
from medret.config import DEFAULT_TOPK, HttpOptions
from medret.doctor.checks import FAIL, OK, WARN, Check
from medret.doctor.data import device_or_none
from medret.encoders.hf import Encoder
from medret.encoders.locate import hub_problem, model_location, offline_fix
from medret.encoders.recipe_check import folder_summary, require_recipe_model, width_problem
from medret.encoders.specs import like_choices, spec_for
from medret.errors import MedretError
from medret.fetch.env import hf_cache_dir, hf_offline
from medret.retrievers import dense_parts
from medret.transports import transport_class
from medret.transports.http import HttpTransport, base_url, read_address_file


def check_encoder(config: Any, ready: bool = True) -> list[Check]:
    """Every model of every dense part: where it would load from, that it loads and encodes. The query model's
    lines are ``encoder``; a separate document model's are ``doc-encoder`` (needed to build an index, so a missing
    one fails only while an index still has to be built)."""
    if transport_class(config.backend).remote:  # the server loads the models
        return []
    try:
        parts = list(dense_parts(config.retriever_name))
    except MedretError:
        return []
    if not parts:
        return [Check("encoder", OK, "encoder: none needed (BM25)")]
    out: list[Check] = []
    device = device_or_none(config) or "cpu"
    hub: list[str | None] = []  # the hub's reachability, asked at most once
    for part in parts:
        try:
            spec = spec_for(part, config)
        except MedretError as e:
            out.append(Check("encoder", FAIL, f"encoder {part!r} cannot be configured", str(e),
                             f"give --like {like_choices()} or --pooling cls|mean for a local model folder"))
            continue
        qloc = model_location(spec.query_model, config.query_model, config.models_dir)
        dloc = model_location(spec.doc_model, config.doc_model, config.models_dir)
        roles = [("query", spec.query_model, qloc)] + ([("doc", spec.doc_model, dloc)] if dloc != qloc else [])
        for role, model, loc in roles:
            out.append(_model_check(spec, role, model, loc, config, device, ready, hub, shared=len(roles) == 1))
        problem = width_problem(spec.name, qloc, dloc)
        if problem:
            out.append(Check("encoder", FAIL, f"encoder {spec.name}: the query and document models disagree in width",
                             problem, "give a query and a document model of the same width"))
    return out


def _model_check(spec: Any, role: str, model: str, loc: str, config: Any, device: str, ready: bool,
                 hub: list[str | None], shared: bool) -> Check:
    key = "encoder" if role == "query" else "doc-encoder"
    what = (f"encoder {spec.name}" if shared else
            f"{'query' if role == 'query' else 'document'} encoder {spec.name}")
    # a missing document model matters only while an index still has to be built
    miss = FAIL if role == "query" or not ready else WARN
    use = "" if role == "query" else " (needed to build or rebuild an index; searching a built one does not load it)"
    state = _model_availability(loc)
    if state == "missing-offline":
        return Check(key, miss, f"{what}: {loc} is not in the Hugging Face cache and HF_HUB_OFFLINE is set" + use,
                     f"cache: {_hf_cache()}", offline_fix(spec.name))
    if state == "missing-online":
        if not hub:
            hub.append(hub_problem(loc))
        if hub[0] is not None:
            return Check(key, miss, f"{what}: {loc} is not downloaded and the hub cannot be reached" + use,
                         hub[0], offline_fix(spec.name))
        return Check(key, WARN, f"{what}: {loc} is not downloaded yet" + use,
                     "it will be downloaded on first use; compute nodes without internet need it beforehand",
                     offline_fix(spec.name))
    explicit = config.query_model if role == "query" else config.doc_model
    try:  # a folder found for the recipe's model id must be that model (the loader refuses it otherwise)
        require_recipe_model(spec.name, role, model, explicit, loc)
    except MedretError as e:
        return Check(key, miss, f"{what}: {loc} is not the model the recipe names", str(e),
                     f"medret models download {spec.name} --dir DIR (then --models-dir DIR)")
    if explicit is None and state == "local folder":
        state = "; ".join(x for x in (state, folder_summary(model, loc)) if x)
    try:
        t0 = time.perf_counter()
        paths = {"query_model_path": loc} if role == "query" else {"doc_model_path": loc}
        enc = Encoder(spec, device, fp16=config.fp16, load_query=role == "query", **paths)
        if role == "query":
            vec = enc.encode_queries(["doctor test"], batch_size=1)
        else:
            vec = enc.encode_docs([{"title": "doctor", "content": "test"}], batch_size=1)
        dt = time.perf_counter() - t0
    except Exception as e:  # noqa: BLE001 - report whatever the loader raised
        return Check(key, FAIL, f"{what} does not load from {loc}", str(e),
                     "fix the model path, or download the model again: " + offline_fix(spec.name))
    return Check(key, OK, f"{what} loads from {loc} on {device} (dim {vec.shape[-1]}, {dt:.1f}s)", state)


def _hf_cache() -> str:
    try:
        return str(hf_cache_dir())
    except ImportError:
        return "(huggingface_hub not installed)"


def _model_availability(loc: str) -> str:
    """'local folder', 'in the Hugging Face cache', 'missing-offline' or 'missing-online'."""
    if Path(loc).expanduser().is_dir():
        return "local folder"
    try:
        cached = optional.hub().try_to_load_from_cache(loc, "config.json", cache_dir=str(hf_cache_dir()))
    except Exception:  # noqa: BLE001 - an invalid repo id is simply not cached
        cached = None
    if isinstance(cached, str):
        return "in the Hugging Face cache"
    return "missing-offline" if hf_offline() else "missing-online"


def check_search(config: Any, query: str, ready: bool) -> list[Check]:
    here = not transport_class(config.backend).remote  # the index is searched from this machine's files
    if here and not ready:
        return [Check("search", WARN, "test query skipped: the store or index is not ready (see above)")]
    cfg = config.replace(auto_build=False) if here else config
    try:
        t0 = time.perf_counter()
        r = Retriever(cfg)
        try:
            res = r.retrieve([query], topk=DEFAULT_TOPK, return_scores=True)
        finally:
            r.close()
        dt = time.perf_counter() - t0
    except Exception as e:  # noqa: BLE001 - report whatever the retriever raised
        return [Check("search", FAIL, f"test query failed ({type(e).__name__})", str(e),
                      "fix the lines above; then `medret search QUERY` with the same flags")]
    rows = res.get("result") if isinstance(res, dict) else None
    hits = rows[0] if isinstance(rows, list) and rows else []
    bad = [h for h in hits if not {"id", "contents"} <= set(h.get("document", {}))]  # what Search-R1 reads
    scores = [h.get("score") for h in hits]
    if not hits and not bad and str(config.retriever_name).strip().lower() == "bm25":
        return [Check("search", WARN, f"test query {query!r} matched no snippet (backend {config.backend})",
                      "BM25 returns only snippets that hold a query word (as pyserini / Search-R1)",
                      "run doctor with --query 'words your corpus holds' to test the search")]
    if not hits or bad or scores != sorted(scores, reverse=True):
        return [Check("search", FAIL, "test query returned no results or malformed ones", json.dumps(res)[:300],
                      "check the corpus and the index above")]
    top = hits[0]["document"]
    return [Check("search", OK, f"test query returned {len(hits)} results in {dt:.2f}s (backend {config.backend})",
                  f"top: {top['id']} | {str(top['contents'])[:80]}")]


def check_server(url: str | None, address_file: str | None, timeout: float = 5.0) -> list[Check]:
    if not url and not address_file:
        return []
    base = url
    if not base:
        try:
            base = read_address_file(str(address_file))
        except OSError as e:
            return [Check("server", FAIL, "retrieval server address unknown",
                          f"address file {address_file} cannot be read ({e.strerror})",
                          "start `medret serve ... --address-file FILE` and pass the same FILE")]
        if not base:
            return [Check("server", FAIL, "retrieval server address unknown",
                          f"address file {address_file} cannot be read (missing or empty)",
                          "start `medret serve ... --address-file FILE` and pass the same FILE")]
    transport = HttpTransport(HttpOptions(url=base, timeout=timeout, retries=0))
    base = base_url(base)
    try:  # `timeout` bounds the whole exchange: a server that trickles its answer cannot hold doctor
        resp = transport.send_once("GET", "/health")
    except (OSError, http.client.HTTPException, ValueError) as e:
        return [Check("server", FAIL, f"server {base} does not answer /health", f"{type(e).__name__}: {e}",
                      "start it (`medret serve --corpus ... --port ...`), or fix --url / --address-file; from a "
                      "compute node use the server node's hostname, not localhost")]
    status = resp.status_code
    body = resp.content[:4096].decode("utf-8", "replace")
    if status != 200:
        try:
            data = json.loads(body or "{}")
        except ValueError:
            data = {}
        state = data.get("status") if isinstance(data, dict) else None
        if status == 503 and state == "loading":
            return [Check("server", WARN, f"server {base} is still loading its index (/health: 503 loading)",
                          json.dumps(data), "wait until /health answers 200 (a job script waits for --address-file)")]
        return [Check("server", FAIL, f"server {base} answered /health with HTTP {status}"
                      + (f" ({state})" if state else ""), json.dumps(data) if data else body[:200],
                      "read the server's log; fix the error it names and restart `medret serve`")]
    return [Check("server", OK, f"server {base} answers /health (HTTP {status})", body[:200])]
