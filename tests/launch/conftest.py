"""The local two-node SLURM cluster (scripts/slurm-up) for the job tests; skipped, with slurm-up's reason, where
SLURM cannot start (not root, no apt, no mknod). A cluster this session started is stopped at its end
(scripts/slurm-down); one that was already running is left as it was."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def slurm_cluster():
    up = REPO / "scripts" / "slurm-up"
    if os.geteuid() != 0:
        pytest.skip("SLURM tests need root (scripts/slurm-up runs slurmctld/slurmd as SlurmUser=root)")
    r = subprocess.run(["bash", str(up)], capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        reason = [line for line in (r.stderr + r.stdout).splitlines() if "FAILED" in line] or [r.stderr[-500:]]
        pytest.skip(f"scripts/slurm-up could not start SLURM: {reason[-1]}")
    conf = None
    for line in r.stdout.splitlines():
        if line.startswith("export SLURM_CONF="):
            conf = line.split("=", 1)[1]
    assert conf and Path(conf).is_file(), r.stdout
    state = Path(conf).parent.parent
    yield {"conf": conf, "jobcomp": state / "log" / "jobcomp.txt"}
    if "slurm-up: already running" not in r.stdout:
        subprocess.run(["bash", str(REPO / "scripts" / "slurm-down")], capture_output=True, text=True, timeout=300)


def nq_style_data(parent: Path) -> Path:
    """A folder as Search-R1's data scripts write it (train.parquet and test.parquet, no val.parquet) under PARENT."""
    d = parent / "nq_search"
    d.mkdir()
    for name in ("train.parquet", "test.parquet"):
        (d / name).write_bytes(b"PAR1")
    return d


def hydra_text(value: str) -> str:
    """A simple hydra value as medret writes it ('...', quotes escaped) back to its text, for tests that read the
    words of a rendered command (the round trip of every hard case through hydra's own parser is
    test_slurm_hydra_quoting's)."""
    if len(value) >= 2 and value[0] == value[-1] == "'":
        return value[1:-1].replace("\\'", "'").replace("\\${", "${")
    return value


_HYDRA_READ = r'''
import json, sys
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf
out = []
for o in OverridesParser.create().parse_overrides(json.loads(sys.stdin.read())):
    # the value as the trainer's composed config holds it (OmegaConf unescapes \${ and resolves ${...})
    value = OmegaConf.to_container(OmegaConf.create({"v": o.value()}), resolve=True)["v"]
    out.append([o.key_or_group, value])
print(json.dumps(out))
'''


def hydra_read(words: list[str]) -> list[tuple[str, object]]:
    """(key, value) of hydra overrides as the trainer reads them: hydra's own override parser, then the value as its
    OmegaConf config resolves it (hydra-core is in medret's test extra, as it is in both trainer environments), in a
    fresh interpreter as the trainer's."""
    import json
    import subprocess
    import sys

    python = sys.executable
    r = subprocess.run([python, "-c", _HYDRA_READ], input=json.dumps(words), capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    return [tuple(pair) for pair in json.loads(r.stdout)]
