"""What `medret kare prepare` writes and what a rendered job reads agree by default (train.parquet, val.parquet), and
`medret slurm check`, the script's dry run and `medret doctor --sbatch` fail on a data folder, data file, model folder
or corpus folder that does not exist where they run (issue 21), unless the job was rendered with
--paths-on-compute-nodes: then the job's own first step checks them, before Ray or the retriever starts."""
from __future__ import annotations

import os
import subprocess

import pytest

from medret.cli import main
from medret.doctor import FAIL, OK
from medret.doctor.jobs import check_sbatch
from medret.launch.slurm import JobSpec, check_script, render_job
from tests.launch.conftest import nq_style_data


def spec(**kw):
    base = dict(layout="local", corpus="sample", retriever="BM25")
    base.update(kw)
    return JobSpec.from_mapping(base)


def dry_run(job, cwd, **env):
    environ = {"PATH": os.environ["PATH"], "HOME": str(cwd), "LANG": "C.UTF-8", **env}
    return subprocess.run(["bash", str(job), "--dry-run"], capture_output=True, text=True, cwd=cwd, env=environ,
                          timeout=60)


@pytest.fixture(scope="module")
def kare_out(tmp_path_factory):
    """A real `medret kare prepare` output folder (synthetic samples)."""
    root = tmp_path_factory.mktemp("kare")
    assert main(["kare", "synth", "--n", "120", "--positive-rate", "0.2", "--seed", "1",
                 "--out", str(root / "syn")]) == 0
    assert main(["kare", "prepare", "--samples", str(root / "syn" / "samples.json"), "--out", str(root / "data")]) == 0
    return root / "data"


def test_a_job_rendered_with_defaults_reads_what_kare_prepare_writes(kare_out, tmp_path, capsys):
    capsys.readouterr()
    written = sorted(p.name for p in kare_out.glob("*.parquet"))
    assert written == ["train.parquet", "val.parquet"]
    job = tmp_path / "job.sbatch"
    job.write_text(render_job(spec(data_dir=str(kare_out))))
    rep = check_script(job.read_text(), str(job), environ={})
    assert rep.ok, rep.format()
    assert rep.facts["data_files"] == (f"data.train_files={kare_out}/train.parquet, "
                                       f"data.val_files={kare_out}/val.parquet")
    r = dry_run(job, tmp_path)
    assert r.returncode == 0, r.stderr
    # hydra-quoted, then %q-quoted by the dry run's printout
    assert f"data.train_files=\\'{kare_out}/train.parquet\\'" in r.stdout
    assert f"data.val_files=\\'{kare_out}/val.parquet\\'" in r.stdout
    checks = check_sbatch(str(job))
    assert [c.status for c in checks] == [OK], [c.title for c in checks]


@pytest.fixture()
def nq_style(tmp_path):
    return nq_style_data(tmp_path)


def test_missing_validation_file_is_reported_by_check_dry_run_and_doctor(nq_style, tmp_path):
    job = tmp_path / "job.sbatch"
    job.write_text(render_job(spec(data_dir=str(nq_style))))
    missing = f"data.val_files={nq_style}/val.parquet"
    # slurm check
    rep = check_script(job.read_text(), str(job), environ={})
    assert not rep.ok
    err = next(e for e in rep.errors if e.startswith("missing training data"))
    assert missing in err and "it holds test.parquet, train.parquet" in err and "--val-file test.parquet" in err
    assert "data.train_files" not in err
    assert main(["slurm", "check", str(job)]) == 1
    # the script's dry run
    r = dry_run(job, tmp_path)
    assert r.returncode == 1
    assert f"FAILED: missing training data: {missing}" in r.stderr and "test.parquet train.parquet" in r.stderr
    # doctor --sbatch
    fails = [c for c in check_sbatch(str(job)) if c.status == FAIL]
    assert len(fails) == 1 and missing in fails[0].detail
    # the fix the messages name
    job.write_text(render_job(spec(data_dir=str(nq_style), val_file="test.parquet")))
    assert check_script(job.read_text(), environ={}).ok
    assert dry_run(job, tmp_path).returncode == 0


def test_both_files_missing_and_absolute_names(tmp_path):
    data = tmp_path / "empty"
    data.mkdir()
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "v.parquet").write_bytes(b"PAR1")
    job = tmp_path / "job.sbatch"
    job.write_text(render_job(spec(data_dir=str(data), val_file=str(other / "v.parquet"))))
    rep = check_script(job.read_text(), environ={})
    err = next(e for e in rep.errors if e.startswith("missing training data"))
    assert f"data.train_files={data}/train.parquet" in err and "v.parquet" not in err and "no .parquet file" in err
    r = dry_run(job, tmp_path)
    assert r.returncode == 1 and f"data.train_files={data}/train.parquet" in r.stderr
    assert "data.val_files" not in r.stderr


