"""A dense retriever where PyTorch is not installed: one error line naming the extra to install, no traceback, and
`index build` writes nothing before saying so (issue 14)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import hide_packages_code

# torch made unimportable two ways: as a missing package is (every finder answers "not here", so find_spec is None
# and `import torch` raises ModuleNotFoundError), and blocked in sys.modules (`import torch` raises ImportError)
HIDE = hide_packages_code("torch")
BLOCK = "import sys\nsys.modules['torch'] = None\n"


def medret_without_torch(how: str, args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(HIDE if how == "absent" else BLOCK)
    env = dict(os.environ, MEDRET_CACHE=str(tmp_path / "cache"), HF_HUB_OFFLINE="1",
               PYTHONPATH=os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    return subprocess.run([sys.executable, "-m", "medret", *args], capture_output=True, text=True, cwd=tmp_path,
                          env=env, timeout=300)


@pytest.mark.parametrize("how", ["absent", "blocked"])
def test_the_premise_torch_cannot_be_imported(how, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(HIDE if how == "absent" else BLOCK)
    r = subprocess.run([sys.executable, "-c", "import torch"], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=str(site)), timeout=120)
    assert r.returncode == 1 and ("No module named 'torch'" in r.stderr or "halted" in r.stderr), r.stderr


@pytest.mark.parametrize("how", ["absent", "blocked"])
@pytest.mark.parametrize("retriever", ["MedCPT", "e5", "RRF-2", "FOLDER"])
def test_a_dense_search_without_torch_names_the_extra(how, retriever, tmp_path, tiny_bert_dir):
    flags = ["--retriever", str(tiny_bert_dir), "--pooling", "mean"] if retriever == "FOLDER" else \
        ["--retriever", retriever]
    r = medret_without_torch(how, ["search", "sepsis", "--corpus", "sample", *flags], tmp_path)
    assert r.returncode == 1, r.stdout[-2000:] + r.stderr[-2000:]
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    assert r.stderr.startswith("medret: error:") and "pip install 'medret[dense]'" in r.stderr, r.stderr
    assert "torch" in r.stderr


@pytest.mark.parametrize("how", ["absent", "blocked"])
def test_index_build_without_torch_fails_before_writing_anything(how, tmp_path, toy_corpus, tiny_bert_dir):
    r = medret_without_torch(how, ["index", "build", "--corpus", str(toy_corpus), "--retriever", str(tiny_bert_dir),
                                   "--pooling", "mean"], tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert "pip install 'medret[dense]'" in r.stderr
    assert not (toy_corpus / "medret").exists()  # no document store, no partial index
