"""searchr1_runtime: the retriever block, the batch search, and GPU placement in simulated Ray environments."""
from __future__ import annotations

import logging

import pytest

from medret.device import resolve_device
from medret.errors import ConfigError, DeviceError, TransportError
from medret.integrations import searchr1_runtime as rt

SEARCHR1_DEFAULT = {"url": "http://127.0.0.1:8000/retrieve", "topk": 3}  # Search-R1's ppo_trainer.yaml block


# ---------------------------------------------------------------- the retriever block


@pytest.mark.parametrize("block, backend", [
    ({}, "http"),
    (SEARCHR1_DEFAULT, "http"),
    ({**SEARCHR1_DEFAULT, "local": True}, "local"),
    ({**SEARCHR1_DEFAULT, "local": "true"}, "local"),
    ({**SEARCHR1_DEFAULT, "local": False}, "http"),
    ({"backend": "ray"}, "ray"),
    ({"backend": "LOCAL", "local": True}, "local"),
])
def test_backend_of(block, backend):
    assert rt.backend_of(block) == backend


def test_local_alias_contradicting_backend():
    with pytest.raises(ConfigError, match=r"retriever.local=True contradicts retriever.backend='http'"):
        rt.backend_of({"backend": "http", "local": True})


def test_retriever_config_from_searchr1_block():
    block = {**SEARCHR1_DEFAULT, "backend": "local", "corpus_name": "MedCorp", "retriever_name": "MedCPT",
             "db_dir": "/data/medrag", "gpu_id": "3", "topk": 5}
    cfg = rt.retriever_config(block)
    assert (cfg.backend, cfg.corpus_name, cfg.retriever_name, cfg.db_dir, cfg.gpu_id) == \
        ("local", "MedCorp", "MedCPT", "/data/medrag", 3)
    assert cfg.url is None  # Search-R1's url is for http only


def test_retriever_config_from_omegaconf_block():
    from omegaconf import OmegaConf

    block = OmegaConf.create({**SEARCHR1_DEFAULT, "local": True, "corpus_name": "sample"})
    assert rt.retriever_config(block).backend == "local"


def test_retriever_config_rejects_unknown_key_and_http():
    with pytest.raises(ConfigError, match="retreiver_name"):
        rt.retriever_config({"backend": "local", "retreiver_name": "BM25"})
    with pytest.raises(ConfigError, match="served by Search-R1's own HTTP call"):
        rt.retriever_config(SEARCHR1_DEFAULT)


def test_ray_backend_asks_ray_for_a_gpu(caplog):
    rt._LOGGED.clear()  # notes are logged once per process
    with caplog.at_level(logging.WARNING, logger="medret.integrations.searchr1_runtime"):
        cfg = rt.retriever_config({"backend": "ray", "gpu_id": 3})
    assert (cfg.ray_num_gpus, cfg.gpu_id, cfg.device) == (1, None, "cuda")
    assert "Ray assigns the actor's GPU" in caplog.text
    assert rt.retriever_config({"backend": "ray"}).ray_num_gpus == 0  # CPU actor unless a GPU is asked for


@pytest.mark.parametrize("value", [0, -1, "x", 2.5, True])
def test_bad_topk(value):
    with pytest.raises(ConfigError, match="retriever.topk"):
        rt.topk_of({"topk": value})


@pytest.mark.parametrize("timeout, named", [(None, "retriever.timeout=None"), ("soon", "retriever.timeout='soon'"),
                                            ("nan", "retriever.timeout=nan"), (True, "retriever.timeout=True"),
                                            (0, "retriever.timeout=0")])
def test_http_timeout_is_read_by_its_declaration(timeout, named):
    """Search-R1's HTTP path read retriever.timeout with a bare float(): `timeout: null` gave a raw TypeError."""
    with pytest.raises(ConfigError) as e:
        rt.batch_search({**SEARCHR1_DEFAULT, "timeout": timeout}, ["sepsis"])
    assert str(e.value).startswith(named + " is invalid"), str(e.value)


@pytest.mark.parametrize("local", ["flase", "no way", 2, [True]])
def test_local_alias_is_a_bool(local):
    """`local: flase` once counted as false (Search-R1's HTTP path) without a word."""
    with pytest.raises(ConfigError, match=r"retriever\.local=.* is invalid: expected true or false"):
        rt.backend_of({**SEARCHR1_DEFAULT, "local": local})


def test_batch_search_local_matches_the_retriever():
    from medret import get_retriever

    queries = ["septic shock vasopressor", "atrial fibrillation anticoagulation", "septic shock vasopressor"]
    got = rt.batch_search({**SEARCHR1_DEFAULT, "backend": "local", "corpus_name": "sample",
                           "retriever_name": "BM25"}, queries, topk=2)
    direct = get_retriever(corpus_name="sample", retriever_name="BM25").retrieve(queries, topk=2)
    assert got == direct
    assert [len(r) for r in got["result"]] == [2, 2, 2]
    assert got["result"][0] == got["result"][2]
    for row in got["result"]:
        assert row[0]["score"] >= row[1]["score"]
        assert set(row[0]["document"]) >= {"id", "contents"}  # what Search-R1 reads
    # topk from the block when not given
    assert [len(r) for r in rt.batch_search({"local": True, "topk": 1}, queries[:1])["result"]] == [1]
    assert rt.batch_search({"local": True}, []) == {"result": []}


