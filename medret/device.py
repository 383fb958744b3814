"""Choose the torch device for encoders and exact search, and never fall back to CPU silently.

Conventions:

* ``device`` is a torch device string: ``"cpu"``, ``"cuda"`` (= ``"cuda:0"``), ``"cuda:N"`` (N is the
  *logical* index among the visible GPUs, as torch counts them) or ``"auto"``/None (first visible GPU,
  else CPU).
* ``gpu_id`` is a *physical* GPU number, as ``nvidia-smi`` shows it. When ``CUDA_VISIBLE_DEVICES``
  narrows the visible GPUs (``"2,3"``), physical GPU 3 is ``cuda:1``; a GPU not in the list is an error.
* If CUDA is requested but no GPU is visible (a Ray task without ``num_gpus`` runs with
  ``CUDA_VISIBLE_DEVICES=''``), :class:`medret.errors.DeviceError` says so and how to fix it, unless
  ``allow_cpu_fallback`` is true: then a warning is logged and ``"cpu"`` returned.

Probing is injectable (``env``, ``device_count``) so every case can be tested without a GPU.
"""
from __future__ import annotations

import logging
import os
import re
from typing import Callable, Mapping

from medret import optional
from medret.errors import ConfigError, DeviceError
from medret.validate import check_gpu_id

logger = logging.getLogger(__name__)

_HIDDEN_VALUES = {"", "-1", "nodevfiles", "none", "void"}

CPU_FIX = ("or run on CPU: device='cpu' (--device cpu), or allow the CPU fallback (allow_cpu_fallback=True / "
           "--allow-cpu-fallback)")
RAY_GPU = "in Ray, request a GPU for the task/actor (@ray.remote(num_gpus=1) or .options(num_gpus=1))"


def _torch_device_count() -> int:
    try:
        torch = optional.torch
    except ImportError:
        return 0
    try:
        return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0
    except Exception:  # pragma: no cover - broken driver
        logger.debug("torch.cuda probing failed", exc_info=True)
        return 0


def _torch_build() -> tuple[str, str]:
    """(kind, note): kind ``missing`` (no PyTorch), ``cpu`` (a build without CUDA) or ``cuda``."""
    try:
        torch = optional.torch
    except ImportError:
        return "missing", "PyTorch is not installed"
    if getattr(torch.version, "cuda", None) is None:
        return "cpu", f"this PyTorch build ({torch.__version__}) has no CUDA support"
    return "cuda", f"PyTorch {torch.__version__} (CUDA {torch.version.cuda}) finds no usable GPU or driver"


def _torch_build_note() -> str:
    return _torch_build()[1]


def cuda_fix(cvd_raw: str | None) -> str:
    """How to get a GPU when CUDA was asked for and none is usable, leading with the fix for the real state:
    CUDA_VISIBLE_DEVICES hiding every GPU, PyTorch missing or built without CUDA, or a CUDA build that finds no GPU
    (no driver, a node without GPUs, CUDA_VISIBLE_DEVICES naming GPUs that are not there); then the CPU way out."""
    visible = parse_visible_devices(cvd_raw)
    kind, _ = _torch_build()
    steps = []
    if visible == []:
        steps.append(f"unset CUDA_VISIBLE_DEVICES (now {cvd_raw!r}) or set it to the GPUs this process may use (e.g. "
                     f"CUDA_VISIBLE_DEVICES=0); {RAY_GPU}")
    if kind == "missing":
        steps.append("install PyTorch with CUDA support: pip install 'medret[dense]' (on a GPU node pick the CUDA "
                     "build matching the driver that nvidia-smi shows)")
    elif kind == "cpu":
        steps.append("install a CUDA build of PyTorch (this one is CPU-only): e.g. pip install torch --index-url "
                     "https://download.pytorch.org/whl/cu124, the CUDA version matching the driver that nvidia-smi "
                     "shows")
    elif visible is None:
        steps.append("run on a node with a GPU and a working driver (nvidia-smi must list it; on SLURM request one "
                     f"with --gres=gpu:1); {RAY_GPU}")
    elif visible:
        steps.append(f"check that the GPUs CUDA_VISIBLE_DEVICES={cvd_raw!r} names exist on this node (nvidia-smi) and "
                     "the driver works, or unset CUDA_VISIBLE_DEVICES")
    return "To fix: " + "; then ".join(steps) + "; " + CPU_FIX + "."


def parse_visible_devices(value: str | None) -> list[str] | None:
    """``CUDA_VISIBLE_DEVICES`` as a list of entries; None when unset; [] when it hides every GPU."""
    if value is None:
        return None
    v = value.strip()
    if v.lower() in _HIDDEN_VALUES:
        return []
    entries = [e.strip() for e in v.split(",")]
    out: list[str] = []
    for e in entries:
        # CUDA stops at the first invalid entry (-1 or empty ends the list).
        if e == "" or e == "-1":
            break
        out.append(e)
    return out


