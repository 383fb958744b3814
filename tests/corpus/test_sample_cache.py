"""Two installations of medret sharing one cache (a venv per trainer, one ~/.cache/medret): the shipped sample's
store of one must not trip the other's chunk-file check, and nothing a user need not act on is a WARNING
(issue 24 item 5: the first `make demo` warned "6 chunk file(s) of sample have another mtime, ctime or inode")."""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import medret
from medret.api import clear_cache, get_retriever
from medret.corpus.registry import resolve_corpus
from medret.corpus.store import DocStore

PACKAGE = Path(medret.__file__).resolve().parent


def install_copy(root: Path) -> Path:
    """A second installation: the package (its shipped sample data included) copied to another folder."""
    shutil.copytree(PACKAGE, root / "medret", ignore=shutil.ignore_patterns("__pycache__"))
    return root


def search_sample(install: Path, cache: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(install), MEDRET_CACHE=str(cache))
    code = ("import logging, sys, medret\n"
            "logging.basicConfig(level=logging.INFO, stream=sys.stderr, format='%(levelname)s %(name)s %(message)s')\n"
            "from medret.corpus.registry import SAMPLE_DIR\n"
            "assert str(SAMPLE_DIR).startswith(sys.argv[1]), SAMPLE_DIR\n"
            "r = medret.get_retriever('sample', 'BM25')\n"
            "print([h.id for h in r.search(['sepsis fluids'], 3)[0]])\n")
    return subprocess.run([sys.executable, "-c", code, str(install)], capture_output=True, text=True, env=env,
                          timeout=300, cwd=install)


def test_two_installs_sharing_a_cache_do_not_trip_each_other(tmp_path):
    cache = tmp_path / "cache"
    a, b = install_copy(tmp_path / "a"), install_copy(tmp_path / "b")
    runs = [search_sample(x, cache) for x in (a, b, a, b)]
    for r in runs:
        assert r.returncode == 0, r.stderr[-3000:]
        assert "WARNING" not in r.stderr, r.stderr[-3000:]
        assert "another mtime, ctime or inode" not in r.stderr  # nothing to re-check: each has its own store
    assert len({r.stdout for r in runs}) == 1 and runs[0].stdout.startswith("['")  # the same hits everywhere
    stores = sorted(p.parent.parent.name for p in cache.glob("*/store/manifest.json"))
    assert len(stores) == 2 and all(s.startswith("sample-") for s in stores), stores


def test_a_content_check_that_passes_is_info_not_warning(tmp_path, caplog):
    """A copied corpus (new inodes, same bytes) is re-hashed once; that is logged at INFO, never as a warning."""
    src = resolve_corpus("sample", None).sources[0].root
    corpus = tmp_path / "c"
    shutil.copytree(src / "chunk", corpus / "chunk")
    expected = [h.id for h in get_retriever(str(corpus), "BM25").search(["sepsis fluids"], 3)[0]]
    clear_cache()
    copy = tmp_path / "copy"
    shutil.copytree(corpus, copy)  # new inodes and ctimes, same content
    with caplog.at_level(logging.DEBUG, logger="medret"):
        got = [h.id for h in get_retriever(str(copy), "BM25").search(["sepsis fluids"], 3)[0]]
    clear_cache()
    assert got == expected
    checks = [r for r in caplog.records if "checking their content" in r.getMessage()]
    assert len(checks) == 1 and checks[0].levelno == logging.INFO
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], [r.getMessage() for r in caplog.records]
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="medret"):
        DocStore.open(resolve_corpus(str(copy), None).sources[0]).close()
    assert not [r for r in caplog.records if "checking their content" in r.getMessage()]  # recorded: cheap again
