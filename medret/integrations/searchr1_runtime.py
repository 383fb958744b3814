"""What a patched Search-R1 calls: build a retriever from the trainer's ``retriever`` block and search with it.

``medret searchr1 patch`` makes ``LLMGenerationManager._batch_search`` call :func:`batch_search` with the whole
``retriever`` config block whenever that block asks for a non-HTTP backend. The block takes Search-R1's keys
(``url``, ``topk``) plus medret's (see :class:`medret.config.RetrieverConfig`):

=================  ==========================================================================================
``backend``        ``http`` (Search-R1's own HTTP call, the default), ``local`` (in this process), ``ray``
                   (a Ray actor that holds the index; give it a GPU with ``ray_num_gpus=1``)
``local``          ``true`` is an alias for ``backend=local`` (the seed recipe's ``+retriever.local=true``)
``corpus_name``    PubMed, StatPearls, Textbooks, Wikipedia, MedText, MedCorp, sample, or a folder
``retriever_name`` BM25, MedCPT, Contriever, SPECTER, e5, RRF-2, RRF-4, ...
``db_dir``         folder holding MedRAG's corpora
``gpu_id``         a *physical* GPU number (as nvidia-smi numbers it)
``device``         ``cpu``, ``cuda`` or ``cuda:N``
``topk``           passages per query (Search-R1's own key)
=================  ==========================================================================================

GPU placement. Search-R1 searches from ``main_task``, a Ray task that reserves no GPU, so depending on the Ray
version it runs with ``CUDA_VISIBLE_DEVICES`` blanked (accelerator override on zero GPUs) or untouched; a task
with GPUs sees only its own. With ``backend=local`` and a ``gpu_id``,
:func:`place_local_gpu` adds that physical GPU back to ``CUDA_VISIBLE_DEVICES`` *before CUDA is initialised in
this process*, checks that CUDA really sees it, and logs the decision. If CUDA was already initialised (the
driver reads the variable only once) it raises :class:`~medret.errors.DeviceError` and says to use
``backend=ray`` (an actor with ``num_gpus=1``) instead. It never silently runs on CPU.
"""
from __future__ import annotations

import http.client
import logging
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, Mapping, MutableMapping, Sequence

import orjson

from medret import optional
from medret.api import Retriever, retriever_for
from medret.config import HttpOptions, RequestOptions, RetrieverConfig, TransportOptions, validate_retriever_block
from medret.config import backend_of as config_backend_of
from medret.device import parse_visible_devices
from medret.errors import ConfigError, DeviceError, TransportError
from medret.options import parse_value, plain_dict
from medret.transports.http import HttpTransport, answer_shape_problem, is_timeout
from medret.validate import check_gpu_id

logger = logging.getLogger(__name__)

DEFAULT_HTTP_TIMEOUT = 60.0


# ------------------------------------------------------------------------------------------------------------
# the `retriever` block


def backend_of(block: Mapping[str, Any]) -> str:
    """The backend a block asks for (:func:`medret.config.backend_of`; Search-R1's default is its own HTTP call)."""
    return config_backend_of(block, default="http", prefix="retriever.")


def topk_of(block: Mapping[str, Any], topk: int | None = None) -> int:
    """``topk`` (else the block's, else its declared default, :data:`medret.config.DEFAULT_TOPK`), as declared by
    :class:`medret.config.RequestOptions`: a positive whole number."""
    value = topk if topk is not None else block.get("topk", RequestOptions.topk)
    return int(parse_value(RequestOptions, "topk", value, label="retriever.topk"))


def validate_block(block: Mapping[str, Any] | Any) -> None:
    """Check the trainer's whole ``retriever`` block now (the patched ``GenerationConfig`` calls this when the
    trainer builds its generation manager): an unknown ``+retriever.*`` key is named with the closest valid one,
    a value of the wrong kind is named with its option. None (an unpatched trainer) has nothing to check."""
    if block is None:
        return
    data = plain_dict(block)
    validate_retriever_block(data)
    if backend_of(data) != "http":
        retriever_config(data)  # the settings that need each other (as the first search would build them)


def retriever_config(block: Mapping[str, Any] | Any) -> RetrieverConfig:
    """The :class:`RetrieverConfig` a non-HTTP ``retriever`` block describes (Search-R1 keys accepted)."""
    data = plain_dict(block)
    backend = backend_of(data)
    if backend == "http":
        raise ConfigError("retriever.backend='http' is served by Search-R1's own HTTP call (or http_batch_search); "
                          "set retriever.backend=local or ray to search through medret in-process")
    data.pop("local", None)
    data["backend"] = backend
    data.pop("url", None)  # Search-R1's default block always carries a url; only http uses it
    if backend == "ray":
        data = _ray_gpu_request(data)
    try:
        return RetrieverConfig.from_mapping(data)
    except ConfigError as e:
        raise ConfigError(f"retriever block: {e}") from None


