"""Output cut short by its reader (`medret ... | head`): no traceback, exit status 141 (128 + SIGPIPE), for any
command. Real pipes: `head` in a shell, and a pipe whose reading end is already closed."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from medret.launch.slurm import JobSpec, render_job

REPO = Path(__file__).resolve().parents[2]


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_slurm_check_piped_to_head_prints_no_traceback(tmp_path):
    job = tmp_path / "job.sbatch"
    job.write_text(render_job(JobSpec.from_mapping({"corpus": "sample", "retriever": "BM25", "mode": "smoke"})))
    # 400 reports are several hundred KB: more than a pipe holds, so medret is still writing when head exits
    paths = " ".join([str(job)] * 400)
    script = (f"{sys.executable} -m medret.cli slurm check {paths} 2>{tmp_path}/err | head -3; "
              "echo \"status=${PIPESTATUS[0]}\"")
    r = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=_env(), timeout=300)
    lines = r.stdout.splitlines()
    assert len(lines) == 4 and lines[0] == f"{job}: OK", r.stdout
    err = (tmp_path / "err").read_text()
    assert lines[-1] == "status=141", (lines[-1], err)  # it did write into a closed pipe
    assert "Traceback" not in err and "BrokenPipeError" not in err, err


@pytest.mark.parametrize("args", [
    ["--help"],  # argparse's own output path (it swallows the failed write itself)
    ["slurm", "render", "--corpus", "sample", "--retriever", "BM25", "--quiet"],
    ["search", "sepsis", "--corpus", "TOY", "--json"],
    ["corpus", "info", "--corpus", "TOY"],
])
def test_any_command_writing_into_a_closed_pipe_exits_quietly(args, toy_corpus):
    args = [str(toy_corpus) if a == "TOY" else a for a in args]
    read, write = os.pipe()
    os.close(read)  # the reader is gone before medret writes a byte: every write fails with EPIPE
    try:
        r = subprocess.run([sys.executable, "-m", "medret.cli", *args], stdout=write, stderr=subprocess.PIPE,
                           text=True, env=_env(), timeout=300)
    finally:
        os.close(write)
    assert "Traceback" not in r.stderr and "BrokenPipeError" not in r.stderr, r.stderr
    # medret's commands report 141 (128 + SIGPIPE). --help exits 0 on every Python: newer argparse swallows the
    # failed write itself, and medret.cli does the same where an older one raises it from parse_args
    expected = 0 if "--help" in args else 141
    assert r.returncode == expected, r.stderr
