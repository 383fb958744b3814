"""`medret searchr1 patch|check|revert` on Search-R1-shaped fixture files (and on a real checkout when given)."""
from __future__ import annotations

import ast
import os
import shutil
import stat
from pathlib import Path

import pytest

from medret.cli import main
from medret.integrations import searchr1_patch as sp

GEN = sp.GENERATION_FILE
TRAINER = sp.TRAINER_FILE
REWARD = sp.REWARD_FILE


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
            and "__pycache__" not in p.parts}


def test_check_patch_idempotent_revert_byte_for_byte(checkout: Path, capsys):
    original = snapshot(checkout)
    assert main(["searchr1", "check", str(checkout)]) == 1
    assert main(["searchr1", "patch", str(checkout), "--check"]) == 1

    assert main(["searchr1", "patch", str(checkout)]) == 0
    patched = snapshot(checkout)
    assert set(patched) == set(original) | {rel + ".medret-orig" for rel in (GEN, TRAINER, REWARD)}
    for rel in (GEN, TRAINER, REWARD):
        assert patched[rel + ".medret-orig"] == original[rel]
        assert patched[rel] != original[rel]
    assert main(["searchr1", "check", str(checkout)]) == 0
    assert main(["searchr1", "patch", str(checkout), "--check"]) == 0

    capsys.readouterr()
    assert main(["searchr1", "patch", str(checkout)]) == 0  # second run changes nothing
    assert "already patched" in capsys.readouterr().out
    assert snapshot(checkout) == patched

    assert main(["searchr1", "revert", str(checkout)]) == 0
    assert snapshot(checkout) == original  # original bytes, backups gone
    assert main(["searchr1", "check", str(checkout)]) == 1
    assert main(["searchr1", "patch", str(checkout), "--revert"]) == 0  # nothing to revert is fine
    assert snapshot(checkout) == original


def test_patched_structure(checkout: Path):
    sp.patch(checkout)
    gen = (checkout / GEN).read_text()
    tree = ast.parse(gen)
    cfg = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "GenerationConfig")
    fields = [n.target.id for n in cfg.body if isinstance(n, ast.AnnAssign)]
    assert fields[-3:] == ["search_url", "topk", "retriever"]
    mgr = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "LLMGenerationManager")
    fn = next(n for n in mgr.body if isinstance(n, ast.FunctionDef) and n.name == "_batch_search")
    src = ast.get_source_segment(gen, fn)
    assert "medret.integrations.searchr1_runtime" in src
    assert "requests.post(self.config.search_url" in src  # the HTTP path is kept below the preamble
    # untouched methods stay byte-identical
    orig = (checkout / (GEN + ".medret-orig")).read_text()
    for name in ("_passages2string", "batch_search", "__init__"):
        def seg(text: str, name: str = name) -> str:
            t = ast.parse(text)
            m = next(n for n in t.body if isinstance(n, ast.ClassDef) and n.name == "LLMGenerationManager")
            return ast.get_source_segment(text, next(f for f in m.body if getattr(f, "name", "") == name))
        assert seg(gen) == seg(orig)
    trainer = (checkout / TRAINER).read_text()
    calls = [n for n in ast.walk(ast.parse(trainer)) if isinstance(n, ast.Call)
             and getattr(n.func, "id", "") == "GenerationConfig"]
    assert len(calls) == 2
    for call in calls:
        kw = {k.arg: ast.unparse(k.value) for k in call.keywords}
        assert kw["retriever"] == "OmegaConf.to_container(self.config.retriever, resolve=True)"
    # main_ppo.py: one `if` before the original body of _select_rm_score_fn, everything else byte-identical
    reward = (checkout / REWARD).read_text()
    reward_orig = (checkout / (REWARD + ".medret-orig")).read_text()

    def select_fn(text: str) -> ast.FunctionDef:
        return next(n for n in ast.parse(text).body if isinstance(n, ast.FunctionDef)
                    and n.name == "_select_rm_score_fn")

    new_fn, old_fn = select_fn(reward), select_fn(reward_orig)
    assert len(new_fn.body) == len(old_fn.body) + 1
    assert [ast.dump(n) for n in new_fn.body[1:]] == [ast.dump(n) for n in old_fn.body]
    guard = new_fn.body[0]
    assert isinstance(guard, ast.If)
    assert ast.unparse(guard.test) == "str(data_source).startswith('kare_')"
    assert "from medret.recipes.kare.rewards import search_r1_score_fn" in ast.unparse(guard)
    assert reward.replace(ast.get_source_segment(reward, new_fn), "") == \
        reward_orig.replace(ast.get_source_segment(reward_orig, old_fn), "")


