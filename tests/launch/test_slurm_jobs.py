"""Rendered job scripts run by a real SLURM (two slurmd on this machine, 4 fake GPUs each), in smoke mode:
`medret rollout-smoke` instead of training, BM25 over the shipped sample corpus, CPU only."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medret import get_retriever
from medret.launch.slurm import JobSpec, render_job
from tests.launch.conftest import nq_style_data

pytestmark = [pytest.mark.integration, pytest.mark.slurm]

FINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE",
         "PREEMPTED")


def job_env(cluster, tmp_path):
    bindir = str(Path(sys.executable).parent)
    env = dict(os.environ, SLURM_CONF=cluster["conf"], PATH=bindir + os.pathsep + os.environ["PATH"],
               MEDRET_RETRIEVER_DEVICE="cpu", PYTHONUNBUFFERED="1")
    for k in list(env):
        if k.startswith("SLURM_") and k != "SLURM_CONF":
            env.pop(k)
    return env


def submit(cluster, tmp_path, name, edit=None, **kw):
    """Render a smoke job (``edit``: a change to the script text, asserted to apply) and sbatch it."""
    spec = JobSpec.from_mapping({**dict(corpus="sample", retriever="BM25", mode="smoke", job_name=name,
                                        output=str(tmp_path / "%x-%j.out"), health_timeout=120, time="00:10:00"),
                                 **kw})
    script = tmp_path / f"{name}.sbatch"
    text = render_job(spec)
    if edit is not None:
        old, new = edit
        assert old in text, old
        text = text.replace(old, new)
    script.write_text(text)
    r = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True, cwd=tmp_path,
                       env=job_env(cluster, tmp_path), timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip().split(";")[0]


def job_state(cluster, job_id) -> str | None:
    r = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True,
                       env=dict(os.environ, SLURM_CONF=cluster["conf"]), timeout=30)
    m = re.search(r"JobState=(\S+)", r.stdout)
    if m:
        return m.group(1)
    # gone from slurmctld's memory: the job completion log has its final state
    if cluster["jobcomp"].exists():
        for line in reversed(cluster["jobcomp"].read_text().splitlines()):
            if f"JobId={job_id} " in line:
                m = re.search(r"JobState=(\S+)", line)
                return m.group(1) if m else None
    return None


def wait_all(cluster, job_ids, timeout=900) -> dict[str, tuple[str, float]]:
    t0 = time.monotonic()
    done: dict[str, tuple[str, float]] = {}
    while len(done) < len(job_ids):
        for j in job_ids:
            if j not in done:
                st = job_state(cluster, j)
                if st in FINAL:
                    done[j] = (st, time.monotonic() - t0)
        if time.monotonic() - t0 > timeout:
            subprocess.run(["scancel", *job_ids], env=dict(os.environ, SLURM_CONF=cluster["conf"]))
            pytest.fail(f"jobs not finished after {timeout}s: { {j: job_state(cluster, j) for j in job_ids} }")
        time.sleep(1)
    return done


def searches_and_titles(out: str) -> list[tuple[str, list[str]]]:
    """(query, passage titles) of every search in a rollout-smoke transcript."""
    pairs = []
    for m in re.finditer(r"<search>(.*?)</search>.*?>>>(.*?)<<<", out, re.S):
        pairs.append((m.group(1).strip(), re.findall(r'Doc \d+\(Title: "(.*?)"\)', m.group(2))))
    return pairs


def assert_results_are_bm25(out: str, expected_searches: int):
    """Every observation shows exactly the passages BM25 over the sample corpus gives for that query."""
    local = get_retriever("sample", "BM25")
    pairs = searches_and_titles(out)
    assert len(pairs) == expected_searches, out[-3000:]
    for q, titles in pairs:
        assert titles == [h.title for h in local.search([q], 3)[0]], q


# Stands in for the trainer: what a veRL driver would see of the Ray cluster and of the retriever.
TRAIN_PROBE = ("python -c \"import json, os, ray; ray.init(); "
               "print('TRAIN-PROBE', json.dumps({'gpus': sorted(n['Resources'].get('GPU', 0) for n in ray.nodes() "
               "if n['Alive']), 'url': os.environ['RETRIEVER_URL']}))\"")


# Issue 21: the retriever-node job's processes, edited into the script. Without its `ray up` line the smoke run must
# fail at once (it only attaches); with it, after the smoke run, the job lists the named actors of its Ray cluster.
RAY_UP_LINE = ('    "${RETRIEVER_CMD[@]}" || medret_fail "the retriever actor did not start on $RETRIEVER_HOST"'
               "\n")
SMOKE_LINE = ('        medret_smoke_on_nodes "${trainers[@]}" || medret_fail "the rollout smoke run failed on a '
              'trainer node"\n')
LIST_ACTORS = ("        python -c 'import json, ray; from ray.util import list_named_actors as named; ray.init(); "
               "print(\"NAMED-ACTORS\", json.dumps(sorted(a[\"name\"] for a in named(all_namespaces=True))))'\n")


# a local model folder with its encoder recipe (issue 14: render had no flags for it): the rendered job must hand the
# same options to `medret serve`, `medret ray up` and the smoke run
FOLDER_OPTIONS = dict(pooling="mean", query_prefix="query: ", doc_prefix="passage: ", max_length=64)


@pytest.fixture(scope="module")
def jobs(slurm_cluster, tmp_path_factory, tiny_bert_dir):
    """All layouts (and a broken retriever) submitted at once, so they run side by side (the 2-node jobs one after
    another: the cluster has two nodes; on a loaded 2-core machine the eleven take several minutes)."""
    tmp = tmp_path_factory.mktemp("slurm-jobs")
    ids = {
        "local": submit(slurm_cluster, tmp, "mr-local", layout="local"),
        "per-node": submit(slurm_cluster, tmp, "mr-pernode", layout="per-node", nodes=2),
        "retriever-node": submit(slurm_cluster, tmp, "mr-rnode", layout="retriever-node", nodes=2),
        "retriever-gpu-set": submit(slurm_cluster, tmp, "mr-rset", layout="retriever-node", nodes=1,
                                    retriever_gpus="3"),
        "per-node-train": submit(slurm_cluster, tmp, "mr-ptrain", layout="per-node", nodes=2, mode="train",
                                 train_cmd=TRAIN_PROBE),
        "broken": submit(slurm_cluster, tmp, "mr-broken", layout="per-node", nodes=1,
                         corpus=str(tmp / "no-such-corpus")),
        "per-node-folder": submit(slurm_cluster, tmp, "mr-pfolder", layout="per-node", nodes=1,
                                  retriever=str(tiny_bert_dir), **FOLDER_OPTIONS),
        "retriever-node-folder": submit(slurm_cluster, tmp, "mr-rfolder", layout="retriever-node", nodes=1,
                                        retriever=str(tiny_bert_dir), **FOLDER_OPTIONS),
        # issue 21: the trainer's side attaches to the actor `ray up` made, and fails at once when there is none
        "no-ray-up": submit(slurm_cluster, tmp, "mr-noup", layout="retriever-node", nodes=2, health_timeout=600,
                            edit=(RAY_UP_LINE, "    medret_log 'ray up removed from this script'\n")),
        # (a dense index built, then two shard actors started, on a CPU that six test runs share: up to 600 s)
        "one-actor": submit(slurm_cluster, tmp, "mr-oneactor", layout="retriever-node", nodes=2, device="cpu",
                            shards=2, retriever=str(tiny_bert_dir), **FOLDER_OPTIONS, health_timeout=600,
                            edit=(SMOKE_LINE, SMOKE_LINE + LIST_ACTORS)),
        # Search-R1's recipe over a folder that has train.parquet and test.parquet but not val.parquet
        "no-val-file": submit(slurm_cluster, tmp, "mr-noval", layout="local", gpus_per_node=4, retriever_gpus="none",
                              mode="train", recipe="ppo", data_dir=str(nq_style_data(tmp)),
                              paths_on_compute_nodes=True),
    }
    states = wait_all(slurm_cluster, list(ids.values()))
    out = {}
    for key, j in ids.items():
        files = list(tmp.glob(f"*-{j}.out"))
        out[key] = {"id": j, "state": states[j][0], "seconds": states[j][1],
                    "out": files[0].read_text() if files else ""}
    return out


def test_each_test_cluster_gives_its_jobs_ids_and_ray_ports_of_their_own(jobs):
    """`make test` runs a SLURM cluster per environment side by side on this host (scripts/slurm-up on ports 16817,
    17817, 18817). A job's Ray ports come from its id mod 400 (PORT_BASE = 20000 + 100 * (id mod 400)), so each
    cluster keeps to its own hundred of ids, and no two running jobs of the two clusters share a Ray port."""
    port = int(os.environ.get("MEDRET_SLURM_PORT", "16817"))
    lo = {16817: 1, 17817: 101, 18817: 201}.get(port, 1 + 100 * ((port // 1000) % 4))
    ids = sorted(int(j["id"]) for j in jobs.values())
    assert lo <= ids[0] and ids[-1] <= lo + 98, (port, ids)
    ray_ports = {int(p) for j in jobs.values() for p in re.findall(r"Ray node\(s\) at [\d.]+:(\d+)", j["out"])}
    assert ray_ports and all(20000 + 100 * lo <= p <= 20000 + 100 * (lo + 98) for p in ray_ports), (port, ray_ports)


def test_local_layout_completes_with_in_process_retrieval(jobs):
    j = jobs["local"]
    assert j["state"] == "COMPLETED", j["out"][-3000:]
    out = j["out"]
    assert "training GPUs: 0,1,2 (3, Ray workers); retriever in the trainer process on GPU 3" in out
    assert "retrieval: in-process (backend local) on node nodeA" in out
    assert "rollout-smoke: backend=local corpus=sample retriever=BM25" in out and "rollout-smoke: OK" in out
    assert_results_are_bm25(out, expected_searches=4)


def test_per_node_layout_each_node_uses_its_own_server(jobs):
    j = jobs["per-node"]
    assert j["state"] == "COMPLETED", j["out"][-3000:]
    out = j["out"]
    ready = dict(re.findall(r"retriever ready at (http://127\.0\.0\.1:\d+) \(node (node[AB])", out))
    ready = {node: url for url, node in ready.items()}
    assert set(ready) == {"nodeA", "nodeB"} and ready["nodeA"] != ready["nodeB"], out[-3000:]
    for node in ("nodeA", "nodeB"):
        assert "[medret-job" in out \
            and f"{node}] starting the retriever server on GPU 3 (CUDA_VISIBLE_DEVICES=3)" in out
        assert f"{node}] rollout smoke on {node} against this node's retriever {ready[node]}" in out
    # the two transcripts, each against its own node's address
    used = re.findall(r"rollout-smoke: backend=http (http://127\.0\.0\.1:\d+)/retrieve", out)
    assert sorted(used) == sorted(ready.values())
    assert out.count("rollout-smoke: OK") == 2
    assert_results_are_bm25(out, expected_searches=8)


@pytest.mark.parametrize("key,backend", [("per-node-folder", "http"), ("retriever-node-folder", "ray")])
def test_a_job_over_a_local_model_folder_searches_with_its_encoder_options(jobs, tiny_bert_dir, key, backend):
    """`medret serve` (per-node) and `medret ray up` + the Ray retriever (retriever-node) got --pooling, the prefixes
    and --max-length from the rendered job: the passages are those of the same retriever made here."""
    j = jobs[key]
    assert j["state"] == "COMPLETED", j["out"][-3000:]
    out = j["out"]
    assert f"rollout-smoke: backend={backend}" in out and "rollout-smoke: OK" in out, out[-3000:]
    local = get_retriever("sample", str(tiny_bert_dir), device="cpu", **FOLDER_OPTIONS)
    pairs = searches_and_titles(out)
    assert len(pairs) == 4, out[-3000:]
    for q, titles in pairs:
        assert titles == [h.title for h in local.search([q], 3)[0]], q
    plain = get_retriever("sample", str(tiny_bert_dir), device="cpu", pooling="mean")  # without the prefixes
    assert any(titles != [h.title for h in plain.search([q], 3)[0]] for q, titles in pairs), \
        "the recipe changes results, so the comparison above can tell whether the job used it"


def test_retriever_node_layout_searches_through_the_actor_on_the_last_node(jobs):
    j = jobs["retriever-node"]
    assert j["state"] == "COMPLETED", j["out"][-3000:]
    out = j["out"]
    # trainer raylet on nodeA sees the training GPUs; the retriever raylet on nodeB offers 0 Ray GPUs
    assert "ray head (raylet 0): CUDA_VISIBLE_DEVICES=0,1,2,3 num_gpus=4" in out
    assert re.search(r"nodeB\] ray worker \(raylet 1\): CUDA_VISIBLE_DEVICES=0,1,2,3 num_gpus=0 "
                     r"resources=\{\"medret_retriever\": 1000\}", out), out[-3000:]
    m = re.search(r"medret ray up: actor (medret:sample:BM25:(\d+):\w+) ready on node \w+ .*slurm node (\w+)\)", out)
    assert m, out[-3000:]
    assert m.group(2) == j["id"], "the actor is named after the job"
    assert m.group(3) == "nodeB", "the actor runs on the dedicated retriever node"
    assert "rollout smoke on nodeA through the Ray actor" in out
    assert "rollout-smoke: backend=ray corpus=sample retriever=BM25" in out and "rollout-smoke: OK" in out
    assert_results_are_bm25(out, expected_searches=4)
    port = 20000 + (int(j["id"]) % 400) * 100
    assert f":{port}" in out, "Ray's port comes from the job id"


def test_retriever_node_layout_on_one_node_keeps_the_retriever_gpu_out_of_training(jobs):
    """One node: the trainer raylet sees GPUs 0-2 only, a second raylet owns GPU 3 (0 Ray GPUs) for the actor."""
    j = jobs["retriever-gpu-set"]
    assert j["state"] == "COMPLETED", j["out"][-3000:]
    out = j["out"]
    assert "ray head (raylet 0): CUDA_VISIBLE_DEVICES=0,1,2 num_gpus=3" in out
    assert "ray worker (raylet 1): CUDA_VISIBLE_DEVICES=3 num_gpus=0" in out
    assert re.search(r"medret ray up: actor medret:sample:BM25:\d+:\w+ ready on node", out)
    assert "rollout-smoke: OK" in out
    assert_results_are_bm25(out, expected_searches=4)


def test_multi_node_training_sees_only_training_gpus_in_ray(jobs):
    """Train mode (a probe instead of veRL): a Ray head + a worker on nodeB via srun, each with 3 GPUs (0,1,2),
    never the retriever's GPU 3; the trainer gets its node's server URL."""
    import json

    j = jobs["per-node-train"]
    assert j["state"] == "COMPLETED", j["out"][-3000:]
    out = j["out"]
    probe = json.loads(re.search(r"^TRAIN-PROBE (.*)$", out, re.M).group(1))
    assert probe["gpus"] == [3.0, 3.0]
    ready = re.search(r"retriever ready at (http://127\.0\.0\.1:\d+) \(node nodeA", out).group(1)
    assert probe["url"] == ready
    assert "nodeB] ray worker (raylet 1): CUDA_VISIBLE_DEVICES=0,1,2 num_gpus=3" in out


def test_job_whose_retriever_cannot_start_fails_quickly(jobs):
    j = jobs["broken"]
    assert j["state"] == "FAILED", j["out"][-3000:]
    assert "the retriever server exited before it was ready" in j["out"]
    assert "FAILED: the retriever" in j["out"]
    # failed because the server process exited, not because the health timeout ran out
    assert "were not ready within" not in j["out"]


def test_a_training_job_without_its_validation_file_fails_before_starting_anything(jobs):
    j = jobs["no-val-file"]
    assert j["state"] == "FAILED", j["out"][-3000:]
    out = j["out"]
    assert "FAILED: missing training data: data.val_files=" in out and "/nq_search/val.parquet" in out
    assert "test.parquet train.parquet" in out and "--val-file test.parquet" in out
    assert "ray head" not in out  # it failed in the job's set-up, before Ray or the trainer


def test_without_its_ray_up_the_retriever_node_job_fails_at_once_with_the_attach_message(jobs):
    """Issue 21: the trainer's side created a second actor when the one it expected was not there (the job still
    completed); now it only attaches, and says which actor of which job it expected and how it is started."""
    j = jobs["no-ray-up"]
    assert j["state"] == "FAILED", j["out"][-3000:]
    out = j["out"]
    assert "ray up removed from this script" in out
    m = re.search(r"rollout-smoke: FAILED \(ray, [^)]*\): no retriever actor 'medret:sample:BM25:(\d+):\w+' of job "
                  r"'(\d+)'.*Start it first with `medret ray up ", out)
    assert m and m.group(1) == m.group(2) == j["id"], out[-3000:]
    assert "FAILED: the rollout smoke run failed on a trainer node" in out
    assert "rollout-smoke: OK" not in out
    stamps = [int(h) * 3600 + int(m) * 60 + int(sec) for h, m, sec in
              re.findall(r"^\[medret-job (\d\d):(\d\d):(\d\d)", out, re.M)]
    assert (stamps[-1] - stamps[0]) % 86400 < 120, "it failed at once, not after the health timeout (600 s)"


def test_the_retriever_node_job_runs_exactly_one_named_retriever_actor(jobs, tiny_bert_dir):
    """Issue 21, done when: --device, shards and encoder options set; the job's Ray cluster, listed after the smoke
    run, holds one retriever actor (the one `ray up` created, on the retriever node) and its two shard actors."""
    import json

    j = jobs["one-actor"]
    assert j["state"] == "COMPLETED", j["out"][-3000:]
    out = j["out"]
    up = re.search(r"medret ray up: actor (medret:\S+) ready on node .*slurm node (\w+)\).*device (\w+)", out)
    assert up and up.group(2) == "nodeB" and up.group(3) == "cpu", out[-3000:]
    actors = json.loads(re.search(r"^NAMED-ACTORS (.*)$", out, re.M).group(1))
    retrievers = [a for a in actors if a.startswith("medret:") and "#" not in a]
    assert retrievers == [up.group(1)], actors
    assert sorted(a for a in actors if "#" in a) == [f"{up.group(1)}#shard0.0", f"{up.group(1)}#shard0.1"], actors
    assert "rollout-smoke: backend=ray" in out and "rollout-smoke: OK" in out
    local = get_retriever("sample", str(tiny_bert_dir), device="cpu", **FOLDER_OPTIONS)
    pairs = searches_and_titles(out)
    assert len(pairs) == 4, out[-3000:]
    for q, titles in pairs:
        assert titles == [h.title for h in local.search([q], 3)[0]], q
