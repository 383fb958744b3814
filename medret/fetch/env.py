"""Where things are: the hub endpoint and offline mode as the environment says *now* (huggingface_hub reads them
only at import), the Hugging Face cache, and medret's own cache folder."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from medret import optional
from medret.errors import CorpusError

CACHE_ENV = "MEDRET_CACHE"


def default_cache_dir() -> Path:
    """medret's cache (the shipped sample corpus's artifacts, downloaded models, digests): $MEDRET_CACHE, else
    ~/.cache/medret."""
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "medret"))


def hf_endpoint() -> str:
    """The hub endpoint: ``HF_ENDPOINT`` as set now (huggingface_hub itself reads it only at import)."""
    env = os.environ.get("HF_ENDPOINT")
    if env:
        return env.rstrip("/")
    constants = optional.load("huggingface_hub.constants", "download")

    return str(constants.ENDPOINT).rstrip("/")


def hf_offline() -> bool:
    env = os.environ.get("HF_HUB_OFFLINE")
    if env is not None:
        return env.strip().upper() in {"1", "ON", "YES", "TRUE"}
    constants = optional.load("huggingface_hub.constants", "download")

    return bool(constants.HF_HUB_OFFLINE)


def hf_cache_dir() -> Path:
    """The hub cache as the environment says now: ``HF_HUB_CACHE``, else ``HF_HOME/hub``, else the library default."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    constants = optional.load("huggingface_hub.constants", "download")

    return Path(constants.HF_HUB_CACHE)


def require_hub() -> Any:
    """huggingface_hub (with its ``utils``), or CorpusError saying to install the ``download`` extra."""
    try:
        hub = optional.hub()
        optional.load("huggingface_hub.utils", "download")  # a lazy attribute of the package: load it for .utils
        return hub
    except ImportError:
        raise CorpusError("huggingface_hub is not installed: downloading corpora, embeddings and models needs it; "
                          "run `pip install 'medret[download]'`") from None
