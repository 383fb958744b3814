"""`medret slurm render` passes a local model folder's encoder options (declared in EngineOptions: --like, --pooling,
prefixes, normalisation, token limits, document format, --query-model/--doc-model, --models-dir) to every place a job
makes a retriever: `medret serve` (per-node), `medret ray up` and the trainer's Ray retriever (retriever-node), the
trainer's in-process retriever (local) and the smoke run (issue 14: render had no such flags)."""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from medret.cli import build_parser, main
from medret.config import EngineOptions, RetrieverConfig
from medret.errors import ConfigError
from medret.launch.slurm import JobSpec, check_script, render_job

FLAGS = ["--pooling", "mean", "--query-prefix", "it's a query: ", "--doc-prefix", "passage: ", "--no-normalize",
         "--max-length", "128", "--doc-format", "concat", "--models-dir", "/models dir/x",
         "--doc-model", "/models/doc-enc"]
EXPECTED = dict(pooling="mean", query_prefix="it's a query: ", doc_prefix="passage: ", normalize=False,
                max_length=128, doc_format="concat", models_dir="/models dir/x", doc_model="/models/doc-enc")
LAYOUTS = [["--layout", "local"], ["--layout", "per-node", "--nodes", "2"], ["--layout", "retriever-node",
                                                                              "--nodes", "2"]]


def render(tmp_path: Path, layout: list[str], flags=FLAGS) -> Path:
    job = tmp_path / "job.sbatch"
    assert main(["slurm", "render", "--corpus", "sample", "--retriever", "/models/my-encoder", *layout, *flags,
                 "--quiet", "-o", str(job)]) == 0
    return job


def bash_array(job: Path, line_start: str, name: str) -> list[str]:
    """The words bash makes of the array ``name`` assigned on the script line starting with ``line_start``."""
    [line] = [ln for ln in job.read_text().splitlines() if ln.startswith(line_start)]
    out = subprocess.run(["bash", "-c", f'{line}\nfor w in "${{{name}[@]}}"; do printf "%s\\0" "$w"; done'],
                         capture_output=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return [w.decode() for w in out.stdout.split(b"\0")[:-1]]


def engine_options(command: str, words: list[str]) -> EngineOptions:
    """What medret's own parser makes of ``words`` given to ``command`` (serve, ray up, rollout-smoke)."""
    argv = [*command.split(), *words]
    return EngineOptions.from_args(build_parser().parse_args(argv))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_rendered_job_gives_every_retriever_the_encoder_options(tmp_path, layout):
    job = render(tmp_path, layout)
    report = check_script(job.read_text(), str(job))
    assert report.ok, report.errors
    # RETRIEVER_FLAGS: what `medret serve` (per-node) and `medret ray up` (retriever-node) get
    flags = bash_array(job, "RETRIEVER_FLAGS=", "RETRIEVER_FLAGS")
    for command in ("serve", "ray up"):
        got = engine_options(command, ["--retriever", "/models/my-encoder", *flags])
        assert {k: getattr(got, k) for k in EXPECTED} == EXPECTED, command
    body = job.read_text()
    if "per-node" in layout:  # the serve command of each node
        serve = body[body.index("medret_node_serve() {"):]
        assert 'cmd+=("${RETRIEVER_FLAGS[@]}")' in serve[:serve.index("\n}\n")]
    if "retriever-node" in layout:
        [ray_up] = re.findall(r'ray up [^\n]*\n[^\n]*\n[^\n]*', body)
        assert '"${RETRIEVER_FLAGS[@]}"' in ray_up
    # the smoke run's command line
    smoke = bash_array(job, "    SMOKE_CMD=(", "SMOKE_CMD")
    words = smoke[smoke.index("rollout-smoke") + 1:]
    got = engine_options("rollout-smoke", words)
    assert {k: getattr(got, k) for k in EXPECTED} == EXPECTED


@pytest.mark.parametrize("layout", [LAYOUTS[0], LAYOUTS[2]])
def test_the_trainers_retriever_block_gets_the_encoder_options(tmp_path, layout):
    """local and retriever-node: the trainer builds the retriever from +retriever.KEY=VALUE hydra overrides."""
    job = render(tmp_path, layout)
    out = subprocess.run(["bash", str(job), "--dry-run"], capture_output=True, text=True, cwd=tmp_path,
                         env={"PATH": os.environ["PATH"], "HOME": str(tmp_path), "LANG": "C.UTF-8"}, timeout=60)
    assert out.returncode == 0, out.stderr
    # the words bash passes to the trainer (its command array, over several lines)
    script = job.read_text()
    block = script[script.index("medret_build_train_cmd() {"):]
    block = block[:block.index("\n}\n") + 3]
    words = subprocess.run(["bash", "-c", f'{block}\nmedret_build_train_cmd\nprintf "%s\\0" "${{TRAIN_CMD[@]}}"'],
                           capture_output=True, timeout=30, env={"PATH": os.environ["PATH"]}).stdout
    overrides = [w.decode() for w in words.split(b"\0")[:-1] if w.startswith(b"+retriever.")]
    hydra = _hydra_parser()
    if hydra is not None:  # hydra reads each override as the trainer will
        parsed = hydra.OverridesParser.create().parse_overrides(overrides)
        block_ = {o.key_or_group.split(".", 1)[1]: o.value() for o in parsed}
    else:  # the same words, split at the first '=' with hydra's quoting undone for this test's values
        block_ = {}
        for o in overrides:
            key, value = o.split("=", 1)
            if value.startswith("'"):
                value = value[1:-1].replace("\\'", "'")
            block_[key.split(".", 1)[1]] = value
    config = RetrieverConfig.from_mapping({k: v for k, v in block_.items() if k not in ("gpu_id", "ray_address",
                                                                                        "ray_job")})
    assert {k: getattr(config, k) for k in EXPECTED} == EXPECTED


def _hydra_parser():
    """hydra's override parser where hydra-core is installed (the trainer environments), else None."""
    try:
        from hydra.core.override_parser import overrides_parser
    except ImportError:
        return None
    return overrides_parser


def test_yaml_and_flags_are_checked_as_the_retriever_checks_them(tmp_path, capsys):
    with pytest.raises(ConfigError, match="like='nope' is invalid"):
        JobSpec.from_mapping({"retriever": "/models/x", "like": "nope"})
    with pytest.raises(ConfigError, match="pooling='max' is invalid"):
        JobSpec.from_mapping({"retriever": "/models/x", "pooling": "max"})
    with pytest.raises(ConfigError, match="query_prefix.*control character"):
        render_job(JobSpec.from_mapping({"retriever": "/models/x", "query_prefix": "q\nrm -rf /"}))
    cfg = tmp_path / "job.yaml"
    cfg.write_text("retriever: /models/my-encoder\nlike: e5\nmodels-dir: /m\n")
    job = tmp_path / "job.sbatch"
    assert main(["slurm", "render", "--config", str(cfg), "--query-max-length", "48", "--quiet", "-o", str(job)]) == 0
    got = engine_options("serve", ["--retriever", "/models/my-encoder",
                                   *bash_array(job, "RETRIEVER_FLAGS=", "RETRIEVER_FLAGS")])
    assert (got.like, got.models_dir, got.query_max_length) == ("e5", "/m", 48)


def test_without_encoder_options_the_job_is_as_before(tmp_path):
    job = render(tmp_path, LAYOUTS[1], flags=[])
    assert bash_array(job, "RETRIEVER_FLAGS=", "RETRIEVER_FLAGS") == []
    assert "+retriever.pooling" not in job.read_text()
