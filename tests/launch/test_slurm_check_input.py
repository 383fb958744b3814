"""`medret slurm check` and `doctor --sbatch` on damaged input (issue 24, item 22): a script with Windows line endings
(bash then fails on $'\r'), a file that is not UTF-8, a damaged job-spec block, and batch sizes veRL cannot divide
(--override data.train_batch_size=abc / 0) are refused with one clear line each, never a traceback or an OK."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from medret.cli import main
from medret.doctor import FAIL
from medret.doctor.jobs import check_sbatch
from medret.errors import ConfigError
from medret.launch.slurm import JobSpec, check_script, render_job


def smoke_job() -> str:
    return render_job(JobSpec.from_mapping({"corpus": "sample", "retriever": "BM25", "mode": "smoke"}))


def run_check(path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medret.cli", "slurm", "check", str(path)], capture_output=True,
                          text=True, timeout=120)


def test_a_script_with_windows_line_endings_is_refused(tmp_path):
    job = tmp_path / "job.sbatch"
    job.write_bytes(smoke_job().replace("\n", "\r\n").encode())
    r = run_check(job)
    assert r.returncode == 1 and "FAILED" in r.stdout, r.stdout
    assert "carriage return" in r.stdout and "dos2unix" in r.stdout
    # what bash makes of it: the reason the check must fail
    dry = subprocess.run(["bash", str(job), "--dry-run"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert dry.returncode != 0 and "$'\\r': command not found" in dry.stderr
    fails = [c for c in check_sbatch(str(job)) if c.status == FAIL]
    assert fails and any("carriage return" in c.detail for c in fails)


def test_a_file_that_is_not_utf8_is_one_clear_error(tmp_path, capsys):
    job = tmp_path / "job.sbatch"
    text = smoke_job().encode()
    job.write_bytes(text[:100] + b"\xff\xfe" + text[100:])
    r = run_check(job)
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    [line] = r.stderr.strip().splitlines()
    assert line.startswith("medret: error:") and str(job) in line and "not UTF-8" in line and "offset 100" in line
    [fail] = check_sbatch(str(job))
    assert fail.status == FAIL and "not UTF-8" in fail.detail


@pytest.mark.parametrize("change", [
    lambda h: h.pop("gpus_per_node"),
    lambda h: h.update(nodes="two"),
    lambda h: h.update(retriever_gpus=[3, "x"]),
    lambda h: h.update(layout=None),
])
def test_a_damaged_spec_block_is_reported_not_raised(change, tmp_path):
    text = smoke_job()
    line = next(ln for ln in text.splitlines() if ln.startswith("# {"))
    header = json.loads(line[2:])
    change(header)
    damaged = text.replace(line, "# " + json.dumps(header))
    rep = check_script(damaged)
    assert not rep.ok and any("job-spec block is damaged" in e and "re-render" in e for e in rep.errors), rep.format()
    job = tmp_path / "job.sbatch"
    job.write_text(damaged)
    r = run_check(job)
    assert r.returncode == 1 and "Traceback" not in r.stderr and "job-spec block is damaged" in r.stdout


@pytest.mark.parametrize("value", ["abc", "0", "-4", "1.5"])
def test_a_batch_size_that_is_not_a_positive_whole_number_is_refused(value, tmp_path):
    with pytest.raises(ConfigError, match=rf"data.train_batch_size='{value}' is invalid: veRL needs a positive"):
        render_job(JobSpec.from_mapping({"recipe": "ppo", "gpus_per_node": 8, "retriever_gpus": "none",
                                         "overrides": [f"data.train_batch_size={value}"]}))
    assert main(["slurm", "render", "--recipe", "ppo", "--gpus-per-node", "8", "--retriever-gpus", "none",
                 "--override", f"data.train_batch_size={value}", "-o", str(tmp_path / "x.sbatch")]) == 1
    assert not (tmp_path / "x.sbatch").exists()
    # a script edited to it: the check says so
    text = render_job(JobSpec.from_mapping({"recipe": "ppo", "gpus_per_node": 8, "retriever_gpus": "none",
                                            "paths_on_compute_nodes": True}))
    assert check_script(text).ok
    rep = check_script(text.replace("data.train_batch_size=512", f"data.train_batch_size={value}"))
    assert not rep.ok and any(f"data.train_batch_size={value!r} is invalid" in e for e in rep.errors), rep.format()


@pytest.mark.parametrize("mode,word", [("smoke", "--ray-attach"), ("train", "+retriever.ray_attach=true")])
def test_a_retriever_node_script_whose_trainer_side_would_create_an_actor_fails_the_check(mode, word):
    """Issue 21: scripts rendered before it let the trainer's side create a second actor."""
    text = render_job(JobSpec.from_mapping({"layout": "retriever-node", "nodes": 2, "mode": mode,
                                            "paths_on_compute_nodes": True}))
    assert check_script(text).ok and word in text
    rep = check_script(text.replace(" " + word, ""))
    assert not rep.ok and any(f"({word} missing)" in e for e in rep.errors), rep.format()