def test_batch_search_http_posts_searchr1_payload(helpers):
    with helpers.RetrieveServer() as server:
        got = rt.batch_search({"url": server.url, "topk": 2}, ["sepsis lactate"])
        assert server.requests == [{"queries": ["sepsis lactate"], "topk": 2, "return_scores": True}]
    from medret import get_retriever

    assert got == get_retriever(corpus_name="sample", retriever_name="BM25").retrieve(["sepsis lactate"], topk=2)


def test_http_errors_are_clear(helpers):
    with pytest.raises(TransportError, match="could not be reached"):
        rt.batch_search({"url": helpers.closed_port_url()}, ["q"])
    with helpers.RetrieveServer(status=500, raw_body=b"boom") as server:
        with pytest.raises(TransportError, match="answered HTTP 500"):
            rt.batch_search({"url": server.url}, ["q"])
    with helpers.RetrieveServer(raw_body=b"<html>") as server:
        with pytest.raises(TransportError, match="did not answer JSON"):
            rt.batch_search({"url": server.url}, ["q"])
    with helpers.RetrieveServer(raw_body=b'{"result": []}') as server:
        with pytest.raises(TransportError, match="0 result lists for 1 queries"):
            rt.batch_search({"url": server.url}, ["q"])
    with pytest.raises(ConfigError, match="retriever.url is empty"):
        rt.batch_search({"backend": "http"}, ["q"])


# ---------------------------------------------------------------- GPU placement (simulated CUDA)


class FakeCuda:
    """Simulates the CUDA runtime of one process on a machine with ``physical`` GPUs: the driver reads
    CUDA_VISIBLE_DEVICES once, at the first device query, and keeps that count (as c10's device_count does)."""

    def __init__(self, env: dict, physical: int = 4, initialized: bool = False, probed: bool = False) -> None:
        self.env, self.physical, self._initialized = env, physical, initialized
        self._count: int | None = None
        if probed:
            self.device_count()

    def initialized(self) -> bool:
        return self._initialized

    def device_count(self) -> int:
        if self._count is None:
            value = self.env.get("CUDA_VISIBLE_DEVICES")
            if value is None:
                self._count = self.physical
            else:
                n = 0
                for entry in value.split(","):  # CUDA stops at the first invalid entry
                    if not entry.strip().isdigit() or int(entry) >= self.physical:
                        break
                    n += 1
                self._count = n
        return self._count

    def probe(self) -> rt.CudaProbe:
        return rt.CudaProbe(initialized=self.initialized, device_count=self.device_count)


def test_placement_unset_env_changes_nothing():
    env: dict = {}
    cuda = FakeCuda(env)
    decision = rt.place_local_gpu(3, env=env, probe=cuda.probe())
    assert not decision.changed and env == {}
    assert resolve_device(None, 3, env=env, device_count=cuda.device_count) == "cuda:3"


def test_placement_gpu_already_visible():
    env = {"CUDA_VISIBLE_DEVICES": "2,3"}
    cuda = FakeCuda(env)
    assert not rt.place_local_gpu(3, env=env, probe=cuda.probe()).changed
    assert env == {"CUDA_VISIBLE_DEVICES": "2,3"}
    assert resolve_device(None, 3, env=env, device_count=cuda.device_count) == "cuda:1"


def test_placement_blank_env_restores_the_gpu_and_logs(caplog):
    env = {"CUDA_VISIBLE_DEVICES": ""}  # a Ray task that reserved no GPU
    cuda = FakeCuda(env)
    with caplog.at_level(logging.WARNING, logger="medret.integrations.searchr1_runtime"):
        decision = rt.place_local_gpu(3, env=env, probe=cuda.probe())
    assert decision.changed and (decision.before, decision.after) == ("", "3")
    assert env["CUDA_VISIBLE_DEVICES"] == "3"
    assert "CUDA_VISIBLE_DEVICES='' hides every GPU" in caplog.text and "physical GPU 3 as cuda:0" in caplog.text
    assert resolve_device(None, 3, env=env, device_count=cuda.device_count) == "cuda:0"
    # a second call (the retriever is cached per process) changes nothing more
    assert not rt.place_local_gpu(3, env=env, probe=cuda.probe()).changed


