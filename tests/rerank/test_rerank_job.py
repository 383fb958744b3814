"""`medret slurm render` carries the rerank stage (reranker, rerank_depth, its recipe) to every retriever of the job:
`medret serve` on each node, the trainer's in-process retriever and the smoke run; read back by medret's own parser."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from medret.cli import build_parser, main
from medret.config import EngineOptions
from medret.launch.slurm import check_script

FLAGS = ["--reranker", "MedCPT-Cross-Encoder", "--rerank-depth", "20", "--reranker-max-length", "256"]
EXPECTED = dict(reranker="MedCPT-Cross-Encoder", rerank_depth=20, reranker_max_length=256)


def render(tmp_path: Path, layout: list[str]) -> Path:
    job = tmp_path / "job.sbatch"
    (tmp_path / "m").mkdir()
    (tmp_path / "d").mkdir()
    for name in ("train.parquet", "val.parquet"):
        (tmp_path / "d" / name).touch()
    assert main(["slurm", "render", "--corpus", "sample", "--retriever", "BM25", *layout, *FLAGS, "--model",
                 str(tmp_path / "m"), "--data-dir", str(tmp_path / "d"), "--quiet", "-o", str(job)]) == 0
    return job


def bash_words(job: Path, line_start: str, name: str) -> list[str]:
    [line] = [ln for ln in job.read_text().splitlines() if ln.startswith(line_start)]
    out = subprocess.run(["bash", "-c", f'{line}\nfor w in "${{{name}[@]}}"; do printf "%s\\0" "$w"; done'],
                         capture_output=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return [w.decode() for w in out.stdout.split(b"\0")[:-1]]


def parsed(command: str, words: list[str]) -> dict:
    got = EngineOptions.from_args(build_parser().parse_args([*command.split(), *words]))
    return {k: getattr(got, k) for k in EXPECTED}


@pytest.mark.parametrize("layout", [["--layout", "local"], ["--layout", "per-node", "--nodes", "2"]])
def test_the_job_gives_every_retriever_the_rerank_stage(tmp_path, layout):
    job = render(tmp_path, layout)
    report = check_script(job.read_text(), str(job))
    assert report.ok, report.errors
    assert parsed("serve", bash_words(job, "RETRIEVER_FLAGS=", "RETRIEVER_FLAGS")) == EXPECTED
    smoke = bash_words(job, "    SMOKE_CMD=(", "SMOKE_CMD")
    assert parsed("rollout-smoke", smoke[smoke.index("rollout-smoke") + 1:]) == EXPECTED
    if "local" in layout:  # the trainer's in-process retriever: +retriever.KEY=VALUE overrides
        body = job.read_text()
        for key, value in EXPECTED.items():
            assert f"+retriever.{key}=" in body and str(value) in body
