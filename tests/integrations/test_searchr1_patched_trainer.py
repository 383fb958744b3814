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


BUILD_ONLY = r'''
import sys
from omegaconf import OmegaConf
from verl.trainer.ppo.ray_trainer import RayPPOTrainer

config = OmegaConf.merge(OmegaConf.load(sys.argv[1]),
                         OmegaConf.from_dotlist([o.lstrip("+") for o in sys.argv[3:]]))
manager = getattr(RayPPOTrainer(config), sys.argv[2])()
print("GENERATION MANAGER BUILT", flush=True)
manager.batch_search(["septic shock vasopressor"])
print("SEARCHED", flush=True)
'''


def build_then_search(root: Path, method: str, overrides: list[str], config: Path) -> subprocess.CompletedProcess:
    (root / "build_only.py").write_text(BUILD_ONLY)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(root)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return subprocess.run([sys.executable, "build_only.py", str(config), method, *overrides], cwd=root,
                          capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.integration
@pytest.mark.parametrize("method", ["fit", "_validate"])
@pytest.mark.parametrize("override, unknown, closest", [
    ("+retriever.corpus_nme=sample", "corpus_nme", "corpus_name"),
    ("+retriever.retreiver_name=BM25", "retreiver_name", "retriever_name"),
    ("+retriever.topK=2", "topK", "topk"),
])
def test_typo_in_retriever_key_fails_when_the_generation_manager_is_built(checkout: Path, helpers, method: str,
                                                                           override: str, unknown: str, closest: str):
    """Issue 24 item 4: a typo in a +retriever.* key once surfaced only at the first search (minutes into a job);
    the patched GenerationConfig refuses it when the trainer builds its generation manager, naming the unknown
    key and the closest valid one."""
    sp.patch(checkout)
    proc = build_then_search(checkout, method, ["+retriever.backend=local", override], helpers.TRAINER_CONFIG)
    assert proc.returncode != 0
    assert "GENERATION MANAGER BUILT" not in proc.stdout  # refused before the manager existed, not at a search
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("medret.errors.ConfigError: retriever block: unknown retriever key(s)"), last
    assert f"{unknown!r} -> {closest!r}" in last


@pytest.mark.integration
@pytest.mark.parametrize("override, named", [("+retriever.allow_cpu_fallback=flase", "allow_cpu_fallback='flase'"),
                                             ("+retriever.local=flase", "local='flase'"),
                                             ("+retriever.timeout=null", "timeout=None"),
                                             ("retriever.topk=2.5", "topk=2.5")])
def test_wrong_kind_in_retriever_block_fails_when_the_generation_manager_is_built(checkout: Path, helpers,
                                                                                  override: str, named: str):
    sp.patch(checkout)
    proc = build_then_search(checkout, "fit", [override], helpers.TRAINER_CONFIG)
    assert proc.returncode != 0 and "GENERATION MANAGER BUILT" not in proc.stdout
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("medret.errors.ConfigError:") and named in last and "is invalid: expected" in last, last


@pytest.mark.integration
def test_valid_block_still_builds_and_searches(checkout: Path, helpers):
    sp.patch(checkout)
    proc = build_then_search(checkout, "fit", ["+retriever.backend=local", "+retriever.corpus_name=sample",
                                               "+retriever.allow_cpu_fallback=no", "retriever.topk=2"],
                             helpers.TRAINER_CONFIG)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["GENERATION", "MANAGER", "BUILT", "SEARCHED"]