def test_unknown_version_is_refused_and_nothing_changes(checkout: Path, capsys):
    gen = checkout / GEN
    gen.write_text(gen.read_text().replace("def _batch_search(self, queries):", "def _search(self, queries):"))
    before = snapshot(checkout)
    assert main(["searchr1", "check", str(checkout)]) == 2
    assert "no _batch_search" in capsys.readouterr().out
    assert main(["searchr1", "patch", str(checkout)]) == 1
    err = capsys.readouterr().err
    assert "not a known Search-R1 version" in err and "Nothing was changed" in err
    assert snapshot(checkout) == before


@pytest.mark.parametrize("edit, reason", [
    (lambda s: s.replace("    search_url: str = None\n", ""), "no field 'search_url'"),
    (lambda s: s.replace("def _batch_search(self, queries):", "def _batch_search(self, queries, topk):"),
     "does not take (self, queries)"),
    (lambda s: s.replace("@dataclass\nclass GenerationConfig", "class GenerationConfig"), "GenerationConfig"),
    (lambda s: s + "\ndef broken(:\n", "not valid Python"),
])
def test_unknown_generation_variants(checkout: Path, edit, reason):
    gen = checkout / GEN
    gen.write_text(edit(gen.read_text()))
    report = sp.check(checkout)
    assert report.status is sp.Status.UNKNOWN
    assert reason in report.describe()
    with pytest.raises(sp.PatchError):
        sp.patch(checkout)
    assert not (checkout / (GEN + ".medret-orig")).exists()


def test_unknown_trainer_without_search_url(checkout: Path):
    tr = checkout / TRAINER
    tr.write_text(tr.read_text().replace("search_url = self.config.retriever.url,", ""))
    assert sp.check(checkout).status is sp.Status.UNKNOWN
    with pytest.raises(sp.PatchError):
        sp.patch(checkout)


def test_not_a_checkout(tmp_path: Path, capsys):
    assert main(["searchr1", "check", str(tmp_path)]) == 1
    assert "does not look like a Search-R1 checkout" in capsys.readouterr().err
    assert main(["searchr1", "patch", str(tmp_path / "nope")]) == 1
    assert "is not a directory" in capsys.readouterr().err


def test_partly_patched_is_reported_and_completed(checkout: Path):
    sp.patch(checkout)
    shutil.copy(checkout / (TRAINER + ".medret-orig"), checkout / TRAINER)
    (checkout / (TRAINER + ".medret-orig")).unlink()
    report = sp.check(checkout)
    assert report.status is sp.Status.UNPATCHED
    assert [f.status for f in report.files] == [sp.Status.PATCHED, sp.Status.UNPATCHED, sp.Status.PATCHED]
    sp.patch(checkout)
    assert sp.check(checkout).status is sp.Status.PATCHED


def test_revert_refuses_after_edits_unless_forced(checkout: Path, capsys):
    original = snapshot(checkout)
    sp.patch(checkout)
    gen = checkout / GEN
    gen.write_text(gen.read_text() + "\n# a user's own edit\n")
    edited = snapshot(checkout)
    assert main(["searchr1", "revert", str(checkout)]) == 1
    assert "edited after medret patched it" in capsys.readouterr().err
    assert snapshot(checkout) == edited
    assert main(["searchr1", "revert", str(checkout), "--force"]) == 0
    assert snapshot(checkout) == original


def test_revert_without_backup_is_refused(checkout: Path):
    sp.patch(checkout)
    (checkout / (GEN + ".medret-orig")).unlink()
    before = snapshot(checkout)
    with pytest.raises(sp.PatchError, match="backup .* is missing"):
        sp.revert(checkout)
    assert snapshot(checkout) == before


def test_dry_run_writes_nothing(checkout: Path, capsys):
    before = snapshot(checkout)
    assert main(["searchr1", "patch", str(checkout), "--dry-run"]) == 0
    assert "would be patched" in capsys.readouterr().out
    assert snapshot(checkout) == before


