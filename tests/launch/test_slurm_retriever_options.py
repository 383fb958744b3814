"""Every declared retriever option (medret.config.EngineOptions) is a `medret slurm render` flag and a --config YAML
key, and reaches every retriever process of the job as its layout needs (issue 21): `medret serve` on each node
(per-node), `medret ray up`, the smoke run and the trainer's +retriever block (retriever-node), the smoke run and the
trainer's in-process retriever (local). Generated from the declarations: an option added to EngineOptions is tested
here with no edit. Each process's words are read back by what reads them in the job -- bash, then medret's own
argument parser or hydra's override parser -- and the Ray actor every process of a retriever-node job names is the
one `ray up` created."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from medret import options
from medret.cli import build_parser, main
from medret.config import EngineOptions, RayOptions, RetrieverConfig
from medret.errors import ConfigError
from medret.integrations.cli import rollout_block
from medret.integrations.searchr1_runtime import retriever_config
from medret.launch.slurm import JobSpec, check_script, render_job
from medret.transports.ray import actor_base_name
from tests.launch.conftest import hydra_text

DECLS = options.declarations(EngineOptions)
DEFAULTS = options.defaults(EngineOptions)
# values for the options whose check refuses the generic value of their kind (a recipe name; a job's device; names
# that reach the script as they are)
SPECIAL = {"like": "e5", "reranker_like": "ms-marco-MiniLM-L12-v2", "device": "cpu", "corpus_name": "/x/corpus",
           "retriever_name": "/x/encoder"}  # no spaces
NOT_IN_A_JOB = {"gpu_id"}  # the job maps --retriever-gpus to a GPU id itself (refused below)


def sample_value(name: str) -> Any:
    """A value of the option's declared kind that differs from its default and passes its check."""
    decl = DECLS[name]
    if name in SPECIAL:
        return SPECIAL[name]
    if decl.choices:
        return next(c for c in decl.choices if c != DEFAULTS[name])
    if decl.kind is bool:
        return not DEFAULTS[name] if DEFAULTS[name] is not None else False
    if decl.kind is int:
        return 7 if DEFAULTS[name] != 7 else 8
    if decl.kind is float:
        return 0.5
    return f"/x/{name} dir"  # a path-like string with a space: it must reach each process as one word


GIVEN = {name: sample_value(name) for name, d in DECLS.items() if d.flags and name not in NOT_IN_A_JOB}
FLAGLESS = {name for name, d in DECLS.items() if not d.flags}


def flag_words() -> list[str]:
    words = []
    for name, value in GIVEN.items():
        flag = DECLS[name].flags[0]
        if DECLS[name].kind is bool:
            words.append(flag if value else "--no-" + flag[2:])
        else:
            words += [flag, str(value)]
    return words


LAYOUTS = {"local": [], "per-node": ["--nodes", "2"], "retriever-node": ["--nodes", "2", "--shards", "2"]}
RUN_ENV = {"RAY_ADDRESS": "10.1.2.3:20100", "MEDRET_RAY_JOB": "4242", "MEDRET_HEALTH_TIMEOUT": "77",
           "RETRIEVER_URL": "http://127.0.0.1:5555", "RETRIEVER_GPU": "3"}


def render(tmp_path: Path, layout: str, mode: list[str]) -> Path:
    job = tmp_path / f"{layout}.sbatch"
    assert main(["slurm", "render", "--layout", layout, *LAYOUTS[layout], *mode, *flag_words(),
                 "--paths-on-compute-nodes", "--quiet", "-o", str(job)]) == 0
    return job


def command_words(job: Path, build: str, array: str) -> list[str]:
    """The words bash makes of the script's command ``array`` (built by its function ``build``) at run time."""
    text = job.read_text()
    body = text[:text.rindex('medret_setup "$@"')]  # the script's definitions, without running the job
    env = {"PATH": os.environ["PATH"], "LANG": "C.UTF-8", "MEDRET": "medret", **RUN_ENV}
    script = f'{body}\nMEDRET=(medret)\n{build}\nfor w in "${{{array}[@]}}"; do printf "%s\\0" "$w"; done'
    out = subprocess.run(["bash", "-c", script], capture_output=True, env=env, timeout=30)
    assert out.returncode == 0, out.stderr
    return [w.decode() for w in out.stdout.split(b"\0")[:-1]]


def parsed(argv: list[str]) -> Any:
    return build_parser().parse_args(argv)


def engine_of(config: Any) -> dict[str, Any]:
    return {name: getattr(config, name) for name in GIVEN}