def resolve_device(
    device: str | None = None,
    gpu_id: int | None = None,
    allow_cpu_fallback: bool = False,
    *,
    env: Mapping[str, str] | None = None,
    device_count: Callable[[], int] | None = None,
) -> str:
    """Return the device string (``"cpu"`` or ``"cuda:N"``) to use; see the module docstring."""
    env = os.environ if env is None else env
    count_fn = _torch_device_count if device_count is None else device_count
    dev = _normalize_device_arg(device)

    if gpu_id is not None:
        check_gpu_id("gpu_id", gpu_id)
        if dev == "cpu":
            raise ConfigError(
                f"gpu_id={gpu_id!r} contradicts device='cpu': drop gpu_id to run on CPU, or drop device='cpu'"
            )

    if dev == "cpu":
        logger.info("device: cpu (requested)")
        return "cpu"

    cvd_raw = env.get("CUDA_VISIBLE_DEVICES")
    visible = parse_visible_devices(cvd_raw)
    count = count_fn()

    if dev == "auto" and gpu_id is None:
        if count > 0:
            logger.info("device: cuda:0 (auto; %d GPU(s) visible, CUDA_VISIBLE_DEVICES=%r)", count, cvd_raw)
            return "cuda:0"
        if visible == []:
            logger.warning(
                "device: cpu (auto) because CUDA_VISIBLE_DEVICES=%r hides every GPU (Ray does this for tasks "
                "and actors without num_gpus); pass device='cuda' to make a missing GPU an error",
                cvd_raw,
            )
        else:
            logger.info("device: cpu (auto; no CUDA device visible: %s)", _torch_build_note())
        return "cpu"

    # CUDA was requested, by device='cuda[:N]' and/or gpu_id.
    wanted = f"gpu_id={gpu_id}" if gpu_id is not None else f"device={device!r}"
    if count <= 0:
        if visible == []:
            reason = (
                f"CUDA_VISIBLE_DEVICES={cvd_raw!r} hides every GPU from this process "
                "(Ray sets it so for tasks and actors that did not request num_gpus)"
            )
        elif visible is not None:
            reason = f"no CUDA device is visible (CUDA_VISIBLE_DEVICES={cvd_raw!r}; {_torch_build_note()})"
        else:
            reason = f"no CUDA device is visible (CUDA_VISIBLE_DEVICES is unset; {_torch_build_note()})"
        return _fallback_or_raise(f"CUDA was requested ({wanted}) but {reason}.", allow_cpu_fallback, cvd_raw)

    if gpu_id is not None:
        logical = _physical_to_logical(gpu_id, visible, cvd_raw, count)
        if dev not in ("auto", "cuda") and dev != f"cuda:{logical}":
            raise ConfigError(
                f"device={device!r} contradicts gpu_id={gpu_id} (physical GPU {gpu_id} is cuda:{logical} "
                f"with CUDA_VISIBLE_DEVICES={cvd_raw!r}): give only one of them"
            )
        logger.info(
            "device: cuda:%d (physical GPU %d; CUDA_VISIBLE_DEVICES=%r, %d visible)",
            logical, gpu_id, cvd_raw, count,
        )
        return f"cuda:{logical}"

    index = 0 if dev in ("auto", "cuda") else int(dev.split(":", 1)[1])
    if index >= count:
        raise DeviceError(
            f"device={device!r} is not available: only {count} GPU(s) are visible to this process "
            f"(cuda:0..cuda:{count - 1}; CUDA_VISIBLE_DEVICES={cvd_raw!r}). Logical indices count only the "
            "visible GPUs; use gpu_id= for a physical GPU number."
        )
    logger.info("device: cuda:%d (requested %r; CUDA_VISIBLE_DEVICES=%r, %d visible)", index, device, cvd_raw, count)
    return f"cuda:{index}"


def _normalize_device_arg(device: str | None) -> str:
    if device is None:
        return "auto"
    if not isinstance(device, str):
        raise ConfigError(f"device={device!r} is invalid: give 'cpu', 'cuda', 'cuda:N' or 'auto'")
    d = device.strip().lower()
    if d in ("", "auto"):
        return "auto"
    if d in ("cpu", "cuda"):
        return d
    if re.fullmatch(r"cuda:\d+", d):
        return d
    if re.fullmatch(r"\d+", d):
        raise ConfigError(
            f"device={device!r} is invalid: write 'cuda:{d}' for a logical GPU index or pass gpu_id={d} "
            "for a physical GPU number"
        )
    raise ConfigError(f"device={device!r} is invalid: give 'cpu', 'cuda', 'cuda:N' or 'auto'")


def _physical_to_logical(gpu_id: int, visible: list[str] | None, cvd_raw: str | None, count: int) -> int:
    if visible is None:
        if gpu_id >= count:
            raise DeviceError(
                f"gpu_id={gpu_id} is not available: this machine shows {count} GPU(s) (0..{count - 1}). "
                "Give a physical GPU number that exists."
            )
        return gpu_id
    if not all(re.fullmatch(r"\d+", e) for e in visible):
        if str(gpu_id) in visible:
            return visible.index(str(gpu_id))
        raise DeviceError(
            f"gpu_id={gpu_id} cannot be mapped: CUDA_VISIBLE_DEVICES={cvd_raw!r} names GPUs by UUID/MIG id, not by "
            "number. Pass device='cuda:N' with N the position in that list instead."
        )
    ids = [int(e) for e in visible]
    if gpu_id not in ids:
        listing = ", ".join(f"physical {p} = cuda:{i}" for i, p in enumerate(ids[:count]))
        raise DeviceError(
            f"gpu_id={gpu_id} is not visible to this process: CUDA_VISIBLE_DEVICES={cvd_raw!r} exposes only "
            f"{listing}. gpu_id is a physical GPU number: pass one of {ids[:count]}, or device='cuda:N' "
            "for a logical index (in Ray, the GPU assigned to the task is cuda:0)."
        )
    logical = ids.index(gpu_id)
    if logical >= count:
        raise DeviceError(
            f"gpu_id={gpu_id} is listed in CUDA_VISIBLE_DEVICES={cvd_raw!r} but torch sees only {count} GPU(s); "
            "check that the GPU exists (nvidia-smi)"
        )
    return logical


def _fallback_or_raise(message: str, allow_cpu_fallback: bool, cvd_raw: str | None) -> str:
    if allow_cpu_fallback:
        logger.warning("%s Falling back to CPU because allow_cpu_fallback=True (much slower).", message)
        return "cpu"
    raise DeviceError(f"{message} {cuda_fix(cvd_raw)}")
