"""No shell injection through `medret slurm render` (issue 13, item 1), and `medret slurm check` flags injected
lines in any script.

A table of hostile values x every job option, given as flags and in the --config YAML: each is either refused
with a message naming the option (and no script is written), or rendered quoted — then the script's dry run,
run by bash in a temporary folder, must execute nothing (a canary file is never created) and `slurm check` must
pass it. The same table put *unquoted* into scripts by hand (as an unchecked renderer would) makes
`slurm check` fail, and whenever such a script does run the canary, the check has flagged it."""
from __future__ import annotations

import os
import shlex
import subprocess

import pytest
import yaml

from medret import options
from medret.cli import main
from medret.config import EngineOptions
from medret.launch.slurm import JobSpec, check_script, render_job
from tests.launch.conftest import hydra_text

# {c} is the canary's absolute path
HOSTILE = [
    "x\ntouch {c}",
    "x$(touch {c})",
    "$(touch {c})",
    "x`touch {c}`",
    "x; touch {c}",
    "x && touch {c}",
    "x' ; touch {c} ; '",
    'x" ; touch {c} ; "',
    "x\rtouch {c}",
    "x\x1btouch {c}",
    "x\u2028touch {c}",
]
# values that run the canary in every position when placed unquoted
ALWAYS_FLAGGED = {0, 1, 2, 3, 4, 5, 8, 9, 10}

# every job option and every retriever option, with its flag, from their declarations; a switch (a bool: --normalize /
# --no-normalize) has no value to put a hostile string in
DECLARED = {**options.declarations(JobSpec), **options.declarations(EngineOptions)}
FLAG_OF = {name: d.flags[0] if d.flags and d.kind is not bool else None for name, d in DECLARED.items()}


def _bare_env(tmp_path):
    return {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "LANG": "C.UTF-8"}


def _dry_run(script, tmp_path):
    return subprocess.run(["bash", str(script), "--dry-run"], capture_output=True, text=True, cwd=tmp_path,
                          env=_bare_env(tmp_path), timeout=60)


def _value_for(field: str, value: str):
    if field in ("sbatch_extra",):
        return [value, "--constraint=" + value]
    if field == "overrides":
        return [value, "trainer.note=" + value]
    return value


def _render(args: list[str], capsys) -> tuple[int, str]:
    try:
        rc = main(args)
    except SystemExit as e:  # argparse's own refusals (a choice, a whole number)
        rc = int(e.code or 0)
    return rc, capsys.readouterr().err


FIELDS = list(DECLARED)


@pytest.mark.parametrize("field,source", [(f, s) for f in FIELDS for s in ("flags", "yaml")
                                          if s == "yaml" or FLAG_OF.get(f)])
def test_hostile_values_are_refused_or_quoted(field, source, tmp_path, capsys):
    canary = tmp_path / "canary"
    out = tmp_path / "job.sbatch"
    base = {"layout": "local", "corpus_name": "sample", "retriever_name": "BM25"} if source == "flags" else \
        {"layout": "per-node", "nodes": 2, "corpus_name": "sample", "retriever_name": "BM25", "mode": "smoke"}
    for template in HOSTILE:
        raw = template.format(c=canary)
        value = _value_for(field, raw)
        if source == "flags":
            args = ["slurm", "render", "--quiet", "-o", str(out)]
            for k, v in base.items():
                args += [FLAG_OF[k], str(v)]
            args.append("--paths-on-compute-nodes")  # the folders a hostile value names exist nowhere
            for v in (value if isinstance(value, list) else [value]):
                args += [FLAG_OF[field], v]
        else:
            cfg = tmp_path / "job.yaml"
            cfg.write_text(yaml.safe_dump({**base, "paths_on_compute_nodes": True, field: value}), encoding="utf-8")
            args = ["slurm", "render", "--quiet", "-o", str(out), "--config", str(cfg)]
        rc, err = _render(args, capsys)
        if rc != 0:  # refused: the message names the option, nothing is written
            assert field in err or (FLAG_OF.get(field) or "--?") in err, (field, raw, err)
            assert "Traceback" not in err and not out.exists(), (field, raw, err)
            continue
        text = out.read_text(encoding="utf-8")
        r = _dry_run(out, tmp_path)
        assert not canary.exists(), (field, raw, r.stdout[-2000:], r.stderr[-2000:])
        assert r.returncode == 0, (field, raw, r.stderr[-2000:])
        rep = check_script(text)
        assert rep.ok, (field, raw, rep.format())
        out.unlink()


def test_every_text_field_refuses_newlines_and_control_characters(capsys, tmp_path):
    """Each text option, through the YAML file, with a newline: refused, naming it."""
    text_fields = [name for name in FIELDS if DECLARED[name].kind in (str, tuple) and name != "retriever_gpus"]
    for field in text_fields:
        for bad in ("a\nb", "a\x00b", "a\x7fb"):
            with pytest.raises(Exception) as e:
                render_job(JobSpec.from_mapping({"corpus": "sample", "retriever": "BM25",
                                                 field: _value_for(field, bad)}))
            assert field in str(e.value), (field, bad, str(e.value))


@pytest.mark.parametrize("field,value,message", [
    ("partition", "gpu;x", "partition (--partition)='gpu;x' is invalid: #SBATCH --partition="),
    ("time", "72 hours", "give minutes, MM:SS, HH:MM:SS"),
    ("mem", "64 GB", "give a size such as 64G"),
    ("qos", "$(id)", "qos (--qos)="),
    ("output", "logs/$USER-%j.out", "output (--log)="),
    ("sbatch_extra", ["--constraint=a100 --x"], "sbatch_extra (--sbatch-extra) entry"),
    ("sbatch_extra", ["--nodes=3"], "sets --nodes, which medret writes itself"),
    ("python", "python3 $(id)", "which only a shell gives meaning to"),
    ("python", "python3 'unbalanced", "No closing quotation"),
])
def test_sbatch_values_are_validated_per_option(field, value, message):
    from medret.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        render_job(JobSpec.from_mapping({"corpus": "sample", "retriever": "BM25", field: value}))
    assert message in str(e.value)


