"""The download toolkit sits below both corpus/ and encoders/ (issue 22 item 1): before, five encoders/ modules
imported medret.corpus.download while three corpus/ modules imported medret.encoders.specs (a cycle between the
two packages), and corpus/download.py had 750 lines. Read from the source: every import, at any depth."""
from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "medret"
#: what medret.fetch may build on: the floor beneath it
FETCH_FLOOR = ("medret.compat", "medret.optional", "medret.errors", "medret.options", "medret.validate",
               "medret.storage", "medret.fetch", "medret.progress")


def medret_imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("medret"):
            out |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("medret")}
    return out


def test_encoders_import_nothing_of_corpus():
    found = {p.name: sorted(m for m in medret_imports(p) if m.startswith("medret.corpus"))
             for p in sorted((PKG / "encoders").glob("*.py"))}
    assert {k: v for k, v in found.items() if v} == {}


def test_fetch_builds_only_on_the_floor_beneath_it():
    found = {p.name: sorted(m for m in medret_imports(p) if not m.startswith(FETCH_FLOOR) and m != "medret")
             for p in sorted((PKG / "fetch").glob("*.py"))}
    assert {k: v for k, v in found.items() if v} == {}
    assert all(len(p.read_text().splitlines()) <= 600 for p in (PKG / "fetch").glob("*.py"))


def test_corpus_download_is_well_under_the_module_limit():
    assert len((PKG / "corpus" / "download.py").read_text().splitlines()) < 500
