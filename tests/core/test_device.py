"""Device resolution with simulated CUDA_VISIBLE_DEVICES / GPU counts (no GPU needed)."""
from __future__ import annotations

import logging

import pytest

from medret.device import parse_visible_devices, resolve_device
from medret.errors import ConfigError, DeviceError


def probe(n: int):
    calls = []

    def count() -> int:
        calls.append(1)
        return n

    count.calls = calls  # type: ignore[attr-defined]
    return count


def test_cpu_requested_never_probes_cuda():
    c = probe(4)
    assert resolve_device("cpu", env={}, device_count=c) == "cpu"
    assert c.calls == []


def test_auto_picks_first_visible_gpu_or_cpu():
    assert resolve_device(None, env={}, device_count=probe(2)) == "cuda:0"
    assert resolve_device("auto", env={}, device_count=probe(0)) == "cpu"


def test_auto_with_hidden_gpus_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="medret.device"):
        assert resolve_device(None, env={"CUDA_VISIBLE_DEVICES": ""}, device_count=probe(0)) == "cpu"
    assert "hides every GPU" in caplog.text


def test_cuda_requested_with_empty_cvd_explains_ray_and_fixes():
    with pytest.raises(DeviceError) as e:
        resolve_device("cuda", env={"CUDA_VISIBLE_DEVICES": ""}, device_count=probe(0))
    msg = str(e.value)
    assert "CUDA was requested (device='cuda')" in msg
    assert "CUDA_VISIBLE_DEVICES=''" in msg and "hides every GPU" in msg
    assert "num_gpus" in msg and "allow_cpu_fallback" in msg and "unset CUDA_VISIBLE_DEVICES" in msg


def test_gpu_id_requested_without_any_gpu():
    with pytest.raises(DeviceError) as e:
        resolve_device(None, gpu_id=0, env={}, device_count=probe(0))
    assert "gpu_id=0" in str(e.value) and "CUDA_VISIBLE_DEVICES is unset" in str(e.value)


def test_cpu_fallback_allowed_logs_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="medret.device"):
        dev = resolve_device("cuda:0", allow_cpu_fallback=True, env={"CUDA_VISIBLE_DEVICES": "-1"},
                             device_count=probe(0))
    assert dev == "cpu"
    assert any(r.levelno == logging.WARNING and "Falling back to CPU" in r.getMessage() for r in caplog.records)


def test_physical_gpu_id_maps_through_narrowed_cvd(caplog):
    env = {"CUDA_VISIBLE_DEVICES": "2,3"}
    with caplog.at_level(logging.INFO, logger="medret.device"):
        assert resolve_device(None, gpu_id=3, env=env, device_count=probe(2)) == "cuda:1"
    assert "physical GPU 3" in caplog.text and "cuda:1" in caplog.text
    assert resolve_device("cuda", gpu_id=2, env=env, device_count=probe(2)) == "cuda:0"


def test_gpu_id_not_in_cvd_is_a_clear_error():
    with pytest.raises(DeviceError) as e:
        resolve_device(None, gpu_id=0, env={"CUDA_VISIBLE_DEVICES": "2,3"}, device_count=probe(2))
    msg = str(e.value)
    assert "gpu_id=0 is not visible" in msg and "physical 2 = cuda:0" in msg and "physical 3 = cuda:1" in msg


def test_gpu_id_without_cvd_is_the_physical_index():
    assert resolve_device(None, gpu_id=2, env={}, device_count=probe(4)) == "cuda:2"
    with pytest.raises(DeviceError, match="gpu_id=5 is not available"):
        resolve_device(None, gpu_id=5, env={}, device_count=probe(4))


def test_logical_device_index_checked_against_visible_count():
    env = {"CUDA_VISIBLE_DEVICES": "5"}
    assert resolve_device("cuda:0", env=env, device_count=probe(1)) == "cuda:0"
    with pytest.raises(DeviceError, match="only 1 GPU"):
        resolve_device("cuda:1", env=env, device_count=probe(1))


def test_contradicting_device_and_gpu_id():
    with pytest.raises(ConfigError, match="contradicts"):
        resolve_device("cpu", gpu_id=0, env={}, device_count=probe(1))
    with pytest.raises(ConfigError, match="contradicts"):
        resolve_device("cuda:0", gpu_id=3, env={"CUDA_VISIBLE_DEVICES": "2,3"}, device_count=probe(2))


@pytest.mark.parametrize("bad", ["gpu", "cuda:x", "1", "tpu:0"])
def test_bad_device_strings(bad):
    with pytest.raises(ConfigError, match="device="):
        resolve_device(bad, env={}, device_count=probe(1))