def test_valid_values_still_render(tmp_path):
    spec = JobSpec.from_mapping({"corpus": "sample", "retriever": "BM25", "partition": "gpu,gpu-long",
                                 "time": "3-00:00:00", "mem": "0", "qos": "high.prio", "output": "logs/%x-%j.out",
                                 "sbatch_extra": ["--exclusive", "--constraint=a100"],
                                 "python": "'/opt/my env/bin/python' -X faulthandler",  # argv words, shlex rules
                                 "model": "/models/Qwen 7B (it's mine)", "db_dir": "/data/med rag",
                                 "paths_on_compute_nodes": True})
    out = tmp_path / "job.sbatch"
    out.write_text(render_job(spec))
    assert check_script(out.read_text()).ok
    r = _dry_run(out, tmp_path)
    assert r.returncode == 0, r.stderr
    # each python word and the model reach the trainer's argv as given (printed by the dry run, %q-quoted)
    assert "/opt/my\\ env/bin/python -X faulthandler -m verl.trainer.main_ppo" in r.stdout
    words = shlex.split(r.stdout[r.stdout.index("/opt/my"):].replace("\\\n", " "))
    [model] = [w.split("=", 1)[1] for w in words if w.startswith("actor_rollout_ref.model.path=")]
    assert hydra_text(model) == "/models/Qwen 7B (it's mine)"


# ------------------------------------------------------------------------------------------- hand-made scripts
SENTINELS = {  # field -> (value in the clean render, extra job options)
    "corpus": ("sentinelcorpus", {}), "retriever": ("sentinelretr", {}), "db_dir": ("/sentinel/db", {}),
    "job_name": ("sentineljob", {}), "partition": ("sentinelpart", {}), "account": ("sentinelacct", {}),
    "qos": ("sentinelqos", {}), "time": ("98:76:54", {}), "mem": ("98765M", {}),
    "output": ("sentinel-%j.out", {}), "sbatch_extra": ("sentinelextra", {"sbatch_extra": ["--constraint=SENT"]}),
    "model": ("sentinel/model", {}), "data_dir": ("sentinel/data", {}),
    "train_file": ("sentinel-train.parquet", {}), "val_file": ("/sentinel/val.parquet", {}),
    "overrides": ("sentinelov", {"overrides": ["trainer.note=SENT"]}), "train_cmd": ("sentinel-train-cmd", {}),
    "python": ("sentinelpy", {}), "health_timeout": ("987654", {}), "max_turns": ("8765", {}),
    "topk": ("8764", {}), "cpus_per_task": ("8763", {}), "smoke_turns": ("8762", {"mode": "smoke"}),
}


def _clean_script(field: str) -> str:
    value, extra = SENTINELS[field]
    opts = {"corpus": "sample", "retriever": "BM25", "paths_on_compute_nodes": True, **extra}
    if "SENT" not in str(extra):
        opts[field] = value
    else:
        opts = {k: [x.replace("SENT", value) for x in v] if isinstance(v, list) else v for k, v in opts.items()}
    text = render_job(JobSpec.from_mapping(opts))
    assert value in text
    return text


@pytest.mark.parametrize("field", sorted(SENTINELS))
def test_check_flags_hostile_values_written_unquoted_into_a_script(field, tmp_path):
    canary = tmp_path / "canary"
    clean = _clean_script(field)
    assert check_script(clean).ok
    value = SENTINELS[field][0]
    for i, template in enumerate(HOSTILE):
        text = clean.replace(value, template.format(c=canary))
        rep = check_script(text)
        if i in ALWAYS_FLAGGED:
            assert not rep.ok, (field, template, rep.format())
        script = tmp_path / "hand.sbatch"
        script.write_text(text, encoding="utf-8")
        _dry_run(script, tmp_path)
        if canary.exists():  # the value did run: the check must have said so
            assert not rep.ok, (field, template, rep.format())
            canary.unlink()


def test_check_flags_a_command_among_the_sbatch_lines_of_a_hand_written_script():
    text = ("#!/bin/bash\n#SBATCH --nodes=1\n#SBATCH --partition=gpu\ntouch /tmp/x\n#SBATCH --time=1:00:00\n"
            "trap 'kill 0' EXIT TERM INT\npython3 train.py\n")
    rep = check_script(text)
    assert any("line 4 ('touch /tmp/x') is a command among the #SBATCH lines" in e for e in rep.errors), rep.format()
    ok = text.replace("touch /tmp/x\n", "")
    assert not any("among the #SBATCH lines" in e for e in check_script(ok).errors)
    crlf = check_script(ok.replace("\n", "\r\n"))
    assert any("carriage return" in e or "'\\r'" in e for e in crlf.errors)


def test_slurm_check_cli_fails_on_an_injected_partition(tmp_path, capsys):
    """The issue's own case: YAML `partition: "gpu\\ntouch /tmp/x"` through an unchecked renderer."""
    clean = _clean_script("partition")
    job = tmp_path / "job.sbatch"
    job.write_text(clean.replace("sentinelpart", f"gpu\ntouch {tmp_path / 'x'}"))
    assert main(["slurm", "check", str(job)]) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and "touch" in out and "is a command before `set -eo pipefail`" in out
