"""`medret slurm render / check`: GPU arithmetic by hand, every render-time refusal, the checker on rendered,
hand-edited and hand-written scripts, and the dry run outside SLURM."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from medret.errors import ConfigError
from medret.launch.slurm import (
    JobSpec,
    check_script,
    plan_job,
    read_spec_header,
    render_job,
)


def spec(**kw):
    # the data folder and model of these jobs exist only on imaginary compute nodes: the job checks them there
    base = dict(corpus="sample", retriever="BM25", paths_on_compute_nodes=True)
    base.update(kw)
    return JobSpec.from_mapping(base)


# ------------------------------------------------------------------------------------------- arithmetic


@pytest.mark.parametrize("kw,train,retr,nnodes", [
    (dict(layout="local"), (0, 1, 2), (3,), 1),                                   # the seed's case
    (dict(layout="local", retriever_gpus="0"), (1, 2, 3), (0,), 1),
    (dict(layout="local", retriever_gpus="none"), (0, 1, 2, 3), (), 1),            # CPU retriever
    (dict(layout="per-node", nodes=3), (0, 1, 2), (3,), 3),
    (dict(layout="per-node", nodes=2, gpus_per_node=8, retriever_gpus="7", tensor_parallel=7), tuple(range(7)), (7,),
     2),
    (dict(layout="retriever-node", nodes=3), (0, 1, 2, 3), (0, 1, 2, 3), 2),       # last node retrieves
    (dict(layout="retriever-node", nodes=1, retriever_gpus="2,3", shards=2), (0, 1), (2, 3), 1),
])
def test_plan_matches_hand_computation(kw, train, retr, nnodes):
    p = plan_job(spec(**kw))
    assert p.train_gpus == train and p.retriever_gpus == retr and p.train_nodes == nnodes
    assert not set(p.train_gpus) & set(p.retriever_gpus) or (kw["layout"] == "retriever-node" and kw["nodes"] > 1)
    assert p.train_gpus_total == len(train) * nnodes


@pytest.mark.parametrize("kw,match", [
    (dict(layout="local", tensor_parallel=2), r"tensor_parallel=2 is invalid: it must divide the 3 training GPUs"),
    (dict(layout="local", tensor_parallel=4), r"tensor_parallel=4 is invalid.*use tensor_parallel in \[1, 3\]"),
    (dict(layout="per-node", nodes=2, gpus_per_node=8, retriever_gpus="7", tensor_parallel=2), r"divide the 7"),
    (dict(layout="local", nodes=2), r"nodes=2 is invalid for layout=local"),
    (dict(layout="local", retriever_gpus="4"), r"GPU index 4 does not exist on a node with gpus_per_node=4"),
    (dict(layout="local", retriever_gpus="3,3"), r"listed twice"),
    (dict(layout="local", retriever_gpus="2,3"), r"one retriever GPU per node"),
    (dict(layout="retriever-node", nodes=1, retriever_gpus="0,1,2,3"), r"leaves no GPU to train on"),
    (dict(layout="local", gpus_per_node=1, retriever_gpus="0"), r"leaves no GPU to train on"),
    (dict(layout="per-node", shards=2), r"shards=2 needs layout=retriever-node"),
    (dict(layout="retriever-node", nodes=2, retriever_gpus="3", shards=2), r"shards=2 is invalid: each shard takes"),
    (dict(layout="somewhere"), r"layout='somewhere' is invalid"),
    (dict(layout="local", nodes=0), r"nodes=0 is invalid"),
    (dict(layout="local", overrides=["not an override"]), r"overrides entry 'not an override' is invalid"),
    (dict(layout="local", retriever_gpus="x"), r"'x' is not a GPU index"),
])
def test_render_refuses_impossible_jobs(kw, match):
    with pytest.raises(ConfigError, match=match):
        render_job(spec(**kw))


def test_unknown_option_is_named():
    with pytest.raises(ConfigError, match=r"unknown job option\(s\) \['gpus'\]"):
        JobSpec.from_mapping({"gpus": 4})


# ------------------------------------------------------------------------------------------- rendered scripts


@pytest.mark.parametrize("kw", [dict(layout="local"), dict(layout="per-node", nodes=2),
                                dict(layout="retriever-node", nodes=2), dict(layout="retriever-node", nodes=1),
                                dict(layout="local", mode="smoke"), dict(layout="per-node", nodes=2, mode="smoke")])
def test_rendered_scripts_pass_the_check(kw):
    text = render_job(spec(**kw))
    rep = check_script(text)
    assert rep.ok, rep.format()
    h = read_spec_header(text)
    p = plan_job(spec(**kw))
    assert h["train_gpus"] == list(p.train_gpus) and h["retriever_gpus"] == list(p.retriever_gpus)
    assert f"#SBATCH --nodes={p.nodes}" in text and f"#SBATCH --gres=gpu:{p.gpus_per_node}" in text
    assert not re.search(r"^\s*set -[a-z]*u", text, re.M) and "trap medret_cleanup EXIT" in text
    if kw["layout"] == "per-node":
        assert "--port 0 --address-file" in text and "/health" in text
    if kw.get("mode") != "smoke":
        assert f"trainer.n_gpus_per_node={len(p.train_gpus)}" in text and f"trainer.nnodes={p.train_nodes}" in text


def test_check_catches_hand_edits():
    good = render_job(spec(layout="local"))
    cases = {
        "tensor_model_parallel_size=1": ("tensor_model_parallel_size=2", "does not divide the 3 training GPUs"),
        "trainer.n_gpus_per_node=3": ("trainer.n_gpus_per_node=4", "trainer.n_gpus_per_node=4 but 3 GPUs"),
        'TRAIN_GPU_INDICES="0,1,2"': ('TRAIN_GPU_INDICES="0,1,2,3"', "TRAIN_GPU_INDICES=0,1,2,3 in the script differs"),
        "set -eo pipefail": ("set -euo pipefail", "`set -u` (nounset) breaks"),
        "trap medret_cleanup EXIT": ("true", "no `trap` for EXIT"),
        "#SBATCH --gres=gpu:4": ("#SBATCH --gres=gpu:3", "--gres=gpu:3 but the job was planned for 4"),
    }
    for old, (new, message) in cases.items():
        assert old in good
        rep = check_script(good.replace(old, new))
        assert not rep.ok and any(message in e for e in rep.errors), (old, rep.format())
    pern = render_job(spec(layout="per-node", nodes=2))
    rep = check_script(pern.replace("--port 0 --address-file", "--port 8000"))
    assert any("--port 0" in e for e in rep.errors)


SEED_LIKE = """#!/bin/bash
#SBATCH --nodes=1
#SBATCH --gres=gpu:4
set -euo pipefail
export CUDA_VISIBLE_DEVICES=0,1,2,3
NUM_TRAIN_GPUS=4
CUDA_VISIBLE_DEVICES=3 python retrieval_server.py --index_path x &
sleep 60
curl -s http://127.0.0.1:8000/health
echo ${SLURM_JOB_ID}
python3 -m verl.trainer.main_ppo \\
    trainer.n_gpus_per_node=$NUM_TRAIN_GPUS \\
    trainer.nnodes=1 \\
    actor_rollout_ref.rollout.tensor_model_parallel_size=4 \\
    retriever.url=http://127.0.0.1:8000/retrieve