@pytest.mark.parametrize("bad", [-1, True, "0", 1.0])
def test_bad_gpu_ids(bad):
    with pytest.raises(ConfigError, match="gpu_id="):
        resolve_device(None, gpu_id=bad, env={}, device_count=probe(1))


def test_uuid_cvd_cannot_map_numbers():
    env = {"CUDA_VISIBLE_DEVICES": "GPU-1a2b,GPU-3c4d"}
    with pytest.raises(DeviceError, match="UUID"):
        resolve_device(None, gpu_id=1, env=env, device_count=probe(2))
    assert resolve_device("cuda:1", env=env, device_count=probe(2)) == "cuda:1"


def test_parse_visible_devices():
    assert parse_visible_devices(None) is None
    assert parse_visible_devices("") == []
    assert parse_visible_devices("NoDevFiles") == []
    assert parse_visible_devices("1,-1,2") == ["1"]
    assert parse_visible_devices(" 0 , 1 ") == ["0", "1"]


def test_real_probe_runs_on_this_machine():
    # Independent expectation: whatever torch reports here decides auto.
    import torch

    expected = "cuda:0" if torch.cuda.is_available() and torch.cuda.device_count() > 0 else "cpu"
    assert resolve_device(None) == expected


# ------------------------------------------------------------------ the fix follows the real state (issue 14)
# This environment's torch is a CPU-only build (no device_count injected below: the real probe runs).


def _cuda_error(monkeypatch, cvd: str | None) -> str:
    if cvd is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", cvd)
    with pytest.raises(DeviceError) as e:
        resolve_device("cuda")
    return str(e.value)


def test_cpu_only_torch_with_cvd_unset_leads_with_installing_a_cuda_build(monkeypatch):
    """It once led with "unset CUDA_VISIBLE_DEVICES" although it was unset."""
    import torch

    # a CPU-only build (dev's torch is one; the searchr1 environment's PyPI torch 2.4 is a CUDA build on a machine
    # without GPU, so the premise is set here)
    monkeypatch.setattr(torch.version, "cuda", None)
    msg = _cuda_error(monkeypatch, None)
    assert "CUDA_VISIBLE_DEVICES is unset" in msg and "has no CUDA support" in msg
    fix = msg.split("To fix: ", 1)[1]
    assert fix.startswith("install a CUDA build of PyTorch (this one is CPU-only)")
    assert "unset CUDA_VISIBLE_DEVICES" not in msg and "num_gpus" not in fix
    assert "--allow-cpu-fallback" in fix and "--device cpu" in fix


@pytest.mark.parametrize("cvd", ["", "-1"])
def test_cvd_hiding_every_gpu_leads_with_unsetting_it_then_the_build(monkeypatch, cvd):
    import torch

    monkeypatch.setattr(torch.version, "cuda", None)  # a CPU-only build, as dev's
    msg = _cuda_error(monkeypatch, cvd)
    assert f"CUDA_VISIBLE_DEVICES={cvd!r} hides every GPU" in msg
    fix = msg.split("To fix: ", 1)[1]
    assert fix.startswith(f"unset CUDA_VISIBLE_DEVICES (now {cvd!r})") and "num_gpus=1" in fix
    # with this CPU-only torch, that alone would not be enough: the build is named next
    assert fix.index("install a CUDA build of PyTorch") > fix.index("unset CUDA_VISIBLE_DEVICES")
    monkeypatch.setattr(torch.version, "cuda", "12.1")  # a CUDA build (searchr1's torch 2.4): no build to install
    fix = _cuda_error(monkeypatch, cvd).split("To fix: ", 1)[1]
    assert fix.startswith(f"unset CUDA_VISIBLE_DEVICES (now {cvd!r})") and "install a CUDA build" not in fix


def test_a_cuda_build_without_a_gpu_points_at_the_node_and_driver(monkeypatch):
    import torch

    monkeypatch.setattr(torch.version, "cuda", "12.4")  # a CUDA build on a node without GPU or driver
    fix = _cuda_error(monkeypatch, None).split("To fix: ", 1)[1]
    assert fix.startswith("run on a node with a GPU and a working driver") and "nvidia-smi" in fix
    assert "CUDA_VISIBLE_DEVICES" not in fix and "install a CUDA build" not in fix
    fix = _cuda_error(monkeypatch, "2,3").split("To fix: ", 1)[1]
    assert fix.startswith("check that the GPUs CUDA_VISIBLE_DEVICES='2,3' names exist on this node")
