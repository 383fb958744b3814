"""The verl/trainer/main_ppo.py edit of `medret searchr1 patch`: KARE data sources get medret's reward.

The end-to-end tests import the patched fixture checkout in a fresh interpreter whose working directory is the
checkout (as Search-R1 runs), call its `_select_rm_score_fn` and its `RewardManager`, and compare the scores with
values worked out by hand from the reward rules in docs/kare.md.
"""
from __future__ import annotations

import ast
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from medret.cli import main
from medret.integrations import searchr1_patch as sp
from medret.recipes.kare import rewards

REWARD = sp.REWARD_FILE
REAL = os.environ.get("MEDRET_SEARCHR1_CHECKOUT")

PROMPT = ("<|im_start|>user\nPredict in-hospital mortality. Answer format example: <answer>0</answer>\n"
          "[End of the patient record. Write your response below.]<|im_end|>\n<|im_start|>assistant\n")
# (data source, response, label, format score, expected reward worked out by hand)
CASES = [
    ("kare_mortality_binary", "<think>septic shock, intubated</think>\n<answer> 1 </answer><|im_end|>", "1", 0.0,
     1.0),
    ("kare_mortality_binary", "<think>stable</think><answer>1</answer>", "0", 0.1, 0.1),  # formed but wrong
    ("kare_mortality_binary", "<think>unsure</think><|im_end|>", "0", 0.1, 0.0),  # the prompt's example is not read
    ("kare_mortality_binary", "<search>sepsis</search><information><answer>1</answer></information>"
     "<answer>0</answer>", "0", 0.0, 1.0),
    ("kare_mortality_prob", "<answer>mortality: 0.8, survival: 0.2</answer>", "1", 0.0, 0.8),
    ("kare_mortality_prob", "<answer>mortality: 0.8, survival: 0.2</answer>", "0", 0.0, 0.2),
    ("kare_mortality_prob", "<answer>mortality: 0.8, survival: 0.2</answer>", "1", 0.1, 0.1 + 0.9 * 0.8),
    ("kare_mortality_prob", "<answer>mortality: 80%, survival: 20%</answer>", "1", 0.1, 0.0),  # malformed
]

DRIVER = r'''
import json, sys
import numpy as np

cases = json.loads(sys.argv[1])
from verl.trainer import main_ppo

out = {"select": {}, "scores": [], "manager": None}
for source in ["nq", "not_a_source", "kare_not_a_task"]:
    try:
        out["select"][source] = main_ppo._select_rm_score_fn(source).__name__
    except NotImplementedError:
        out["select"][source] = "NotImplementedError"
    if source == "not_a_source":  # before any kare_ name: other sources must not import medret
        out["medret_imported_for_other_sources"] = any(m == "medret" or m.startswith("medret.")
                                                       for m in sys.modules)


def item(source, response, label):
    # the ground truth as Search-R1's dataset hands it over: pandas gives lists back as numpy object arrays
    return {"sequences_str": PROMPT + response, "data_source": source,
            "reward_model": {"ground_truth": {"target": np.array([label], dtype=object)}}}


PROMPT = sys.argv[2]
for source, response, label, format_score in cases:
    try:
        fn = main_ppo._select_rm_score_fn(source)
    except NotImplementedError:
        out["scores"].append("NotImplementedError")
        continue
    out["scores"].append(fn(solution_str=PROMPT + response, ground_truth=item(source, response, label)
                            ["reward_model"]["ground_truth"], format_score=format_score))

batch = [item("nq", "<answer>Paris</answer>", "paris"),
         item("kare_mortality_binary", "<answer>1</answer>", "0"),
         item("kare_mortality_prob", "<answer>survival = 0.3; mortality = 0.7</answer>", "1")]
try:
    out["manager"] = main_ppo.RewardManager(tokenizer=None, num_examine=0, format_score=0.1)(batch)
except NotImplementedError:
    out["manager"] = "NotImplementedError"
print(json.dumps(out))
'''


def run_reward(root: Path) -> dict:
    (root / "drive_reward.py").write_text(DRIVER)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(root)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    cases = [list(c[:4]) for c in CASES]
    proc = subprocess.run([sys.executable, "drive_reward.py", json.dumps(cases), PROMPT], cwd=root,
                          capture_output=True, text=True, timeout=120, env=env)
    (root / "drive_reward.py").unlink()
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
            and "__pycache__" not in p.parts}