@pytest.mark.parametrize("kw,what", [
    (dict(data_dir="/nonexistent/cluster/data"), "the data folder DATA_DIR"),
    (dict(model="/nonexistent/models/qwen"), "the model MODEL"),
    (dict(db_dir="/nonexistent/medrag"), "the corpus folder MEDRET_DB_DIR"),
])
def test_a_path_that_does_not_exist_fails_check_dry_run_and_doctor(kare_out, tmp_path, capsys, kw, what):
    """Issue 21: a wrong --data-dir / --model / --db-dir passed every check, and the job started Ray and the retriever
    before the trainer failed."""
    job = tmp_path / "job.sbatch"
    job.write_text(render_job(spec(**{"data_dir": str(kare_out), **kw})))
    path = next(iter(kw.values()))
    rep = check_script(job.read_text(), environ={})
    assert not rep.ok and any(e.startswith(what) and repr(path) in e and "--paths-on-compute-nodes" in e
                              for e in rep.errors), rep.format()
    capsys.readouterr()
    assert main(["slurm", "check", str(job)]) == 1
    assert what in capsys.readouterr().out
    r = dry_run(job, tmp_path)
    assert r.returncode == 1 and f"FAILED: {what}={path} does not exist" in r.stderr, r.stderr
    fails = [c for c in check_sbatch(str(job)) if c.status == FAIL]
    assert len(fails) == 1 and path in fails[0].detail
    # the same script checked with the paths left to the compute nodes: OK here, and the dry run says so
    assert main(["slurm", "check", "--paths-on-compute-nodes", str(job)]) == 0
    # rendered so: check and dry run pass; the job itself (no --dry-run) fails in its first step, before Ray
    job.write_text(render_job(spec(**{"data_dir": str(kare_out), **kw, "paths_on_compute_nodes": True})))
    rep = check_script(job.read_text(), environ={})
    assert rep.ok and "checked by the job on its first node" in rep.facts["paths"], rep.format()
    r = dry_run(job, tmp_path)
    assert r.returncode == 0 and "paths not checked in a dry run" in r.stdout, r.stderr
    assert [c.status for c in check_sbatch(str(job))] == [OK]
    r = subprocess.run(["bash", str(job)], capture_output=True, text=True, cwd=tmp_path, timeout=60,
                       env={"PATH": os.environ["PATH"], "HOME": str(tmp_path), "LANG": "C.UTF-8"})
    assert r.returncode == 1 and f"FAILED: {what}={path} does not exist" in r.stderr, r.stdout + r.stderr
    assert "ray head" not in r.stdout + r.stderr and not list(tmp_path.glob("medret-run-*/ray-*"))


def test_a_hub_id_is_not_a_path():
    from medret.launch.paths import is_model_path

    assert not is_model_path("Qwen/Qwen2.5-7B") and not is_model_path("gpt2")
    assert is_model_path("/m/qwen") and is_model_path("./qwen") and is_model_path("~/qwen")
    assert is_model_path("models/qwen/7b")


def test_data_dir_from_the_environment_and_relative_to_the_submit_folder(nq_style, kare_out, tmp_path):
    """sbatch passes the submitting shell's DATA_DIR to the job, and a relative folder is the submit folder's: the
    check looks where the job will look."""
    job = tmp_path / "job.sbatch"
    job.write_text(render_job(spec(data_dir="nq_search")))  # relative: tmp_path/nq_search has no val.parquet
    assert not check_script(job.read_text(), environ={}, cwd=str(tmp_path)).ok
    assert dry_run(job, tmp_path).returncode == 1
    assert check_script(job.read_text(), environ={"DATA_DIR": str(kare_out)}, cwd=str(tmp_path)).ok
    assert dry_run(job, tmp_path, DATA_DIR=str(kare_out)).returncode == 0
    # elsewhere, relative to a folder without nq_search/: that folder does not exist there
    rep = check_script(job.read_text(), environ={}, cwd=str(kare_out))
    assert not rep.ok and any(e.startswith("the data folder DATA_DIR='nq_search'") for e in rep.errors)


@pytest.mark.parametrize("kw", [dict(mode="smoke"), dict(train_cmd="python3 my_trainer.py")])
def test_jobs_that_do_not_run_search_r1s_trainer_are_not_checked(nq_style, tmp_path, kw):
    job = tmp_path / "job.sbatch"
    job.write_text(render_job(spec(data_dir=str(nq_style), **kw)))
    rep = check_script(job.read_text(), environ={})
    assert rep.ok and "data_files" not in rep.facts
    assert dry_run(job, tmp_path).returncode == 0
