"""End to end: a patched Search-R1-shaped trainer, configured with Hydra-style overrides, searches through medret.

The trainer runs in a fresh interpreter whose working directory is the checkout (as Search-R1 runs), so its own
``verl`` and ``search_r1`` packages are imported, exactly as in a real checkout.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from medret import get_retriever
from medret.integrations import searchr1_patch as sp

DRIVER = r'''
import json, sys
from omegaconf import OmegaConf
from verl.trainer.ppo.ray_trainer import RayPPOTrainer

config = OmegaConf.load(sys.argv[1])
overrides = [o.lstrip("+") for o in sys.argv[3:]]  # hydra's +key=value adds a key; merged the same way here
config = OmegaConf.merge(config, OmegaConf.from_dotlist(overrides))
manager = getattr(RayPPOTrainer(config), sys.argv[2])()
queries = ["septic shock vasopressor", "atrial fibrillation rate control"]
print(json.dumps({"block": getattr(manager.config, "retriever", "absent"),
                  "observations": manager.batch_search(queries)}))
'''
QUERIES = ["septic shock vasopressor", "atrial fibrillation rate control"]


def run_trainer(root: Path, method: str, overrides: list[str], config: Path) -> dict:
    (root / "drive_trainer.py").write_text(DRIVER)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(root)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    proc = subprocess.run([sys.executable, "drive_trainer.py", str(config), method, *overrides], cwd=root,
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def expected(helpers, topk: int) -> list[str]:
    result = get_retriever(corpus_name="sample", retriever_name="BM25").retrieve(QUERIES, topk=topk)["result"]
    return [helpers.searchr1_format(docs) for docs in result]


@pytest.mark.integration
@pytest.mark.parametrize("method", ["fit", "_validate"])
def test_backend_local_block_reaches_medret(checkout: Path, helpers, method: str):
    sp.patch(checkout)
    out = run_trainer(checkout, method, ["+retriever.backend=local", "+retriever.corpus_name=sample",
                                         "+retriever.retriever_name=BM25", "retriever.topk=2"],
                      helpers.TRAINER_CONFIG)
    assert out["block"] == {"url": "http://127.0.0.1:8000/retrieve", "topk": 2, "backend": "local",
                            "corpus_name": "sample", "retriever_name": "BM25"}
    assert out["observations"] == expected(helpers, 2)  # nothing listens on :8000, so this came from medret


@pytest.mark.integration
def test_local_true_alias(checkout: Path, helpers):
    sp.patch(checkout)
    out = run_trainer(checkout, "fit", ["+retriever.local=true"], helpers.TRAINER_CONFIG)
    assert out["block"]["local"] is True
    assert out["observations"] == expected(helpers, 3)


@pytest.mark.integration
def test_http_default_keeps_searchr1_http_path(checkout: Path, helpers, tmp_path: Path):
    sp.patch(checkout)
    with helpers.RetrieveServer() as server:
        out = run_trainer(checkout, "fit", [f"retriever.url={server.url}"], helpers.TRAINER_CONFIG)
        assert server.requests == [{"queries": QUERIES, "topk": 3, "return_scores": True}]
    assert out["observations"] == expected(helpers, 3)


@pytest.mark.integration
def test_unpatched_trainer_ignores_the_block(checkout: Path, helpers):
    """The bug the patch fixes: without it, +retriever.backend=local silently goes to HTTP."""
    with helpers.RetrieveServer() as server:
        out = run_trainer(checkout, "fit", ["+retriever.backend=local", f"retriever.url={server.url}"],
                          helpers.TRAINER_CONFIG)
        assert len(server.requests) == 1
    assert out["block"] == "absent"
