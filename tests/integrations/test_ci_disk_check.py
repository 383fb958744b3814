"""`make test` checks free disk before it builds anything (.ci/test-envs): a full disk used to show up as unrelated
test failures and a pip OSError half-way through a 20-minute run. The checks run against real small filesystems
(tmpfs mounts), so they need root and permission to mount."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.storage.test_storage_errors import tmpfs

REPO = Path(__file__).resolve().parents[2]


def checkout_in(folder: Path) -> Path:
    """A checkout's .ci folder in FOLDER (the preflight reads nothing else)."""
    shutil.copytree(REPO / ".ci", folder / ".ci")
    return folder


def run_test_envs(repo: Path, tmpdir: Path, *envs: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, TMPDIR=str(tmpdir))
    return subprocess.run(["bash", ".ci/test-envs", *envs], cwd=repo, env=env, capture_output=True, text=True,
                          timeout=60)


def test_a_small_disk_is_refused_before_anything_is_built(tmp_path):
    with tmpfs(tmp_path / "fs", "64m") as fs:
        repo = checkout_in(fs)
        r = run_test_envs(repo, repo, "dev", "searchr1")
        assert r.returncode == 1
        # 2600 MB (.venv) + 7800 MB (.venv-searchr1) + 2000 MB of temporary files, on the same disk as TMPDIR
        assert f"not enough free disk in {repo}: about 12400 MB needed (.venv .venv-searchr1" in r.stderr
        free = shutil.disk_usage(repo).free / 2**20
        said = re.search(r"\), (\d+) MB free; free space on that disk or clone the repository elsewhere", r.stderr)
        assert said and abs(int(said.group(1)) - free) <= 1, r.stderr  # df rounds up
        assert sorted(p.name for p in repo.iterdir()) == [".ci"]  # nothing written: no _work, no .venv


def test_only_what_environments_lack_is_counted(tmp_path):
    with tmpfs(tmp_path / "fs", "2700m") as fs:  # a tmpfs takes no memory until written
        repo = checkout_in(fs)
        roomy_tmp = tmp_path / "tmp"
        roomy_tmp.mkdir()
        if shutil.disk_usage(roomy_tmp).free < 2000 * 2**20:
            pytest.skip("the machine's own disk has under 2000 MB free for TMPDIR")
        # one environment to build (2600 MB) fits in 2700 MB: the run goes past the check to the build, which stops
        # at once here (.ci/env knows no environment of that name)
        r = run_test_envs(repo, roomy_tmp, "other")
        assert "not enough free disk" not in r.stderr
        assert "unknown environment 'other'" in r.stdout + r.stderr and (repo / "_work" / "ci").is_dir()
        # a second one does not fit
        r = run_test_envs(repo, roomy_tmp, "other", "another")
        assert r.returncode == 1 and "about 5200 MB needed (.venv-other .venv-another and" in r.stderr
        # a folder that holds next to nothing yet (as `make demo` leaves .venv: medret's core only) still needs
        # its build
        (repo / ".venv-another").mkdir()
        (repo / ".venv-another" / "core").write_bytes(b"x" * 2**19)  # half a MB: du rounds it up to 1
        r = run_test_envs(repo, roomy_tmp, "other", "another")
        assert r.returncode == 1 and "about 5199 MB needed (.venv-other .venv-another and" in r.stderr
        # unless it is already built: only what it lacks is counted (a sparse file has the size without taking
        # the room)
        with open(repo / ".venv-another" / "built", "wb") as f:
            f.truncate(2600 * 2**20)
        r = run_test_envs(repo, roomy_tmp, "other", "another")
        assert "not enough free disk" not in r.stderr and "unknown environment 'another'" in r.stdout + r.stderr


def test_a_small_tmpdir_is_named_with_its_own_fix(tmp_path):
    repo = checkout_in(tmp_path / "repo")
    with tmpfs(tmp_path / "fs", "64m") as tmpdir:
        r = run_test_envs(repo, tmpdir, "dev")
    assert r.returncode == 1
    assert f"not enough free disk in TMPDIR ({tmpdir})" in r.stderr and "set TMPDIR to a roomier folder" in r.stderr
    assert not (repo / "_work").exists()