def _ray_gpu_request(data: dict[str, Any]) -> dict[str, Any]:
    """With backend=ray a GPU is requested from Ray (num_gpus); Ray, not gpu_id, decides which one."""
    wants_gpu = data.get("gpu_id") is not None or str(data.get("device") or "").startswith("cuda")
    if wants_gpu and not data.get("ray_num_gpus"):
        data["ray_num_gpus"] = 1
        _log_once(logging.INFO, "retriever.backend=ray with a GPU requested: the retriever actor asks Ray for "
                  "num_gpus=1")
    if data.get("gpu_id") is not None:
        _log_once(logging.WARNING, f"retriever.gpu_id={data['gpu_id']} is not used with backend=ray: Ray assigns "
                  "the actor's GPU (it is cuda:0 inside the actor); pin GPUs with Ray resources instead")
        data["gpu_id"] = None
        if not data.get("device"):
            data["device"] = "cuda"
    return data


_LOGGED: set[str] = set()


def _log_once(level: int, message: str) -> None:
    """Log a configuration note once per process (the block is re-read at every search step)."""
    if message not in _LOGGED:
        _LOGGED.add(message)
        logger.log(level, message)


# ------------------------------------------------------------------------------------------------------------
# GPU placement for backend=local inside a Ray task


@dataclass(frozen=True)
class CudaProbe:
    """How to ask the process about CUDA; injectable so every case is testable without a GPU."""

    initialized: Callable[[], bool]
    device_count: Callable[[], int]


def _torch_initialized() -> bool:
    torch = sys.modules.get("torch")
    if torch is None:  # nothing imported torch yet, so torch has not initialised CUDA
        return False
    try:
        return bool(torch.cuda.is_initialized())
    except Exception:  # noqa: BLE001  # pragma: no cover - a broken driver raises many types
        return False


def _driver_device_count() -> int:
    """Devices the CUDA runtime sees. Unlike torch.cuda.device_count() (NVML, re-reads the environment), this is
    fixed at the first CUDA call of the process, so it shows whether a new CUDA_VISIBLE_DEVICES took effect."""
    try:
        torch = optional.torch()
    except ImportError:
        return 0
    getter = getattr(torch._C, "_cuda_getDeviceCount", None)
    try:
        return int(getter()) if getter is not None else int(torch.cuda.device_count())
    except Exception:  # noqa: BLE001  # pragma: no cover - a CPU-only build or a broken driver
        return 0


TORCH_PROBE = CudaProbe(initialized=_torch_initialized, device_count=_driver_device_count)


@dataclass(frozen=True)
class Placement:
    """What :func:`place_local_gpu` decided."""

    changed: bool
    before: str | None
    after: str | None
    message: str


def place_local_gpu(gpu_id: int, env: MutableMapping[str, str] | None = None,
                    probe: CudaProbe | None = None) -> Placement:
    """Make physical GPU ``gpu_id`` visible to this process, or raise DeviceError saying why it cannot be.

    * ``CUDA_VISIBLE_DEVICES`` unset, or listing ``gpu_id``: nothing to do (``resolve_device`` maps the id).
    * blanked (Ray task without ``num_gpus``) or narrowed to other GPUs: ``gpu_id`` is appended, which keeps the
      logical numbers of the GPUs already visible, as long as CUDA is not initialised yet; afterwards CUDA must
      see exactly one more device, otherwise the change is undone and DeviceError raised.
    """
    env = os.environ if env is None else env
    probe = TORCH_PROBE if probe is None else probe
    check_gpu_id("retriever.gpu_id", gpu_id)
    if gpu_id is None:
        raise ConfigError("retriever.gpu_id=None is invalid: give a physical GPU number such as 0 or 3")
    before = env.get("CUDA_VISIBLE_DEVICES")
    visible = parse_visible_devices(before)
    if visible is None or str(gpu_id) in visible:
        msg = (f"GPU placement: physical GPU {gpu_id} is visible (CUDA_VISIBLE_DEVICES={before!r}); "
               "nothing to change")
        logger.debug(msg)
        return Placement(False, before, before, msg)
    if any(not entry.isdigit() for entry in visible):
        raise DeviceError(
            f"retriever.gpu_id={gpu_id} cannot be added to CUDA_VISIBLE_DEVICES={before!r}, which names GPUs by "
            "UUID/MIG id: set retriever.device='cuda:N' for a GPU in that list, or use retriever.backend=ray "
            "(a Ray actor with num_gpus=1)")
    where = (f"CUDA_VISIBLE_DEVICES={before!r} hides every GPU (Ray does this for tasks that reserved no GPU)"
             if not visible
             else f"CUDA_VISIBLE_DEVICES={before!r} does not include it")
    if probe.initialized():
        raise DeviceError(
            f"retriever.gpu_id={gpu_id} is not visible here: {where}, and CUDA is already initialised in this "
            "process, so the GPU cannot be made visible any more. Use +retriever.backend=ray (the retriever runs "
            "in a Ray actor with num_gpus=1), or start the search before anything in this process uses CUDA.")
    after = ",".join([*visible, str(gpu_id)])
    env["CUDA_VISIBLE_DEVICES"] = after
    seen = probe.device_count()
    if seen != len(visible) + 1:
        if before is None:  # pragma: no cover - excluded above
            env.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            env["CUDA_VISIBLE_DEVICES"] = before
        raise DeviceError(
            f"retriever.gpu_id={gpu_id}: {where}; medret set CUDA_VISIBLE_DEVICES={after!r} but CUDA then sees "
            f"{seen} device(s) instead of {len(visible) + 1}: either CUDA was already probed in this process "
            "(e.g. torch.cuda.is_available()) or physical GPU "
            f"{gpu_id} does not exist (check nvidia-smi). CUDA_VISIBLE_DEVICES was restored to {before!r}. "
            "Use +retriever.backend=ray (a Ray actor with num_gpus=1) instead.")
    msg = (f"GPU placement: {where}; CUDA was not initialised yet, so medret set CUDA_VISIBLE_DEVICES={after!r} "
           f"and the retriever uses physical GPU {gpu_id} as cuda:{len(visible)}. The GPU is shared with whatever "
           "else runs on it; use backend=ray for a GPU that Ray accounts for.")
    logger.warning(msg)
    return Placement(True, before, after, msg)


