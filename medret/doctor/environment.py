"""Environment checks: Python, packages, PyTorch / CUDA, the GPUs and the configured device."""
from __future__ import annotations

import logging
import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from medret import optional
from medret.device import cuda_fix, parse_visible_devices, resolve_device
from medret.doctor.checks import FAIL, OK, WARN, Check, gb
from medret.encoders.specs import known_names
from medret.errors import ConfigError, DeviceError, MedretError, MissingDependencyError
from medret.retrievers import retriever_parts
from medret.transports import transport_class
from medret.version import __version__

logger = logging.getLogger(__name__)

MIN_PYTHON = (3, 9)  # Search-R1's trainer environment; pyproject's requires-python


def check_python() -> list[Check]:
    v = sys.version_info
    title = f"Python {platform.python_version()} ({sys.executable})"
    if (v.major, v.minor) < MIN_PYTHON:
        return [Check("python", FAIL, title, "medret needs Python >= 3.9",
                      "use a Python 3.9+ environment (e.g. `conda create -n medret python=3.11`)")]
    return [Check("python", OK, title)]


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def needs(config: Any) -> dict[str, str]:
    """The optional packages this configuration uses, with the extra that installs them."""
    if config is None:
        return {}
    try:
        parts = retriever_parts(config.retriever_name)
    except MedretError:
        parts = ()
    return transport_class(config.backend).needs(dense=any(p != "bm25" for p in parts))


def check_packages(config: Any) -> list[Check]:
    core = ["numpy", "bm25s", "PyStemmer", "orjson", "tqdm", "PyYAML"]
    optional_packages = ["torch", "transformers", "faiss-cpu", "faiss-gpu", "huggingface_hub", "starlette", "uvicorn",
                         "httpx",
                "ray"]
    missing_core = [d for d in core if _version(d) is None]
    wanted = needs(config)
    if "faiss-cpu" in wanted and _version("faiss-gpu") is not None:
        wanted.pop("faiss-cpu")
    missing_needed = [d for d in wanted if _version(d) is None]
    shown = ", ".join(f"{d} {_version(d)}" for d in core + optional_packages if _version(d) is not None)
    if missing_core or missing_needed:
        extras = sorted({wanted[d] for d in missing_needed})
        fix = "pip install 'medret" + (f"[{','.join(extras)}]" if extras else "") + "'"
        return [Check("packages", FAIL, f"missing packages: {', '.join(missing_core + missing_needed)}", shown, fix)]
    return [Check("packages", OK, f"packages: medret {__version__} ({Path(__file__).parents[1]})", shown)]


def check_torch(config: Any) -> list[Check]:
    try:
        torch = optional.torch()
    except MissingDependencyError:
        dense = "torch" in needs(config)
        return [Check("torch", FAIL if dense else OK, "PyTorch not installed",
                      f"needed only for dense retrievers ({', '.join(known_names())})",
                      "pip install 'medret[dense]'" if dense else "")]
    cuda = getattr(torch.version, "cuda", None)
    try:
        available = bool(torch.cuda.is_available())
        count = int(torch.cuda.device_count()) if available else 0
    except Exception as e:  # noqa: BLE001 - a broken driver raises many things
        return [Check("torch", FAIL, f"torch {torch.__version__}: CUDA probing failed", str(e),
                      "check the NVIDIA driver (`nvidia-smi`) and that torch's CUDA version suits it")]
    if cuda is None:
        return [Check("torch", OK, f"torch {torch.__version__} (CPU-only build)",
                      "dense search runs on CPU; for GPUs install a CUDA build of torch")]
    return [Check("torch", OK, f"torch {torch.__version__}, CUDA {cuda}, {count} GPU(s) usable",
                  f"cuda available: {available}")]


def _visible_gpus() -> list[dict[str, Any]]:
    try:
        torch = optional.torch()
        if not torch.cuda.is_available():
            return []
        out = []
        for i in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(i)
            out.append({"index": i, "name": torch.cuda.get_device_name(i), "free": int(free), "total": int(total)})
        return out
    except Exception:
        logger.debug("GPU listing failed", exc_info=True)
        return []


def check_gpus(config: Any) -> list[Check]:
    raw = os.environ.get("CUDA_VISIBLE_DEVICES")
    visible = parse_visible_devices(raw)
    gpus = _visible_gpus()
    listing = "; ".join(f"cuda:{g['index']} {g['name']} ({gb(g['free'])} free of {gb(g['total'])})" for g in gpus)
    cvd = f"CUDA_VISIBLE_DEVICES={raw!r}" if raw is not None else "CUDA_VISIBLE_DEVICES unset"
    device = None
    if config is not None:
        try:
            device = resolve_device(config.device, config.gpu_id, config.allow_cpu_fallback)
        except (DeviceError, ConfigError) as e:
            return [Check("gpu", FAIL, f"{len(gpus)} GPU(s) visible, {cvd}: the configured device is not usable",
                          str(e), cuda_fix(raw))]
    detail = listing or "no GPU visible"
    if visible == []:
        return [Check("gpu", WARN, f"no GPU visible: {cvd} hides every GPU",
                      "Ray sets it so for tasks and actors without num_gpus; retrieval will run on CPU"
                      + (f" (device {device})" if device else ""), cuda_fix(raw))]
    title = f"{len(gpus)} GPU(s) visible ({cvd})" + (f"; retrieval device {device}" if device else "")
    return [Check("gpu", OK, title, detail)]