@pytest.mark.integration
def test_patched_main_ppo_scores_kare_sources_and_keeps_the_rest(checkout: Path):
    before = run_reward(checkout)  # unpatched: KARE sources are unknown to Search-R1
    assert before["scores"] == ["NotImplementedError"] * len(CASES)
    assert before["manager"] == "NotImplementedError"

    sp.patch(checkout)
    out = run_reward(checkout)
    assert out["select"] == {"nq": "exact_answer_score", "not_a_source": "NotImplementedError",
                             "kare_not_a_task": "NotImplementedError"}
    assert out["medret_imported_for_other_sources"] is False  # other sources never import medret
    assert out["scores"] == pytest.approx([c[4] for c in CASES])
    # nq exact match 1; binary well-formed but wrong -> format score 0.1; prob: 0.1 + 0.9 * 0.7
    assert out["manager"] == pytest.approx([1.0, 0.1, 0.1 + 0.9 * 0.7])

    sp.revert(checkout)
    assert run_reward(checkout) == before


def test_medret_sources_all_carry_the_prefix():
    """The preamble routes only names with the prefix to medret: every source medret scores must have it."""
    assert rewards.DATA_SOURCES
    for source in rewards.DATA_SOURCES.values():
        assert source.startswith(sp.MEDRET_SOURCE_PREFIX)
        assert rewards.search_r1_score_fn(source) is not None


@pytest.mark.parametrize("old, new, reason", [
    ("def _select_rm_score_fn(data_source):", "def _pick(data_source):", "no module-level function"),
    ("def _select_rm_score_fn(data_source):", "def _select_rm_score_fn(data_source, split=None):",
     "does not take (data_source)"),
    ("class RewardManager():", "class Scorer():", "no class RewardManager"),
    ("compute_score_fn = _select_rm_score_fn(data_source)", "compute_score_fn = exact_answer_score",
     "does not call the function"),
    ("compute_score_fn(solution_str=sequences_str, ground_truth=ground_truth,",
     "compute_score_fn(sequences_str, ground_truth,", "need the keywords solution_str=, ground_truth="),
    ("ground_truth=ground_truth,", "gt=ground_truth,", "need the keywords"),
    ("    return scores\n", "    return scores  # medret-searchr1-patch\n", "partly patched"),
])
def test_unknown_main_ppo_is_refused_and_nothing_changes(checkout: Path, capsys, old: str, new: str, reason: str):
    path = checkout / REWARD
    text = path.read_text()
    assert text.count(old) == 1
    path.write_text(text.replace(old, new))
    before = snapshot(checkout)
    report = sp.check(checkout)
    assert report.status is sp.Status.UNKNOWN
    assert [f.status for f in report.files][:2] == [sp.Status.UNPATCHED, sp.Status.UNPATCHED]
    assert reason in report.describe()
    assert main(["searchr1", "check", str(checkout)]) == 2
    assert main(["searchr1", "patch", str(checkout)]) == 1
    err = capsys.readouterr().err
    assert "not a known Search-R1 version" in err and reason in err
    assert snapshot(checkout) == before  # no file patched, no backup written


def test_missing_main_ppo_is_not_a_checkout(checkout: Path, capsys):
    (checkout / REWARD).unlink()
    before = snapshot(checkout)
    assert main(["searchr1", "patch", str(checkout)]) == 1
    err = capsys.readouterr().err
    assert "does not look like a Search-R1 checkout" in err and REWARD in err
    assert snapshot(checkout) == before


def test_checkout_patched_before_main_ppo_was_known_is_completed(checkout: Path, capsys):
    """A checkout an earlier medret patched (two files) reads 'not patched'; patch adds main_ppo.py, revert undoes
    all."""
    original = snapshot(checkout)
    sp.patch(checkout)
    shutil.copy(checkout / (REWARD + ".medret-orig"), checkout / REWARD)
    (checkout / (REWARD + ".medret-orig")).unlink()
    report = sp.check(checkout)
    assert [f.status for f in report.files] == [sp.Status.PATCHED, sp.Status.PATCHED, sp.Status.UNPATCHED]
    assert main(["searchr1", "check", str(checkout)]) == 1
    assert main(["searchr1", "patch", str(checkout)]) == 0
    assert sp.check(checkout).status is sp.Status.PATCHED
    assert (checkout / (REWARD + ".medret-orig")).read_bytes() == original[REWARD]
    assert main(["searchr1", "revert", str(checkout)]) == 0
    assert snapshot(checkout) == original


