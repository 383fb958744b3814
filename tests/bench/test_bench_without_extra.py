"""`medret bench` in the documented trainer install, without the [bench] extra (psutil, matplotlib): one error
line naming the extra before anything runs; the table and the outputs hold up when a backend fails after its
timings or the plot cannot be drawn (issue 24 item 2)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from medret.bench.harness import BenchConfig, format_table, run_bench, write_outputs
from tests.conftest import hide_packages_code

QUERIES = ["sepsis elderly", "kidney injury", "stroke risk", "insulin fluids"]

# psutil and matplotlib made unimportable the way a missing package is: every finder answers "not here"
HIDE = hide_packages_code("psutil", "matplotlib")


def run_hidden(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(HIDE)
    env = dict(os.environ, MEDRET_CACHE=str(tmp_path / "cache"),
               PYTHONPATH=os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=300)


def test_the_premise_psutil_and_matplotlib_cannot_be_imported(tmp_path):
    for mod in ("psutil", "matplotlib", "matplotlib.pyplot"):
        r = run_hidden(["-c", f"import {mod}"], tmp_path)
        assert r.returncode == 1 and "No module named" in r.stderr, (mod, r.stderr)


def test_bench_without_the_extra_says_which_install_in_one_line(toy_corpus, tmp_path):
    out = tmp_path / "bench-out"
    r = run_hidden(["-m", "medret", "bench", "--corpus", str(toy_corpus), "--backends", "local",
                    "--batch-sizes", "1", "--repeats", "1", "--no-startup", "--out", str(out)], tmp_path)
    assert r.returncode == 1, r.stdout[-2000:] + r.stderr[-3000:]
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("medret: error:"), r.stderr
    assert "pip install 'medret[bench]'" in lines[0] and "psutil" in lines[0] and "matplotlib" in lines[0]
    assert not out.exists()  # refused before anything ran: no half set of outputs
    assert not (toy_corpus / "medret").exists()  # nor a store built for a bench that cannot finish


def test_a_backend_that_fails_after_its_timings_is_tabled_and_the_png_is_clearly_not_written(
        toy_corpus, tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "psutil", None)  # the memory reading after the timings fails
    res = run_bench(BenchConfig(corpus=str(toy_corpus), backends=["local"], batch_sizes=[1, 2], repeats=1,
                                queries=QUERIES, measure_startup=False))
    (local,) = res["backends"]
    assert [r["batch"] for r in local["rows"]] == [1, 2]  # the timings stand
    assert "psutil" in local["error"] and "client_peak_rss_bytes" not in local
    table = format_table(res)
    assert table.count("\n| local | ") == 3  # two rows of timings and one line for the failure
    assert "| local | error after timing: " in table and "pip install 'medret[bench]'" in table

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    paths = write_outputs(res, tmp_path / "out")
    assert sorted(paths) == ["json", "md"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["bench.json", "bench.md"]
    assert json.loads(paths["json"].read_text())["backends"][0]["rows"][1]["batch"] == 2
    assert paths["md"].read_text() == table + "\n"
    assert any("bench.png not written" in m and "medret[bench]" in m for m in caplog.messages)


@pytest.mark.parametrize("missing", ["psutil", "matplotlib"])
def test_the_up_front_check_names_each_missing_package(missing, monkeypatch):
    from medret.bench.harness import require_bench_extra
    from medret.errors import MissingDependencyError

    require_bench_extra()  # the dev environment has both
    monkeypatch.setitem(sys.modules, missing, None)
    with pytest.raises(MissingDependencyError, match=rf"needs {missing} .*pip install 'medret\[bench\]'"):
        require_bench_extra()