"""


def test_check_flags_a_hand_written_script_with_the_seed_mistakes():
    rep = check_script(SEED_LIKE, "seed.sbatch")
    text = "\n".join(rep.errors)
    assert not rep.ok
    assert "leaves none for the retriever on GPU 3" in text           # 4 training GPUs + retriever on GPU 3
    assert "health check cannot fail the job" in text                 # curl -s ... /health
    assert "`set -u`" in text and "no `trap" in text
    fixed = SEED_LIKE.replace("NUM_TRAIN_GPUS=4", "NUM_TRAIN_GPUS=3").replace("size=4", "size=2")
    assert any("tensor_model_parallel_size=2 does not divide trainer.n_gpus_per_node=3" in e
               for e in check_script(fixed).errors)


# ------------------------------------------------------------------------------------------- dry run + CLI


def _bare_env(tmp_path):
    """No SLURM variables at all; a fake `medret`/`ray` are never needed in a dry run."""
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "LANG": "C.UTF-8"}
    return env


@pytest.mark.parametrize("kw", [dict(layout="local"), dict(layout="per-node", nodes=2),
                                dict(layout="retriever-node", nodes=2), dict(layout="local", mode="smoke")])
def test_dry_run_outside_slurm_prints_the_command(tmp_path, kw):
    job = tmp_path / "job.sbatch"
    job.write_text(render_job(spec(**kw, db_dir="/data/medrag")))
    out = subprocess.run(["bash", str(job), "--dry-run"], capture_output=True, text=True, cwd=tmp_path,
                         env=_bare_env(tmp_path), timeout=60)
    assert out.returncode == 0, out.stderr
    p = plan_job(spec(**kw))
    if kw.get("mode") == "smoke":
        assert "rollout-smoke" in out.stdout and "--backend=local" in out.stdout
    else:
        assert "verl.trainer.main_ppo" in out.stdout
        assert f"trainer.n_gpus_per_node={len(p.train_gpus)}" in out.stdout
        assert "retriever.topk=3" in out.stdout
    if kw["layout"] == "local" and kw.get("mode") != "smoke":
        assert "+retriever.gpu_id=\\'3\\'" in out.stdout and "+retriever.db_dir=\\'/data/medrag\\'" in out.stdout
        assert "CUDA_VISIBLE_DEVICES=0,1,2" in out.stdout  # the Ray workers' GPUs
    if kw["layout"] == "per-node":
        assert "retriever.url=\\'http://127.0.0.1:" in out.stdout
    if kw["layout"] == "retriever-node":
        assert "+retriever.backend=ray" in out.stdout and "+retriever.ray_placement=\\'retriever-node\\'" in out.stdout
        assert "+retriever.ray_attach=true" in out.stdout, "the trainer attaches to the actor `ray up` made"
    assert not list(tmp_path.glob("medret-run-*")), "a dry run must not create anything"


def test_dry_run_maps_gpu_indices_through_slurms_allocation(tmp_path):
    job = tmp_path / "job.sbatch"
    job.write_text(render_job(spec(layout="local")))
    env = dict(_bare_env(tmp_path), CUDA_VISIBLE_DEVICES="4,5,6,7")  # a cluster that hands out physical ids
    out = subprocess.run(["bash", str(job), "--dry-run"], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "CUDA_VISIBLE_DEVICES=4,5,6" in out.stdout and "+retriever.gpu_id=\\'7\\'" in out.stdout


def test_real_run_outside_slurm_refuses_a_multi_node_job(tmp_path):
    job = tmp_path / "job.sbatch"
    job.write_text(render_job(spec(layout="per-node", nodes=2)))
    out = subprocess.run(["bash", str(job)], capture_output=True, text=True, cwd=tmp_path, env=_bare_env(tmp_path),
                         timeout=60)
    assert out.returncode == 1 and "needs 2 nodes but has 1" in out.stderr


def test_cli_render_from_yaml_with_flag_override_then_check(tmp_path):
    cfg = tmp_path / "job.yaml"
    cfg.write_text("layout: per-node\nnodes: 2\ncorpus: MedCorp\nretriever: MedCPT\ntensor-parallel: 3\n"
                   "overrides: [trainer.total_epochs=15]\npartition: gpu\npaths-on-compute-nodes: true\n")
    out = tmp_path / "job.sbatch"
    cmd = [sys.executable, "-m", "medret.cli", "slurm", "render", "--config", str(cfg), "--nodes", "3", "-o", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    text = out.read_text()
    assert "#SBATCH --nodes=3" in text and "#SBATCH --partition=gpu" in text and "trainer.total_epochs=15" in text
    assert os.access(out, os.X_OK)
    c = subprocess.run([sys.executable, "-m", "medret.cli", "slurm", "check", str(out)], capture_output=True,
                       text=True, timeout=120)
    assert c.returncode == 0 and "OK" in c.stdout, c.stdout
    bad = subprocess.run(cmd[:-2] + ["--tp", "2", "-o", str(tmp_path / "bad.sbatch")], capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 1 and "tensor_parallel=2 is invalid" in bad.stderr
    assert not (tmp_path / "bad.sbatch").exists()


def test_rendered_script_parses_as_bash(tmp_path):
    for kw in (dict(layout="local"), dict(layout="per-node", nodes=2), dict(layout="retriever-node", nodes=1)):
        job = tmp_path / "job.sbatch"
        job.write_text(render_job(spec(**kw)))
        r = subprocess.run(["bash", "-n", str(job)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr


@pytest.mark.integration
def test_terminating_the_job_stops_every_child(tmp_path):
    """Outside SLURM: the job starts a Ray head and a retriever server, then a long "training"; SIGTERM to the job
    must leave none of them running (the trap), and the job exits 143."""
    import signal
    import time

    psutil = pytest.importorskip("psutil")
    job = tmp_path / "job.sbatch"
    job.write_text(render_job(spec(layout="per-node", nodes=1, train_cmd="echo TRAINING-STARTED; sleep 600",
                                   health_timeout=120)))
    import tempfile

    ray_tmp = tempfile.mkdtemp(prefix="mrt-", dir="/tmp")  # Ray's socket paths must stay under 107 bytes
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
               MEDRET_RETRIEVER_DEVICE="cpu", MEDRET_RAY_TMP=ray_tmp)
    env = {k: v for k, v in env.items() if not k.startswith("SLURM_")}
    log = open(tmp_path / "job.out", "w")
    p = subprocess.Popen(["bash", str(job)], cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
                         start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while "TRAINING-STARTED" not in (tmp_path / "job.out").read_text():
            assert p.poll() is None, (tmp_path / "job.out").read_text()[-3000:]
            assert time.monotonic() < deadline, (tmp_path / "job.out").read_text()[-3000:]
            time.sleep(0.5)
        kids = psutil.Process(p.pid).children(recursive=True)
        names = " ".join(" ".join(k.cmdline()) for k in kids if k.is_running())
        assert "serve" in names and "ray" in names and "sleep 600" in names, names
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=90) == 143
        gone, alive = psutil.wait_procs(kids, timeout=30)
        assert not alive, [" ".join(a.cmdline()) for a in alive]
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        import shutil as _sh

        _sh.rmtree(ray_tmp, ignore_errors=True)
    out = (tmp_path / "job.out").read_text()
    assert "received SIGTERM: stopping" in out


@pytest.mark.integration
def test_job_fails_fast_when_its_ray_node_cannot_start(tmp_path):
    """A raylet that dies at start (here: a temp dir too long for Ray's sockets) fails the job at once instead of
    waiting out the timeout."""
    job = tmp_path / "job.sbatch"
    job.write_text(render_job(spec(layout="local", train_cmd="echo SHOULD-NOT-RUN", health_timeout=300)))
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
               MEDRET_RAY_TMP=str(tmp_path / ("x" * 120)))
    env = {k: v for k, v in env.items() if not k.startswith("SLURM_")}
    r = subprocess.run(["bash", str(job)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=200)
    assert r.returncode == 1, r.stdout[-2000:] + r.stderr[-2000:]
    assert "a Ray node of this job exited while the cluster was starting" in r.stderr
    assert "SHOULD-NOT-RUN" not in r.stdout
    assert "did not come up" not in r.stderr  # it did not wait out the 300 s timeout


def test_a_job_spec_round_trips_through_its_mapping():
    """to_dict gives every job and retriever option under the names from_mapping (and the YAML) reads."""
    job = JobSpec.from_mapping({"layout": "per-node", "nodes": 2, "nprobe": 4, "overrides": ["a=1"],
                                "retriever_gpus": [3], "corpus": "sample", "pooling": "mean"})
    assert JobSpec.from_mapping(job.to_dict()) == job
    assert job.to_dict()["corpus_name"] == "sample" and job.to_dict()["retriever_gpus"] == "3"


def test_render_help_shows_each_job_options_default_from_its_declaration():
    r = subprocess.run([sys.executable, "-m", "medret.cli", "slurm", "render", "--help"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    text = " ".join(r.stdout.split())
    for expected in ("#SBATCH --output pattern (default %x-%j.out)", "(default 24:00:00)",
                     "(default Qwen/Qwen2.5-7B)", "--rrf-k", "--nprobe", "--fusion-depth", "--cache-dir",
                     "--batch-size", "--paths-on-compute-nodes"):
        assert expected in text, expected
    assert "(default ())" not in text
