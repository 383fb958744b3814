"""The Ray backend on a real two-node local Ray cluster (see conftest.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest

from medret import get_retriever
from medret.config import RetrieverConfig
from medret.errors import TransportError

pytestmark = pytest.mark.integration

QUERIES = ["sepsis mortality risk in elderly ICU patients", "treatment of diabetic ketoacidosis",
           "stroke risk in atrial fibrillation", "sepsis mortality risk in elderly ICU patients"]


def ray_config(cluster, job, **kw):
    return RetrieverConfig.from_mapping(dict(corpus_name="sample", retriever_name="BM25", backend="ray",
                                             ray_address=cluster["address"], **kw))


@pytest.fixture
def job(monkeypatch):
    """A fresh job id, so each test has its own actors; they are killed afterwards."""
    jid = f"t{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("MEDRET_RAY_JOB", jid)
    yield jid
    from medret.transports.ray import kill_actors

    for placement in ("any", "per-node"):
        kill_actors(RetrieverConfig.from_mapping(dict(corpus_name="sample", retriever_name="BM25", backend="ray",
                                                      ray_placement=placement)))


def test_same_answers_as_local(ray_cluster, job):
    local = get_retriever("sample", "BM25")
    remote = get_retriever("sample", "BM25", backend="ray", ray_address=ray_cluster["address"])
    assert remote.retrieve(QUERIES, topk=5) == local.retrieve(QUERIES, topk=5)
    assert remote.retrieve(QUERIES[:2], topk=2, return_scores=False) == local.retrieve(QUERIES[:2], topk=2,
                                                                                      return_scores=False)
    info = remote.info()
    assert info["n_docs"] == local.info()["n_docs"]
    assert info["ray"]["actor"].startswith(f"medret:sample:BM25:{job}:")
    assert info["ray"]["pid"] != os.getpid()


def test_actor_survives_its_creator_and_is_found_by_name(ray_cluster, job, tmp_path):
    creator = (
        "import json, os, sys\n"
        "from medret import get_retriever\n"
        "r = get_retriever('sample', 'BM25', backend='ray', ray_address=sys.argv[1])\n"
        "hits = r.search(['sepsis in elderly patients'], 3)\n"
        "print(json.dumps({'pid': os.getpid(), 'actor_pid': r.info()['ray']['pid'], 'ids': [h.id for h in hits[0]]}))\n"
    )
    env = dict(ray_cluster["env"], MEDRET_RAY_JOB=job)
    out = subprocess.run([sys.executable, "-c", creator, ray_cluster["address"]], capture_output=True, text=True,
                         env=env, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    made = json.loads(out.stdout.strip().splitlines()[-1])
    # the creator has exited; a different process finds the same actor (same pid) without creating one
    from medret.transports.ray import RayTransport

    t = RayTransport(ray_config(ray_cluster, job), create=False)
    assert t.info()["ray"]["pid"] == made["actor_pid"]
    assert [item["document"]["id"] for item in t.search(["sepsis in elderly patients"], 3)[0]] == made["ids"]
    local = get_retriever("sample", "BM25")
    assert made["ids"] == [h.id for h in local.search(["sepsis in elderly patients"], 3)[0]]


def test_missing_actor_without_create_is_a_clear_error(ray_cluster, job):
    from medret.transports.ray import RayTransport

    with pytest.raises(TransportError, match="medret ray up"):
        RayTransport(ray_config(ray_cluster, job), create=False)


def test_attach_only_never_creates_and_names_the_command_that_does(ray_cluster, job):
    """ray_attach (the trainer's side of a dedicated retriever node, issue 21): an absent actor is an error at once
    that names the job, the actor and the `medret ray up` that starts it; nothing is created. That command, run as
    printed, creates exactly the actor the attaching side then finds."""
    import shlex

    from medret.transports.ray import RayTransport, actor_base_name, connect

    connect(ray_cluster["address"])
    list_named_actors = __import__("ray.util", fromlist=["list_named_actors"]).list_named_actors
    cfg = ray_config(ray_cluster, job, ray_attach=True, pooling=None, rrf_k=60, ray_shards=1)

    def ours():
        return sorted(a["name"] for a in list_named_actors(all_namespaces=True) if f":{job}:" in a["name"])

    with pytest.raises(TransportError) as e:
        get_retriever(**{k: getattr(cfg, k) for k in ("corpus_name", "retriever_name")}, backend="ray",
                      ray_address=ray_cluster["address"], rrf_k=60, ray_attach=True).search(["x"], 1)
    msg = str(e.value)
    assert f"no retriever actor {actor_base_name(cfg)!r} of job {job!r}" in msg and "ray_attach" in msg, msg
    assert ours() == [], "attaching created nothing"
    command = msg[msg.index("`") + 1:msg.index("`", msg.index("`") + 1)]
    words = shlex.split(command)
    assert words[:3] == ["medret", "ray", "up"] and "--rrf-k=60" in words and f"--ray-job={job}" in words
    env = dict(ray_cluster["env"], MEDRET_RAY_JOB="another-job")  # the command carries the job itself
    up = subprocess.run([sys.executable, "-m", "medret.cli", *words[1:], "--ray-address", ray_cluster["address"]],
                        capture_output=True, text=True, env=env, timeout=300)
    assert up.returncode == 0, up.stderr[-3000:]
    assert ours() == [actor_base_name(cfg)]
    t = RayTransport(cfg)
    assert t.info()["ray"]["actor"] == actor_base_name(cfg)
    assert ours() == [actor_base_name(cfg)], "found, not created"


def test_actor_that_cannot_load_fails_fast_with_the_cause(ray_cluster, job, tmp_path):
    from medret.transports.ray import RayTransport

    cfg = RetrieverConfig.from_mapping(dict(corpus_name=str(tmp_path / "no-such-corpus"), retriever_name="BM25",
                                            backend="ray", ray_address=ray_cluster["address"]))
    with pytest.raises(TransportError, match="failed to start"):
        RayTransport(cfg, ready_timeout=120)


def test_per_node_actors_each_caller_uses_its_own_node(ray_cluster, job):
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    @ray.remote(num_cpus=0)
    def search_from_here(address):
        from medret import get_retriever as gr

        r = gr("sample", "BM25", backend="ray", ray_address=address, ray_placement="per-node")
        return ray.get_runtime_context().get_node_id(), r.info()["ray"], [h.id for h in r.search(QUERIES[:1], 3)[0]]

    seen = {}
    for key in ("node_a", "node_b"):
        strategy = NodeAffinitySchedulingStrategy(node_id=ray_cluster[key], soft=False)
        caller_node, actor, ids = ray.get(search_from_here.options(scheduling_strategy=strategy,
                                                                   runtime_env={"env_vars": {"MEDRET_RAY_JOB": job}})
                                          .remote(ray_cluster["address"]), timeout=180)
        assert caller_node == ray_cluster[key]
        assert actor["node_id"] == ray_cluster[key], "the caller must use the actor on its own node"
        assert actor["actor"].endswith("@" + ray_cluster[key])
        seen[key] = (actor["actor"], ids)
    assert seen["node_a"][0] != seen["node_b"][0]
    local = [h.id for h in get_retriever("sample", "BM25").search(QUERIES[:1], 3)[0]]
    assert seen["node_a"][1] == seen["node_b"][1] == local


def test_retriever_node_placement_lands_on_the_node_with_the_resource(ray_cluster, job):
    r = get_retriever("sample", "BM25", backend="ray", ray_address=ray_cluster["address"],
                      ray_placement="retriever-node")
    assert r.info()["ray"]["node_id"] == ray_cluster["node_b"]  # only node B offers medret_retriever
    # callers that do not say where it lives still find the same actor by name
    r2 = get_retriever("sample", "BM25", backend="ray", ray_address=ray_cluster["address"])
    assert r2.info()["ray"]["pid"] == r.info()["ray"]["pid"]


def test_cli_ray_up_info_down(ray_cluster, job):
    env = dict(ray_cluster["env"])
    base = [sys.executable, "-m", "medret.cli", "ray"]
    common = ["--address", ray_cluster["address"], "--job", job, "--corpus", "sample", "--retriever", "BM25"]
    up = subprocess.run(base + ["up", *common, "--placement", "retriever-node", "--timeout", "120", "--json"],
                        capture_output=True, text=True, env=env, timeout=180)
    assert up.returncode == 0, up.stderr[-3000:]
    info = json.loads(up.stdout.strip().splitlines()[-1])
    assert info["ray"]["node_id"] == ray_cluster["node_b"] and info["corpus"] == "sample"
    down = subprocess.run(base + ["down", *common], capture_output=True, text=True, env=env, timeout=120)
    assert down.returncode == 0 and "killed 1 actor" in down.stdout, down.stdout + down.stderr
    gone = subprocess.run(base + ["info", *common], capture_output=True, text=True, env=env, timeout=120)
    assert gone.returncode == 1 and "no retriever actor" in gone.stderr


def test_cli_ray_commands_print_no_token_authentication_warning(ray_cluster, job):
    """A user's shell has no RAY_AUTH_MODE; with a token in ~/.ray/auth_token `ray start` uses it, and medret's
    commands connect with it too. They once printed Ray's "Token authentication is enabled for this Ray cluster.
    Set RAY_AUTH_MODE=disabled to opt out" warning on every call; now medret answers the question itself, silently.
    (Without a token the cluster runs without authentication and nothing is printed either way.)"""
    env = {k: v for k, v in ray_cluster["env"].items() if k != "RAY_AUTH_MODE"}
    base = [sys.executable, "-m", "medret.cli", "ray"]
    common = ["--address", ray_cluster["address"], "--job", job, "--corpus", "sample", "--retriever", "BM25"]
    for command in ("up", "info", "down"):
        r = subprocess.run(base + [command, *common, "--timeout", "120"], capture_output=True, text=True, env=env,
                           timeout=180)
        assert r.returncode == 0, (command, r.stderr[-3000:])
        assert "token authentication" not in r.stderr.lower() and "RAY_AUTH_MODE" not in r.stderr, (command, r.stderr)
        assert "WARNING" not in r.stderr, (command, r.stderr)
        if command == "down":
            assert "killed 1 actor" in r.stdout, r.stdout


def test_cli_ray_down_finds_the_gpu_actor_that_ray_up_created(ray_cluster, job):
    """`ray up --device cuda --num-gpus 1` names its actor by every identity option (device and GPUs included);
    `ray down` and `ray info` with the same flags find it (they once lacked --device/--num-gpus and missed it).
    Node B offers one Ray GPU; without CUDA here the actor falls back to CPU (--allow-cpu-fallback)."""
    env = dict(ray_cluster["env"])
    base = [sys.executable, "-m", "medret.cli", "ray"]
    common = ["--address", ray_cluster["address"], "--job", job, "--corpus", "sample", "--retriever", "BM25",
              "--device", "cuda", "--num-gpus", "1", "--allow-cpu-fallback"]
    up = subprocess.run(base + ["up", *common, "--timeout", "120", "--json"], capture_output=True, text=True,
                        env=env, timeout=180)
    assert up.returncode == 0, up.stderr[-3000:]
    info = json.loads(up.stdout.strip().splitlines()[-1])
    assert info["ray"]["node_id"] == ray_cluster["node_b"]  # the only node with a (Ray) GPU
    assert info["ray"]["cuda_visible_devices"] not in (None, "")  # Ray gave the actor its GPU
    found = subprocess.run(base + ["info", *common, "--json"], capture_output=True, text=True, env=env,
                           timeout=120)
    assert found.returncode == 0, found.stderr[-3000:]
    assert json.loads(found.stdout)["ray"]["pid"] == info["ray"]["pid"]
    down = subprocess.run(base + ["down", *common], capture_output=True, text=True, env=env, timeout=120)
    assert down.returncode == 0 and "killed 1 actor" in down.stdout, down.stdout + down.stderr
    assert info["ray"]["actor"] in down.stdout
    gone = subprocess.run(base + ["info", *common], capture_output=True, text=True, env=env, timeout=120)
    assert gone.returncode == 1 and "no retriever actor" in gone.stderr


def test_ray_max_restarts_brings_a_killed_actor_back(ray_cluster, job):
    """`ray_max_restarts` (one option declaration, used where the actor is created): Ray restarts the retriever
    actor after its process dies, under the same name; callers find it again. With the default 0 it stays dead."""
    import time

    from medret.transports.ray import RayTransport

    def info_from_another_process(t: RayTransport, pid: int, timeout: float = 120.0) -> dict:
        """The actor's info once a process other than ``pid`` answers (ray.kill returns before the old one is
        gone, so the first calls may still reach it; while it restarts, calls fail)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                info = t.info()
                if info["ray"]["pid"] != pid or time.monotonic() > deadline:
                    return info
            except TransportError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.5)

    restarting = RayTransport(ray_config(ray_cluster, job, ray_max_restarts=1, rrf_k=61))
    first = restarting.info()["ray"]
    restarting.ray.kill(restarting.handle, no_restart=False)  # as an out-of-memory kill would end it
    again = info_from_another_process(restarting, first["pid"])["ray"]
    assert again["actor"] == first["actor"] and again["pid"] != first["pid"]
    assert [i["document"]["id"] for i in restarting.search(QUERIES[:1], 3)[0]] == \
        [h.id for h in get_retriever("sample", "BM25", rrf_k=61).search(QUERIES[:1], 3)[0]]

    once = RayTransport(ray_config(ray_cluster, job, rrf_k=62))  # default: no restart
    once.ray.kill(once.handle, no_restart=False)
    time.sleep(2)
    with pytest.raises(TransportError, match="is gone"):
        once.info()
    from medret.transports.ray import kill_actors

    for t in (restarting, once):
        kill_actors(t.config)