# ------------------------------------------------------------------------------------------------------------
# searching


def get_searchr1_retriever(block: Mapping[str, Any] | Any, env: MutableMapping[str, str] | None = None,
                           probe: CudaProbe | None = None) -> Retriever:
    """The process-wide retriever a non-HTTP ``retriever`` block describes (placed on its GPU first)."""
    config = retriever_config(block)
    if config.backend == "local" and config.gpu_id is not None and str(config.device or "").lower() != "cpu":
        place_local_gpu(config.gpu_id, env=env, probe=probe)
    return retriever_for(config)


def http_batch_search(url: str, queries: Sequence[str], topk: int, timeout: float = DEFAULT_HTTP_TIMEOUT) -> dict:
    """POST exactly what Search-R1 posts ({"queries", "topk", "return_scores": true}) to ``url`` as it is, once (as
    Search-R1's own ``requests.post``), through medret's HTTP transport, and return the JSON.

    ``timeout`` is a deadline for the whole exchange (connect, send, the entire answer), not per socket read."""
    if not url:
        raise ConfigError("retriever.url is empty: give the /retrieve address of the server, e.g. "
                          "http://127.0.0.1:8000/retrieve")
    transport = HttpTransport(HttpOptions(url=url, timeout=timeout, retries=0))
    payload = orjson.dumps({"queries": list(queries), "topk": topk, "return_scores": True})
    try:
        response = transport.send_once("POST", None, payload)
    except (OSError, http.client.HTTPException, ValueError) as e:
        if is_timeout(e):
            raise TransportError(f"retriever.url={url!r} sent no complete answer within timeout={timeout:g}s "
                                 f"({type(e).__name__}: {e}); is the server overloaded or stuck?") from None
        raise TransportError(f"retriever.url={url!r} could not be reached ({type(e).__name__}: {e}); is the "
                             "server running (medret serve / retrieval_launch.sh) and is the address right?") from None
    if response.status_code != 200:
        raise TransportError(f"retriever.url={url!r} answered HTTP {response.status_code}: {response.text[:300]}")
    try:
        data = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        raise TransportError(f"retriever.url={url!r} did not answer JSON: {response.text[:200]!r}") from None
    problem = answer_shape_problem(data, len(queries), topk, True)
    if problem:
        raise TransportError(f"retriever.url={url!r} answered in an unexpected shape ({problem}): expected "
                             '{"result": [[{"document": {"contents": ...}, "score": s}, ...], ...]}')
    return data


def batch_search(block: Mapping[str, Any] | Any, queries: Sequence[str], topk: int | None = None) -> dict:
    """Search-R1's ``_batch_search`` through medret: ``{"result": [[{"document": {...}, "score": s}, ...], ...]}``.

    ``block`` is the trainer's ``retriever`` config block; ``topk`` defaults to the block's ``topk`` (3).
    """
    data = plain_dict(block)
    k = topk_of(data, topk)
    queries = list(queries)
    if backend_of(data) == "http":
        timeout = float(parse_value(TransportOptions, "timeout", data.get("timeout", DEFAULT_HTTP_TIMEOUT),
                                    label="retriever.timeout"))
        return http_batch_search(str(data.get("url") or ""), queries, k, timeout=timeout)
    if not queries:
        return {"result": []}
    return get_searchr1_retriever(data).retrieve(queries, topk=k, return_scores=True)
