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

import logging
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, Mapping, MutableMapping, Sequence

from medret import optional
from medret.api import Retriever, retriever_for
from medret.config import RequestOptions, RetrieverConfig, TransportOptions, validate_retriever_block
from medret.config import backend_of as config_backend_of
from medret.device import parse_visible_devices
from medret.errors import ConfigError, DeviceError
from medret.options import parse_value, plain_dict
from medret.transports import transport_class
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
    if not transport_class(backend_of(data)).at_url:
        retriever_config(data)  # the settings that need each other (as the first search would build them)


def retriever_config(block: Mapping[str, Any] | Any) -> RetrieverConfig:
    """The :class:`RetrieverConfig` a non-HTTP ``retriever`` block describes (Search-R1 keys accepted)."""
    data = plain_dict(block)
    backend = backend_of(data)
    transport = transport_class(backend)
    if transport.at_url:
        raise ConfigError(f"retriever.backend={backend!r} is served by Search-R1's own HTTP call (or medret's, "
                          "batch_search: HttpTransport.from_url); set retriever.backend=local or ray to search "
                          "through medret in-process")
    data.pop("local", None)
    data["backend"] = backend
    data.pop("url", None)  # Search-R1's default block always carries a url; only a transport at_url uses it
    data = transport.trainer_block(data, _log_once)
    try:
        return RetrieverConfig.from_mapping(data)
    except ConfigError as e:
        raise ConfigError(f"retriever block: {e}") from None


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
        torch = optional.torch
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
    if (transport_class(config.backend).in_process and config.gpu_id is not None
            and str(config.device or "").lower() != "cpu"):
        place_local_gpu(config.gpu_id, env=env, probe=probe)
    return retriever_for(config)


def batch_search(block: Mapping[str, Any] | Any, queries: Sequence[str], topk: int | None = None) -> dict:
    """Search-R1's ``_batch_search`` through medret: ``{"result": [[{"document": {...}, "score": s}, ...], ...]}``.

    ``block`` is the trainer's ``retriever`` config block; ``topk`` defaults to the block's ``topk`` (3).
    """
    data = plain_dict(block)
    k = topk_of(data, topk)
    queries = list(queries)
    transport = transport_class(backend_of(data))
    if transport.at_url:  # Search-R1's own HTTP call: one POST to retriever.url as it is
        timeout = float(parse_value(TransportOptions, "timeout", data.get("timeout", DEFAULT_HTTP_TIMEOUT),
                                    label="retriever.timeout"))
        at = transport.from_url(str(data.get("url") or ""), timeout)
        try:
            return at.retrieve(queries, k, True)
        finally:
            at.close()
    if not queries:
        return {"result": []}
    return get_searchr1_retriever(data).retrieve(queries, topk=k, return_scores=True)