def test_placement_narrowed_env_appends_and_keeps_logical_numbers():
    env = {"CUDA_VISIBLE_DEVICES": "0,1"}
    cuda = FakeCuda(env)
    decision = rt.place_local_gpu(3, env=env, probe=cuda.probe())
    assert decision.after == "0,1,3" and env["CUDA_VISIBLE_DEVICES"] == "0,1,3"
    assert resolve_device(None, 3, env=env, device_count=cuda.device_count) == "cuda:2"
    assert resolve_device("cuda:0", None, env=env, device_count=cuda.device_count) == "cuda:0"


def test_placement_refused_when_cuda_is_initialised():
    env = {"CUDA_VISIBLE_DEVICES": ""}
    cuda = FakeCuda(env, initialized=True)
    with pytest.raises(DeviceError, match=r"already initialised.*backend=ray"):
        rt.place_local_gpu(3, env=env, probe=cuda.probe())
    assert env == {"CUDA_VISIBLE_DEVICES": ""}


def test_placement_detects_an_earlier_cuda_probe_and_restores_env():
    env = {"CUDA_VISIBLE_DEVICES": ""}
    cuda = FakeCuda(env, probed=True)  # e.g. torch.cuda.is_available() ran before the env was changed
    with pytest.raises(DeviceError, match=r"CUDA then sees 0 device\(s\) instead of 1.*restored to ''"):
        rt.place_local_gpu(3, env=env, probe=cuda.probe())
    assert env == {"CUDA_VISIBLE_DEVICES": ""}


def test_placement_nonexistent_gpu():
    env = {"CUDA_VISIBLE_DEVICES": "0"}
    cuda = FakeCuda(env, physical=2)
    with pytest.raises(DeviceError, match="does not exist"):
        rt.place_local_gpu(7, env=env, probe=cuda.probe())
    assert env == {"CUDA_VISIBLE_DEVICES": "0"}


def test_placement_uuid_list_and_bad_ids():
    env = {"CUDA_VISIBLE_DEVICES": "GPU-1a2b"}
    with pytest.raises(DeviceError, match="UUID/MIG"):
        rt.place_local_gpu(1, env=env, probe=FakeCuda(env).probe())
    for bad in (-1, "3", True):
        with pytest.raises(ConfigError, match="gpu_id"):
            rt.place_local_gpu(bad, env={}, probe=FakeCuda({}).probe())  # type: ignore[arg-type]


def test_local_gpu_block_on_this_machine_never_runs_silently_on_cpu(monkeypatch):
    """On a machine without a usable GPU, backend=local with gpu_id fails with a DeviceError (no CPU run)."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this check is about machines without a GPU")
    env = {"CUDA_VISIBLE_DEVICES": ""}
    with pytest.raises(DeviceError):
        rt.get_searchr1_retriever({"backend": "local", "retriever_name": "BM25", "gpu_id": 0}, env=env)


RAY_PLACEMENT_SCRIPT = r'''
import json, os
import ray

from medret.integrations import searchr1_runtime as runtime


def run_in_task():
    seen = os.environ.get("CUDA_VISIBLE_DEVICES")
    gpu_id = max({0, 1, 2, 3} - {int(e) for e in (seen or "").split(",") if e.isdigit()})
    frozen = []

    def count():  # a driver that reads the variable once
        if not frozen:
            value = os.environ.get("CUDA_VISIBLE_DEVICES")
            frozen.append(4 if value is None else len([e for e in value.split(",") if e.isdigit()]))
        return frozen[0]

    decision = runtime.place_local_gpu(gpu_id, probe=runtime.CudaProbe(lambda: False, count))
    return seen, gpu_id, decision.after, os.environ.get("CUDA_VISIBLE_DEVICES"), count()


ray.init(address="local", num_cpus=2, num_gpus=4, include_dashboard=False, log_to_driver=False)
try:
    blank = ray.get(ray.remote(num_gpus=0)(run_in_task).remote())
    narrowed = ray.get(ray.remote(num_gpus=1)(run_in_task).remote())
finally:
    ray.shutdown()
print(json.dumps({"blank": blank, "narrowed": narrowed}))
'''


@pytest.mark.integration
def test_placement_inside_real_ray_tasks(tmp_path):
    """Real Ray tasks (own Ray instance in a child process, 4 GPUs declared, CUDA driver simulated): with the
    accelerator override on zero GPUs (older Ray's default) a task without num_gpus runs with
    CUDA_VISIBLE_DEVICES='', one with num_gpus=1 with one GPU; placement adds the wanted physical GPU in both."""
    pytest.importorskip("ray")
    import json
    import os
    import subprocess
    import sys

    script = tmp_path / "ray_placement.py"
    script.write_text(RAY_PLACEMENT_SCRIPT)
    env = dict(os.environ, RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO="1")  # inherited by the Ray workers
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["blank"] == ["", 3, "3", "3", 1]
    seen, gpu_id, after, now, count = out["narrowed"]
    assert len(seen.split(",")) == 1 and seen != str(gpu_id)  # Ray gave the task one GPU, not the wanted one
    assert after == now == f"{seen},{gpu_id}" and count == 2
