"""Fixtures of the transports' tests: medret's server in a thread (from tests/serve) for the HTTP transport, and a
real two-node Ray cluster on 127.0.0.1 for the Ray transport.

`ray start --head --block` (node A, resource nodeA) and `ray start --address ... --block` (node B, resources
nodeB and medret_retriever, and one GPU as far as Ray knows) run as children of the test session in their own temp
dir, with free ports, and
are stopped by SIGTERM at the end (Ray drains and stops its own processes); anything of that temp dir still
alive after that is killed by pid.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

# the HTTP transport's tests run against medret's own server (tests/serve)
from tests.serve.conftest import serve_corpus, serve_thread  # noqa: F401 - fixtures

RAY_BIN = Path(sys.executable).with_name("ray")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_args(i: int) -> list[str]:
    return ["--dashboard-agent-listen-port", str(free_port()), "--dashboard-agent-grpc-port", str(free_port()),
            "--metrics-export-port", str(free_port()), "--runtime-env-agent-port", str(free_port())]


def _alive_nodes(address: str, env: dict) -> int:
    code = ("import ray,sys; ray.init(address=sys.argv[1], logging_level='ERROR', log_to_driver=False); "
            "print(sum(1 for n in ray.nodes() if n['Alive']))")
    out = subprocess.run([sys.executable, "-c", code, address], capture_output=True, text=True, env=env, timeout=60)
    return int(out.stdout.strip() or 0) if out.returncode == 0 else 0


def _kill_leftovers(tmp: str) -> None:
    import psutil

    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(tmp in a for a in (p.info["cmdline"] or [])):
                p.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    """{'address', 'node_a', 'node_b', 'env'}: a head (node A) and a worker (node B, retriever resource)."""
    pytest.importorskip("ray")
    if not RAY_BIN.exists():
        pytest.skip(f"the ray command is not installed next to {sys.executable}")
    tmp = tempfile.mkdtemp(prefix="mrt-ray-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    cache = tmp_path_factory.mktemp("ray-medret-cache")
    env = dict(os.environ, MEDRET_CACHE=str(cache), RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1")
    env.pop("RAY_ADDRESS", None)
    # One authentication mode for the cluster and every client (see medret.transports.ray._match_ray_start_auth)
    token = Path.home() / ".ray" / "auth_token"
    env.setdefault("RAY_AUTH_MODE", "token" if token.is_file() and token.stat().st_size else "disabled")
    saved_mode = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = env["RAY_AUTH_MODE"]
    port = free_port()
    address = f"127.0.0.1:{port}"
    logs = Path(tmp) / "logs"
    logs.mkdir()
    procs = []
    head = [str(RAY_BIN), "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(port),
            "--include-dashboard=false", "--dashboard-port", str(free_port()), "--temp-dir", tmp,
            "--num-cpus", "2", "--num-gpus", "0", "--resources", '{"nodeA": 1}', "--disable-usage-stats",
            *_node_args(0)]
    procs.append(subprocess.Popen(head, stdout=open(logs / "head.out", "w"), stderr=subprocess.STDOUT, env=env))
    try:
        deadline = time.monotonic() + 90
        while _alive_nodes(address, env) < 1:
            if procs[0].poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"ray head did not start: {(logs / 'head.out').read_text()[-2000:]}")
            time.sleep(1)
        # node B declares one GPU to Ray (none need exist): actors asking num_gpus=1 are scheduled there and get
        # CUDA_VISIBLE_DEVICES from Ray, as on a GPU node; without CUDA they run with --allow-cpu-fallback
        worker = [str(RAY_BIN), "start", "--block", "--address", address, "--node-ip-address", "127.0.0.1",
                  "--num-cpus", "2", "--num-gpus", "1", "--resources", '{"nodeB": 1, "medret_retriever": 1000}',
                  "--disable-usage-stats", *_node_args(1)]
        procs.append(subprocess.Popen(worker, stdout=open(logs / "worker.out", "w"), stderr=subprocess.STDOUT,
                                      env=env))
        while _alive_nodes(address, env) < 2:
            if procs[1].poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"ray worker did not start: {(logs / 'worker.out').read_text()[-2000:]}")
            time.sleep(1)
        import ray

        from medret.transports.ray import connect

        if ray.is_initialized():  # an earlier test's local Ray instance; this session uses the cluster above
            ray.shutdown()
        connect(address, "medret")
        nodes = {}
        for n in ray.nodes():
            if n["Alive"]:
                for key in ("nodeA", "nodeB"):
                    if key in n["Resources"]:
                        nodes[key] = n["NodeID"]
        yield {"address": address, "node_a": nodes["nodeA"], "node_b": nodes["nodeB"], "env": env, "tmp": tmp}
        ray.shutdown()
    finally:
        if saved_mode is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = saved_mode
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:  # `ray start --block` stops its node on SIGTERM, at times only after 40 s or more: what is
            try:          # left after 10 s is killed, and so are its processes (they name the temp dir)
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        time.sleep(0.5)
        _kill_leftovers(tmp)
        shutil.rmtree(tmp, ignore_errors=True)