def test_file_mode_and_crlf_are_preserved(checkout: Path):
    gen = checkout / GEN
    gen.write_bytes(gen.read_bytes().replace(b"\n", b"\r\n"))
    os.chmod(gen, 0o640)
    original = gen.read_bytes()
    sp.patch(checkout)
    text = gen.read_bytes()
    assert b"\r\n" in text and b"\n" not in text.replace(b"\r\n", b"")
    assert stat.S_IMODE(gen.stat().st_mode) == 0o640
    sp.revert(checkout)
    assert gen.read_bytes() == original
    assert stat.S_IMODE(gen.stat().st_mode) == 0o640


def test_layout_variants(checkout: Path):
    """Docstring in _batch_search, a one-line GenerationConfig call, a call without a trailing comma."""
    gen = checkout / GEN
    gen.write_text(gen.read_text().replace(
        "    def _batch_search(self, queries):\n",
        '    def _batch_search(self, queries):\n        """Ask the search server."""\n'))
    tr = checkout / TRAINER
    text = tr.read_text()
    text = text.replace("            topk = self.config.retriever.topk,\n        )\n\n        generation_manager = "
                        "LLMGenerationManager(\n            tokenizer=self.tokenizer,\n            actor_rollout_wg"
                        "=self.actor_rollout_wg,\n            config=gen_config,\n            is_validation",
                        "            topk = self.config.retriever.topk\n        )\n\n        generation_manager = "
                        "LLMGenerationManager(\n            tokenizer=self.tokenizer,\n            actor_rollout_wg"
                        "=self.actor_rollout_wg,\n            config=gen_config,\n            is_validation", 1)
    text = text.replace("    def fit(self):\n",
                        "    def fit(self):\n        quick = GenerationConfig(max_turns=1, max_start_length=1, "
                        "max_prompt_length=1, max_response_length=1, max_obs_length=1, num_gpus=1, "
                        "search_url=self.config.retriever.url, topk=self.config.retriever.topk)\n")
    tr.write_text(text)
    assert sp.check(checkout).status is sp.Status.UNPATCHED
    sp.patch(checkout)
    assert sp.check(checkout).status is sp.Status.PATCHED
    new_gen = gen.read_text()
    assert new_gen.index('"""Ask the search server."""') < new_gen.index("medret_cfg")
    trainer = tr.read_text()
    calls = [n for n in ast.walk(ast.parse(trainer)) if isinstance(n, ast.Call)
             and getattr(n.func, "id", "") == "GenerationConfig"]
    assert len(calls) == 3
    assert all("retriever" in {k.arg for k in c.keywords} for c in calls)
    sp.patch(checkout)  # still idempotent
    assert sp.check(checkout).status is sp.Status.PATCHED
    sp.revert(checkout)
    assert sp.check(checkout).status is sp.Status.UNPATCHED


def test_trainer_without_omegaconf_import_gets_one(checkout: Path):
    tr = checkout / TRAINER
    tr.write_text(tr.read_text().replace("from omegaconf import OmegaConf\n", ""))
    sp.patch(checkout)
    text = tr.read_text()
    assert f"from omegaconf import OmegaConf  {sp.MARKER}" in text
    assert text.index("from omegaconf import OmegaConf") > text.index("from search_r1.llm_agent.generation import")
    compile(text, str(tr), "exec")
    sp.revert(checkout)
    assert "OmegaConf  #" not in tr.read_text()


REAL = os.environ.get("MEDRET_SEARCHR1_CHECKOUT")


@pytest.mark.skipif(not REAL, reason="set MEDRET_SEARCHR1_CHECKOUT to a Search-R1 checkout to test the real files")
def test_real_searchr1_checkout(tmp_path: Path):
    root = tmp_path / "real"
    for rel in (GEN, TRAINER, REWARD):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(Path(REAL) / rel, root / rel)
    original = snapshot(root)
    assert sp.check(root).status is sp.Status.UNPATCHED
    sp.patch(root)
    assert sp.check(root).status is sp.Status.PATCHED
    for rel in (GEN, TRAINER, REWARD):
        compile((root / rel).read_text(), rel, "exec")
    trainer = (root / TRAINER).read_text()
    assert trainer.count("retriever=OmegaConf.to_container(self.config.retriever, resolve=True)") == 2
    reward = (root / REWARD).read_text()
    assert reward.count("from medret.recipes.kare.rewards import search_r1_score_fn") == 1
    assert (root / (REWARD + ".medret-orig")).read_bytes() == original[REWARD]
    patched = snapshot(root)
    sp.patch(root)
    assert snapshot(root) == patched
    sp.revert(root)
    assert snapshot(root) == original
