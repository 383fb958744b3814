"""Installing medret's trainer side next to a trainer moves none of the trainer's packages.

Each test environment is built by .ci/env in this order: the trainer's own packages (.ci/envs/NAME.txt), a
snapshot of them (``sys.prefix/medret-trainer-freeze.txt``), then ``medret[trainer]`` without constraints, then
test tools. Two checks, in whichever environment the suite runs (dev, searchr1, verl):

* the snapshot against the environment: installing medret (and the test tools) changed no trainer package;
* ``pip install --dry-run --report`` of ``medret[trainer]`` into this environment: pip would move none of them.

The packages held fixed are every package of the trainer's snapshot; the ones named by the issue (torch,
transformers, numpy, ray, tensordict, huggingface_hub, and vllm's, verl's and torch's own requirements where
those are installed) are reported by name when they would move.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SNAPSHOT = Path(sys.prefix) / "medret-trainer-freeze.txt"
NAMED = ("torch", "transformers", "numpy", "ray", "tensordict", "huggingface-hub", "vllm", "verl")
TRAINERS = ("vllm", "verl", "torch")  # their declared requirements are pins of the trainer's environment too


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed() -> dict[str, str]:
    """What pip sees in this environment, asked in a fresh process: this one's sys.path may hold more (``import ray``
    puts Ray's own bundled psutil in front)."""
    r = subprocess.run([sys.executable, "-m", "pip", "list", "--format=json"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return {norm(d["name"]): d["version"] for d in json.loads(r.stdout)}


def requirement_names(dist: str) -> set[str]:
    """Names a distribution requires outside its extras (markers such as platform ones kept: a superset is fine)."""
    try:
        reqs = metadata.requires(dist) or []
    except metadata.PackageNotFoundError:
        return set()
    names = set()
    for r in reqs:
        if re.search(r"\bextra\s*==", r):
            continue
        m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", r)
        if m:
            names.add(norm(m.group(1)))
    return names


def named_pins() -> set[str]:
    names = {norm(n) for n in NAMED}
    for t in TRAINERS:
        names |= requirement_names(t)
    return names


def read_snapshot() -> dict[str, str]:
    if not SNAPSHOT.is_file():
        pytest.skip(f"no trainer snapshot at {SNAPSHOT}: this environment was not built by .ci/env, so which "
                    "packages are the trainer's is unknown")
    out = {}
    for line in SNAPSHOT.read_text().splitlines():
        m = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line.strip())
        if m:
            out[norm(m.group(1))] = m.group(2)
    return out


def test_installing_medret_changed_no_trainer_package():
    snap = read_snapshot()
    now = installed()
    assert "torch" in snap, f"the snapshot {SNAPSHOT} holds no torch: it was taken before the trainer was installed"
    moved = {n: (v, now.get(n)) for n, v in snap.items() if now.get(n) != v}
    named = {n: moved[n] for n in moved if n in named_pins()}
    assert not named, f"installing medret moved the trainer's pinned packages (before, now): {named}"
    assert not moved, f"installing medret moved trainer packages (before, now): {moved}"


@pytest.mark.integration
def test_pip_dry_run_of_trainer_extra_moves_no_pin(tmp_path):
    """What `pip install "medret[trainer]"` would do here, read from pip's own installation report."""
    report = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--report", str(report),
           "--no-build-isolation", f"{REPO}[trainer]"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    err = "\n".join(line for line in r.stderr.splitlines() if "is ignored: it is neither" not in line)
    assert r.returncode == 0, f"pip could not resolve medret[trainer] in this environment:\n{err[-3000:]}"
    planned = {norm(item["metadata"]["name"]): item["metadata"]["version"]
               for item in json.loads(report.read_text())["install"]}
    assert "medret" in planned  # the report is about medret (pip always re-installs a local directory)
    now = installed()
    moves = {n: (now[n], v) for n, v in planned.items() if n in now and now[n] != v}
    named = {n: moves[n] for n in moves if n in named_pins()}
    assert not named, f"pip would move the trainer's pinned packages (installed, planned): {named}"
    snap = read_snapshot() if SNAPSHOT.is_file() else {}
    trainer_moves = {n: moves[n] for n in moves if n in snap}
    assert not trainer_moves, f"pip would move trainer packages (installed, planned): {trainer_moves}"
    new = sorted(n for n in planned if n not in now)
    assert not new, f"medret[trainer] needs packages this environment lacks: {new}"
