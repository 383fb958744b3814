"""Installing medret's trainer side next to a trainer moves none of the trainer's packages.

Each test environment is built by .ci/env in this order: the trainer's own packages (.ci/envs/NAME.txt), a
snapshot (``sys.prefix/medret-trainer-freeze.txt``), ``medret[trainer]`` without constraints, a second snapshot
(``medret-trainer-freeze-after.txt``), then test tools. Three checks, in whichever environment the suite runs
(dev, searchr1, verl):

* the two snapshots: installing ``medret[trainer]`` changed no package of the trainer's environment;
* the first snapshot against the environment now: the tests run on the trainer's pinned versions;
* ``pip install --dry-run --report`` of ``medret[trainer]`` into this environment: pip would move none of them.

Pinned, and named when they would move: torch, transformers, numpy, ray, tensordict, huggingface_hub, and the
requirements of vllm, verl and torch where those belong to the trainer's environment.
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
AFTER = Path(sys.prefix) / "medret-trainer-freeze-after.txt"
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


def named_pins(trainer: dict[str, str]) -> set[str]:
    names = {norm(n) for n in NAMED}
    for t in TRAINERS:
        if norm(t) in trainer:  # part of the trainer's environment (in dev, verl comes later and without its deps)
            names |= requirement_names(t)
    return names


def read_freeze(path: Path) -> dict[str, str]:
    if not path.is_file():
        pytest.skip(f"no trainer snapshot at {path}: this environment was not built by .ci/env, so which packages "
                    "are the trainer's is unknown")
    out = {}
    for line in path.read_text().splitlines():
        # "name==version", "# Editable ... install ... (name==version)", or "-e git+URL@COMMIT#egg=name"
        m = re.match(r"(?:#.*\()?([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s)]+)", line.strip())
        egg = re.match(r"-e .*#egg=([A-Za-z0-9][A-Za-z0-9._-]*)", line.strip())
        if m:
            out[norm(m.group(1))] = m.group(2)
        elif egg:
            out.setdefault(norm(egg.group(1)), "editable")
    return out


def test_read_freeze_reads_every_form_pip_freeze_writes(tmp_path):
    f = tmp_path / "freeze.txt"
    f.write_text("torch==2.4.0\nNumPy==1.26.4\n# Editable Git install with no remote (medret==0.1.0)\n-e /work/medret\n"
                 "-e git+file:///src/other@0123abc#egg=other_pkg\nhuggingface_hub==0.36.2\n")
    assert read_freeze(f) == {"torch": "2.4.0", "numpy": "1.26.4", "medret": "0.1.0", "other-pkg": "editable",
                              "huggingface-hub": "0.36.2"}


def test_installing_medret_trainer_changed_no_trainer_package():
    before, after = read_freeze(SNAPSHOT), read_freeze(AFTER)
    assert "torch" in before, f"{SNAPSHOT} holds no torch: it was taken before the trainer was installed"
    moved = {n: (v, after.get(n)) for n, v in before.items() if after.get(n) != v}
    named = {n: moved[n] for n in moved if n in named_pins(before)}
    assert not named, f"installing medret[trainer] moved the trainer's pinned packages (before, after): {named}"
    assert not moved, f"installing medret[trainer] moved trainer packages (before, after): {moved}"
    assert "medret" not in before and "medret" in after


def test_tests_run_on_the_trainers_pinned_versions():
    before = read_freeze(SNAPSHOT)
    now = installed()
    moved = {n: (before[n], now.get(n)) for n in named_pins(before) if n in before and now.get(n) != before[n]}
    assert not moved, f"the test tools moved the trainer's pinned packages (trainer's, now): {moved}"


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
    snap = read_freeze(SNAPSHOT) if SNAPSHOT.is_file() else {}
    named = {n: moves[n] for n in moves if n in named_pins(snap)}
    assert not named, f"pip would move the trainer's pinned packages (installed, planned): {named}"
    trainer_moves = {n: moves[n] for n in moves if n in snap}
    assert not trainer_moves, f"pip would move trainer packages (installed, planned): {trainer_moves}"
    new = sorted(n for n in planned if n not in now)
    assert not new, f"medret[trainer] needs packages this environment lacks: {new}"
