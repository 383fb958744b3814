"""medret's optional dependencies, each imported in this one place.

Core medret (BM25, the document store, the HTTP client) needs none of them; a module that uses one calls the
attribute or function here when it needs it (``torch = optional.torch``), so importing medret never imports a
dependency that a configuration does not use, and a missing one is reported with the extra that installs it:

=================  =========================================  ==========================
attribute          for                                        extra
=================  =========================================  ==========================
torch              dense encoders, exact GPU search, shards    dense
transformers       the Hugging Face encoders                  dense
faiss              HNSW / IVF-PQ / faiss-file indexes         dense (faiss-cpu)
ray                the Ray backend                            ray
=================  =========================================  ==========================
function
=================  =========================================  ==========================
hub()              downloads (``medret corpus|models ...``)   download (huggingface_hub)
requests()         Search-R1's own HTTP path, hub sessions    client
pyarrow()          KARE parquet files (``kare prepare``)      kare
psutil()           benchmarks (memory)                        bench
pyplot()           benchmark plots                            bench
omegaconf()        hydra blocks (None when not installed)     (the trainer's)
=================  =========================================  ==========================

(veRL's ``BaseTool`` is imported by :mod:`medret.integrations.verl_tool` itself, which has a stand-in without it;
starlette and uvicorn by :mod:`medret.serve.app` and :mod:`medret.serve.server`, which only ``medret serve`` and
the serve tests import.)

``torch``, ``transformers``, ``faiss`` and ``ray`` are module attributes loaded on first use (PEP 562's module
``__getattr__``); to mypy they are the modules themselves (imported under ``TYPE_CHECKING``), so the tensor, index
and actor code that uses them is type-checked against torch's, numpy's and ray's own annotations (faiss ships
none: it stays ``Any``). A function returning a module cannot do that: mypy types its result ``ModuleType``.
"""
from __future__ import annotations

import importlib
import sys
from types import ModuleType
from typing import TYPE_CHECKING, Any

from medret.errors import MissingDependencyError


def load(module: str, extra: str, what: str = "") -> Any:
    """``module`` (a dotted name is fine), or :class:`MissingDependencyError` naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        top = module.split(".")[0]
        raise MissingDependencyError(
            f"{what or top} needs the Python package {top!r}, which is not installed ({e}): "
            f"pip install 'medret[{extra}]'") from e


if TYPE_CHECKING:
    import faiss as faiss
    import ray as ray
    import torch as torch
    import transformers as transformers
else:
    # attribute → (module, extra, what needs it)
    _LAZY = {"torch": ("torch", "dense", "dense retrieval"),
             "transformers": ("transformers", "dense", "dense retrieval"),
             "faiss": ("faiss", "dense", "this index type (faiss-cpu)"),
             "ray": ("ray", "ray", "backend='ray'")}

    def __getattr__(name: str) -> ModuleType:
        spec = _LAZY.get(name)
        if spec is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        return load(*spec)


def require(*names: str) -> None:
    """Load the named optional modules now (``require("torch")``): :class:`MissingDependencyError` naming the extra
    when one is missing, before any work is done."""
    module = sys.modules[__name__]
    for name in names:
        getattr(module, name)


def hub() -> Any:
    return load("huggingface_hub", "download", "downloading from the Hugging Face hub")


def requests() -> Any:
    return load("requests", "client")


def pyarrow() -> Any:
    """pyarrow with its parquet module loaded (``pyarrow.parquet``)."""
    load("pyarrow.parquet", "kare", "writing parquet files")
    return load("pyarrow", "kare", "writing parquet files")


def psutil() -> Any:
    return load("psutil", "bench", "benchmarks")


def pyplot() -> Any:
    load("matplotlib", "bench", "benchmark plots").use("Agg")
    return load("matplotlib.pyplot", "bench", "benchmark plots")


def omegaconf() -> ModuleType | None:
    """omegaconf when installed (hydra's configs are its objects; without it there are none to convert)."""
    try:
        return importlib.import_module("omegaconf")
    except ImportError:
        return None
