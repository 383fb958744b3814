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
