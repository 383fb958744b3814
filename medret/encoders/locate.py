"""Where an encoder's weights are loaded from, and one quick question to the hub before it is asked for them.

A model is looked for, in this order (the first place that holds it wins):

1. an explicit local path (``query_model=`` / ``doc_model=``, CLI ``--query-model`` / ``--doc-model``);
2. ``<models dir>/<model id>`` (e.g. ``<models dir>/ncbi/MedCPT-Query-Encoder``), where the models dir is the
   retriever's ``models_dir`` (CLI ``--models-dir``), else ``$MEDRET_MODELS_DIR``, and then medret's default
   ``$MEDRET_CACHE/models`` (``~/.cache/medret/models``): where ``medret models download`` puts models. A folder
   whose download did not finish (its record says so) is passed over;
3. the model id itself: the Hugging Face cache, used without any network request when it holds the whole model,
   else the hub.

Before the hub is asked (case 3 with an incomplete cache), :func:`hub_problem` makes one short request; when the hub
cannot be reached the loader fails at once with :func:`offline_fix` instead of spending a minute in the hub
library's retries (five per file, each logged).
"""
from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

from medret import optional
from medret.errors import ConfigError
from medret.fetch.env import default_cache_dir as cache_dir
from medret.fetch.env import hf_cache_dir, hf_endpoint

logger = logging.getLogger(__name__)

MODELS_DIR_ENV = "MEDRET_MODELS_DIR"
#: written by `medret models download` inside each model folder: revision, files, and whether it is complete
DOWNLOAD_RECORD = ".medret-download.json"
#: seconds the one reachability request may take (connect + answer)
HUB_PROBE_TIMEOUT = 5.0
_MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$")


def default_models_dir() -> Path:
    return cache_dir() / "models"


def models_root(models_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where models are downloaded to: ``models_dir``, else ``$MEDRET_MODELS_DIR``, else the default folder."""
    if models_dir is not None and str(models_dir).strip():
        return Path(models_dir).expanduser()
    env = os.environ.get(MODELS_DIR_ENV)
    if env and env.strip():
        return Path(env).expanduser()
    return default_models_dir()


def search_dirs(models_dir: str | os.PathLike[str] | None = None) -> list[Path]:
    """The folders searched for ``<model id>/``, in order: the configured one (or the environment's), the default."""
    out = [models_root(models_dir), default_models_dir()]
    return [p for i, p in enumerate(out) if p not in out[:i]]


def is_model_id(name: str) -> bool:
    """True for a hub model id (``name`` or ``org/name``), False for anything else (a path, a URL)."""
    return isinstance(name, str) and bool(_MODEL_ID.match(name)) and ".." not in name


def check_model_id(model: str) -> str:
    """``model`` if it is a hub model id (``org/name``) safe to use as a relative path; ConfigError otherwise."""
    if not is_model_id(model):
        raise ConfigError(f"model={model!r} is not a Hugging Face model id such as 'ncbi/MedCPT-Query-Encoder'")
    return model


def folder_state(folder: Path) -> str:
    """'complete' (a model folder: config.json, and a finished download if medret downloaded it), 'incomplete'
    (medret's download of it has not finished) or 'absent'."""
    if not (folder / "config.json").is_file():
        return "incomplete" if (folder / DOWNLOAD_RECORD).is_file() else "absent"
    record = folder / DOWNLOAD_RECORD
    if record.is_file():
        try:
            if not json.loads(record.read_text()).get("complete"):
                return "incomplete"
        except (OSError, ValueError):
            return "incomplete"
    return "complete"


def model_location(model: str, explicit: str | os.PathLike[str] | None = None,
                   models_dir: str | os.PathLike[str] | None = None) -> str:
    """Where ``model`` is loaded from (see the module docstring): a folder, or the model id itself."""
    if explicit is not None:
        return str(Path(explicit).expanduser()) if Path(explicit).expanduser().is_dir() else str(explicit)
    if is_model_id(model):
        for root in search_dirs(models_dir):
            cand = root / model
            state = folder_state(cand)
            if state == "complete":
                return str(cand)
            if state == "incomplete":
                logger.warning("%s: the download of %s did not finish; run `medret models download` again "
                               "(looking elsewhere for now)", cand, model)
    return model


def model_dim(location: str) -> int | None:
    """The width of a model's vectors (``hidden_size`` in its config.json, what :class:`medret.encoders.hf.Encoder`
    reads) from a model folder or the Hugging Face cache, without loading it or asking the network; None if unknown."""
    path: Path | None = Path(location).expanduser() / "config.json"
    if not (path is not None and path.is_file()) and is_model_id(location):
        try:
            hub = optional.hub()
            cached = hub.try_to_load_from_cache(location, "config.json", cache_dir=str(hf_cache_dir()))
            path = Path(cached) if isinstance(cached, str) else None
        except Exception:  # noqa: BLE001 - no hub library or an unusual cache: the width stays unknown
            path = None
    try:
        dim = json.loads(path.read_text()).get("hidden_size") if path is not None and path.is_file() else None
    except (OSError, ValueError, AttributeError):
        return None
    return dim if isinstance(dim, int) and not isinstance(dim, bool) and dim > 0 else None


def is_local(location: str) -> bool:
    return Path(location).expanduser().is_dir()


def hub_problem(model: str | None = None, timeout: float = HUB_PROBE_TIMEOUT) -> str | None:
    """None when the hub answers one request within ``timeout`` seconds; otherwise what went wrong.

    One HEAD request through huggingface_hub's own HTTP session (its proxies, certificates and headers), without
    retries. Any answer below 500 means the hub is there (even 401/404: the loader then reports the hub's own
    error); a connection error, a timeout or a 5xx answer (a proxy that refuses, a hub that is down) means it is not.
    ``session.head(url, timeout=...)`` is the same call on huggingface_hub 0.x (requests) and 1.x (httpx).
    """
    try:
        get_session = optional.load("huggingface_hub.utils", "download").get_session
    except ImportError:
        return "huggingface_hub is not installed"
    endpoint = hf_endpoint()
    url = f"{endpoint}/api/models/{model}" if model and is_model_id(model) else f"{endpoint}/api/models"
    try:
        resp = get_session().head(url, timeout=timeout)
    except Exception as e:  # noqa: BLE001 - every transport error means the same: not reachable
        return f"{endpoint} cannot be reached ({type(e).__name__}: {str(e).strip() or 'no answer'})"
    if resp.status_code >= 500:
        return f"{endpoint} answered HTTP {resp.status_code}"
    return None


def offline_fix(retriever: str) -> str:
    """The offline fix, named once, for every message that needs it."""
    return (f"on a node with internet (a login node) run `medret models download {retriever} --dir DIR`, then give "
            f"--models-dir DIR (or {MODELS_DIR_ENV}=DIR; models_dir= in Python or the retriever block) where the "
            "model is loaded; or, with the model in the Hugging Face cache (same HF_HOME), set HF_HUB_OFFLINE=1")