def test_main_ppo_layout_variants_crlf_and_docstring(checkout: Path):
    path = checkout / REWARD
    text = path.read_text().replace(
        "def _select_rm_score_fn(data_source):\n",
        'def _select_rm_score_fn(data_source):\n    """Pick the reward by data source."""\n')
    original = text.replace("\n", "\r\n").encode()
    path.write_bytes(original)
    sp.patch(checkout)
    raw = path.read_bytes()
    assert b"\n" not in raw.replace(b"\r\n", b"")
    new = raw.decode()
    fn = next(n for n in ast.parse(new).body if isinstance(n, ast.FunctionDef) and n.name == "_select_rm_score_fn")
    assert ast.get_docstring(fn) == "Pick the reward by data source."
    assert isinstance(fn.body[1], ast.If) and "medret_score_fn" in ast.unparse(fn.body[1])
    before = snapshot(checkout)
    sp.patch(checkout)  # idempotent
    assert snapshot(checkout) == before
    sp.revert(checkout)
    assert path.read_bytes() == original


def test_one_line_select_function_is_refused(checkout: Path):
    path = checkout / REWARD
    text = path.read_text()
    start = text.index("def _select_rm_score_fn(data_source):")
    end = text.index("class RewardManager")
    path.write_text(text[:start] + "def _select_rm_score_fn(data_source): return exact_answer_score\n\n\n"
                    + text[end:])
    before = snapshot(checkout)
    with pytest.raises(sp.PatchError, match="written on one line"):
        sp.patch(checkout)
    assert snapshot(checkout) == before


def test_revert_refuses_after_main_ppo_edit_unless_forced(checkout: Path, capsys):
    original = snapshot(checkout)
    sp.patch(checkout)
    path = checkout / REWARD
    path.write_text(path.read_text() + "\n# a user's own edit\n")
    edited = snapshot(checkout)
    assert main(["searchr1", "revert", str(checkout)]) == 1
    assert "edited after medret patched it" in capsys.readouterr().err
    assert snapshot(checkout) == edited
    assert main(["searchr1", "revert", str(checkout), "--force"]) == 0
    assert snapshot(checkout) == original


@pytest.mark.skipif(not REAL, reason="set MEDRET_SEARCHR1_CHECKOUT to a Search-R1 checkout to test the real files")
def test_real_main_ppo_selects_medret_reward(tmp_path: Path):
    """Search-R1's own _select_rm_score_fn, patched, run with its own qa_em; the score function is called with the
    keywords Search-R1's RewardManager passes (read from its source)."""
    root = tmp_path / "real"
    for rel in (sp.GENERATION_FILE, sp.TRAINER_FILE, REWARD):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(Path(REAL) / rel, root / rel)
    sp.patch(root)
    source = (root / REWARD).read_text()
    tree = ast.parse(source)
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "_select_rm_score_fn")
    spec = importlib.util.spec_from_file_location("searchr1_qa_em", Path(REAL) / "verl/utils/reward_score/qa_em.py")
    assert spec is not None and spec.loader is not None
    qa_em = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(qa_em)
    namespace: dict = {"qa_em": qa_em}
    exec(compile(ast.Module(body=[fn], type_ignores=[]), REWARD, "exec"), namespace)
    select = namespace["_select_rm_score_fn"]
    assert select("nq") is qa_em.compute_score_em
    for unknown in ("not_a_source", "kare_not_a_task"):
        with pytest.raises(NotImplementedError):
            select(unknown)
    # the keywords RewardManager.__call__ passes, as written in Search-R1's source
    manager = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "RewardManager")
    call = next(n for n in ast.walk(manager) if isinstance(n, ast.Call)
                and getattr(n.func, "id", "") == "compute_score_fn")
    keywords = [k.arg for k in call.keywords]
    assert {"solution_str", "ground_truth"} <= set(keywords) and not call.args
    for source, response, label, format_score, expected in CASES:
        values = {"solution_str": PROMPT + response, "ground_truth": {"target": [label]},
                  "format_score": format_score}
        kwargs = {k: values.get(k, 0.0) for k in keywords}
        assert select(source)(**kwargs) == pytest.approx(expected)
