"""Job checks: the Search-R1 checkout is patched, the SLURM job script passes the SLURM checker."""
from __future__ import annotations

from pathlib import Path

from medret.doctor.checks import FAIL, OK, WARN, Check
from medret.errors import MedretError
from medret.integrations import searchr1_patch as sp
from medret.launch.slurm import check_script, read_script


def check_searchr1(path: str | None) -> list[Check]:
    if not path:
        return []
    try:
        report = sp.check(path)
    except MedretError as e:
        return [Check("searchr1", FAIL, f"Search-R1 checkout {path} cannot be checked", str(e),
                      "give --searchr1 the root of a Search-R1 checkout")]
    detail = report.describe()
    if report.status is sp.Status.PATCHED:
        return [Check("searchr1", OK, f"Search-R1 checkout {report.root} is patched for medret", detail)]
    if report.status is sp.Status.UNPATCHED:
        return [Check("searchr1", FAIL, f"Search-R1 checkout {report.root} is not patched", detail,
                      f"medret searchr1 patch {report.root}")]
    return [Check("searchr1", FAIL, f"Search-R1 checkout {report.root} is an unknown version", detail,
                  "use a Search-R1 version the patcher knows, or call medret from your own code")]


def check_sbatch(path: str | None) -> list[Check]:
    """The SLURM checker's verdict (``medret slurm check``): one fail line per error, one warn line per warning."""
    if not path:
        return []
    p = Path(path).expanduser()
    try:
        text = read_script(str(p))
    except MedretError as e:
        return [Check("slurm", FAIL, f"job script {p} cannot be read", str(e), "give --sbatch the job script's path")]
    report = check_script(text, str(p))
    out = [Check("slurm", FAIL, f"job script {p}: {msg.split(':', 1)[0][:100]}", msg,
                 "fix the script, or render a checked one with `medret slurm render`") for msg in report.errors]
    out += [Check("slurm", WARN, f"job script {p}: {msg.split(':', 1)[0][:100]}", msg) for msg in report.warnings]
    if not report.errors:
        facts = ", ".join(f"{k} {v}" for k, v in report.facts.items())
        out.insert(0, Check("slurm", OK, f"job script {p} passes the SLURM checks", facts))
    return out