def expected() -> dict[str, Any]:
    return dict(GIVEN)


def trainer_block(job: Path) -> dict[str, Any]:
    """The trainer's +retriever block, each value read back as hydra reads it (hydra's own parser where it is
    installed, in the trainer environments)."""
    words = [w for w in command_words(job, "medret_build_train_cmd", "TRAIN_CMD") if w.startswith("+retriever.")]
    try:
        from hydra.core.override_parser.overrides_parser import OverridesParser
    except ImportError:
        return {w.split("=", 1)[0].split(".", 1)[1]: hydra_text(w.split("=", 1)[1]) for w in words}
    return {o.key_or_group.split(".", 1)[1]: o.value() for o in OverridesParser.create().parse_overrides(words)}


def test_every_declared_option_is_covered():
    """The table above is generated: every EngineOptions option has a value here or is refused/flag-less."""
    assert set(GIVEN) | NOT_IN_A_JOB | FLAGLESS == set(DECLS)
    for name in GIVEN:  # each value passes the option's own check and differs from the default
        assert EngineOptions(**{**GIVEN, name: GIVEN[name]}) and GIVEN[name] != DEFAULTS[name]


@pytest.mark.parametrize("mode", [[], ["--smoke"]], ids=["train", "smoke"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_every_option_reaches_every_retriever_process(tmp_path, layout, mode):
    job = render(tmp_path, layout, mode)
    report = check_script(job.read_text(), str(job))
    assert report.ok, report.errors
    want = expected()
    names: dict[str, str] = {}
    if layout == "per-node":  # each node's `medret serve`
        words = command_words(job, "medret_build_retriever_cmd", "RETRIEVER_CMD")
        assert words[:2] == ["medret", "serve"]
        assert engine_of(EngineOptions.from_args(parsed(words[1:]))) == want
    if layout == "retriever-node":  # `medret ray up`, as its own parser reads it
        words = command_words(job, "medret_build_retriever_cmd", "RETRIEVER_CMD")
        assert words[:3] == ["medret", "ray", "up"]
        args = parsed(words[1:])
        up = RetrieverConfig.from_args(args, backend="ray")
        assert engine_of(up) == want and up.ray_shards == 2 and up.ray_placement == "retriever-node"
        assert not up.ray_attach and (up.ray_address, up.ray_job, args.timeout) == ("10.1.2.3:20100", "4242", 77.0)
        names["ray up"] = actor_base_name(up)
    if mode:  # the smoke run: as `medret rollout-smoke` builds its retriever (Search-R1's block reader)
        words = command_words(job, "medret_build_smoke_cmd", "SMOKE_CMD")
        args = parsed(words[1:])
        block = rollout_block(args)
        if layout == "per-node":
            assert block == {"backend": "http", "topk": 3, "url": "http://127.0.0.1:5555/retrieve"}
        else:
            config = retriever_config(block)
            assert engine_of(config) == want
            if layout == "retriever-node":
                assert config.ray_attach, "the smoke run attaches to the job's actor, never creates one"
                names["smoke"] = actor_base_name(config)
    elif layout != "per-node":  # the trainer's block, as hydra and then Search-R1's block reader read it
        block = trainer_block(job)
        config = retriever_config(block)
        assert engine_of(config) == want
        if layout == "retriever-node":
            assert config.ray_attach and config.ray_shards == 2
            names["trainer"] = actor_base_name(config)
    if layout == "retriever-node":  # one actor: every process names the one `ray up` created
        assert len(set(names.values())) == 1, names


def test_yaml_keys_are_the_same_options(tmp_path):
    """The --config YAML takes the same options under their names (or Search-R1's spellings); flags override it."""
    cfg = tmp_path / "job.yaml"
    cfg.write_text("layout: retriever-node\nnodes: 2\ncorpus: sample\nretriever: /models/enc\nnprobe: 16\n"
                   "rrf-k: 60\ncache_dir: /scratch/cache\nfusion_depth: 40\nbatch_size: 64\n"
                   "paths_on_compute_nodes: true\n")
    job = tmp_path / "job.sbatch"
    assert main(["slurm", "render", "--config", str(cfg), "--nprobe", "32", "--corpus", "Textbooks", "--quiet",
                 "-o", str(job)]) == 0
    words = command_words(job, "medret_build_retriever_cmd", "RETRIEVER_CMD")
    up = RetrieverConfig.from_args(parsed(words[1:]), backend="ray")
    assert (up.corpus_name, up.retriever_name, up.nprobe, up.rrf_k, up.cache_dir, up.fusion_depth, up.batch_size) \
        == ("Textbooks", "/models/enc", 32, 60, "/scratch/cache", 40, 64)


def test_options_a_job_cannot_pass_on_are_refused_by_name():
    with pytest.raises(ConfigError, match=r"gpu_id \(--gpu-id\)=1 is invalid in a job.*--retriever-gpus 1"):
        render_job(JobSpec.from_mapping({"gpu_id": 1}))
    with pytest.raises(ConfigError, match=r"device \(--device\)='cuda:1' is invalid in a job: give cpu or cuda"):
        render_job(JobSpec.from_mapping({"device": "cuda:1"}))
    with pytest.raises(ConfigError, match=r"device \(--device\)='cuda' is invalid with retriever_gpus=none"):
        render_job(JobSpec.from_mapping({"device": "cuda", "retriever_gpus": "none"}))
    for name in sorted(FLAGLESS):  # no flag: the trainer's block carries it (local, train), no process's argv does
        value = not DEFAULTS[name] if DEFAULTS[name] is not None else True
        text = render_job(JobSpec.from_mapping({name: value, "paths_on_compute_nodes": True}))
        assert f"+retriever.{name}={str(value).lower()}" in text
        with pytest.raises(ConfigError, match=rf"{name}={value!r} cannot reach this job's retriever processes"):
            render_job(JobSpec.from_mapping({name: value, "layout": "per-node"}))
    with pytest.raises(ConfigError, match=r"like='nope' is invalid"):
        JobSpec.from_mapping({"retriever": "/models/x", "like": "nope"})
    with pytest.raises(ConfigError, match=r"unknown job option\(s\) \['nprobes'\]"):
        JobSpec.from_mapping({"nprobes": 3})


def test_an_override_of_a_retriever_option_names_the_job_flag():
    """`--override +retriever.nprobe=64` reached only the trainer's block, not the servers or the actor."""
    for key, flag in (("+retriever.nprobe=64", "--nprobe"), ("+retriever.rrf_k=60", "--rrf-k"),
                      ("+retriever.corpus=x", "--corpus"), ("+retriever.ray_placement=any", "--layout"),
                      ("+retriever.db_dir=/d", "--db-dir")):
        with pytest.raises(ConfigError, match="would reach only the trainer's retriever") as e:
            render_job(JobSpec.from_mapping({"overrides": [key]}))
        assert flag in str(e.value), (key, str(e.value))


def test_ray_options_not_set_by_the_job_stay_out_of_it():
    """The job writes only the Ray options its layout sets (placement, shards, attach) and the run-time ones."""
    ray = options.declarations(RayOptions)
    job = render_job(JobSpec.from_mapping({"layout": "retriever-node", "nodes": 2, "paths_on_compute_nodes": True}))
    for name in ray:
        if name not in ("ray_placement", "ray_attach", "ray_address", "ray_job", "timeout"):
            assert f"+retriever.{name}=" not in job and f"{ray[name].flags[0]}=" not in job, name


@pytest.mark.parametrize("mode", [[], ["--smoke"]], ids=["train", "smoke"])
def test_on_a_gpu_retriever_node_every_process_names_the_actor_ray_up_creates(tmp_path, mode):
    """Issue 21, item 1: `ray up` ran with --device cuda and the trainer's side without it (and the smoke run without
    --shards), so the trainer computed another actor name and created a second copy of the index."""
    job = tmp_path / "job.sbatch"
    assert main(["slurm", "render", "--layout", "retriever-node", "--nodes", "2", "--shards", "2", "--corpus",
                 "sample", "--retriever", "/models/enc", "--pooling", "mean", *mode, "--paths-on-compute-nodes",
                 "--quiet", "-o", str(job)]) == 0
    up = RetrieverConfig.from_args(parsed(command_words(job, "medret_build_retriever_cmd", "RETRIEVER_CMD")[1:]),
                                   backend="ray")
    assert up.device == "cuda" and up.ray_shards == 2 and up.pooling == "mean"
    if mode:
        other = retriever_config(rollout_block(parsed(command_words(job, "medret_build_smoke_cmd", "SMOKE_CMD")[1:])))
    else:
        other = retriever_config(trainer_block(job))
    assert other.ray_attach and (other.device, other.ray_shards, other.ray_num_gpus) == ("cuda", 2, 0.0)
    assert actor_base_name(other) == actor_base_name(up)
