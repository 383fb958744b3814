"""Every shell block of README.md and docs/*.md: run on the shipped sample corpus on CPU where it can run, otherwise
(marked ``<!-- docs-test: check REASON -->``) checked: ``bash -n``, each ``medret`` command through medret's own
parser (an unknown command, flag or choice fails), each ``retriever.KEY=`` hydra override through
``RetrieverConfig.from_mapping``, and its dry runs run (slurm render / check, plan, ``bash job --dry-run``).
docs/walkthrough.md runs as one sequence: tests/docs/test_walkthrough.py. The marker convention:
docs/architecture.md ("Docs that run")."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.docs.blocks import (
    Block,
    commands,
    dry_run_lines,
    hydra_retriever_problems,
    logical_lines,
    medret_argvs,
    parse_error,
    prose_command_problems,
    prose_commands,
    read_blocks,
)

REPO = Path(__file__).resolve().parents[2]
SEQUENCES = {"docs/walkthrough.md"}  # files whose blocks depend on each other: run in order by their own test


def doc_files() -> list[Path]:
    return [Path("README.md")] + sorted(p.relative_to(REPO) for p in (REPO / "docs").glob("*.md"))


def all_blocks() -> list[Block]:
    out = []
    for rel in doc_files():
        for b in read_blocks(REPO / rel):
            b.path = rel
            out.append(b)
    return out


def docs_env(base: Path, cache: Path, data: Path, db: Path, **extra: str) -> dict[str, str]:
    """The environment a block runs in: the venv's `medret` first on PATH, HOME and every cache under the test's
    folder, the hub offline (no network), and the variables the docs use for their folders."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MEDRET_", "HF_", "SLURM_", "RAY_", "CUDA_")) and k not in ("TRANSFORMERS_CACHE",)}
    home = base / "home"
    home.mkdir(exist_ok=True)
    env.update(PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""), HOME=str(home),
               MEDRET_CACHE=str(cache), HF_HOME=str(base / "hf"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               XDG_CACHE_HOME=str(base / "xdg"), TMPDIR=str(base), NO_PROXY="127.0.0.1,localhost",
               no_proxy="127.0.0.1,localhost", DB=str(db), DATA=str(data), PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One medret cache for every block (the sample's store and BM25 index are built once), a data folder as
    `medret kare prepare` writes it, and an empty db dir."""
    base = tmp_path_factory.mktemp("docs-shared")
    cache, db = base / "medret-cache", base / "db"
    db.mkdir()
    env = docs_env(base, cache, base / "data", db)
    for cmd in (["medret", "kare", "synth", "--n", "400", "--seed", "0", "--out", "syn"],
                ["medret", "kare", "prepare", "--samples", "syn/samples.json", "--similar", "syn/similar.json",
                 "--seed", "0", "--out", str(base / "data")],
                ["medret", "index", "build", "--corpus", "sample", "--retriever", "BM25"]):
        r = subprocess.run(cmd, cwd=base, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, (cmd, r.stderr[-2000:])
    return {"cache": cache, "data": base / "data", "db": db}


def check_statically(block: Block) -> list[str]:
    problems = list(block.problems)
    r = subprocess.run(["bash", "-n"], input=block.text, capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        problems.append(f"bash -n: {r.stderr.strip()}")
    try:
        for line, argv in medret_argvs(block.text):
            err = parse_error(argv)
            if err:
                problems.append(f"`{line}`: {err}")
        problems += hydra_retriever_problems(block.text)
    except ValueError as e:
        problems.append(str(e))
    return problems


def run_block(block: Block, cwd: Path, env: dict[str, str], timeout: int = 300) -> list[str]:
    """Run the block (mode run) or its dry runs (mode check) in ``cwd``; what went wrong."""
    if block.mode == "run":
        scripts = [block.text]
    else:
        scripts = dry_run_lines(block.text)
    problems = []
    for script in scripts:
        rc, out = bash(script, cwd, env, timeout)
        block.output += f"$ {script.strip()}\n{out}\n"
        if rc != 0:
            problems.append(f"`{script.strip()}` exited {rc}:\n{out[-3000:]}")
            break
    return problems


def bash(script: str, cwd: Path, env: dict[str, str], timeout: int = 300) -> tuple[int, str]:
    """``bash -eo pipefail -c script`` in its own process group, which is killed afterwards (a block may start a
    server in the background); its exit status (-9 after ``timeout`` seconds) and output."""
    p = subprocess.Popen(["bash", "-eo", "pipefail", "-c", script], cwd=cwd, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = p.communicate(timeout=timeout)
        rc = p.returncode
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, _ = p.communicate()
        return -9, f"{out}\n(killed after {timeout} s)"
    with contextlib.suppress(ProcessLookupError):
        os.killpg(p.pid, signal.SIGTERM)
    return rc, out


BLOCKS = [b for b in all_blocks() if str(b.path) not in SEQUENCES]


@pytest.mark.parametrize("block", BLOCKS, ids=[b.where for b in BLOCKS])
def test_block_is_true(block, shared, tmp_path):
    problems = check_statically(block)
    if not problems:
        env = docs_env(tmp_path, shared["cache"], shared["data"], shared["db"])
        problems = run_block(block, tmp_path, env)
    assert not problems, f"{block.where} ({block.mode}{': ' + block.reason if block.reason else ''}):\n" + \
        "\n".join(problems)


def test_every_doc_has_been_read():
    files = {str(b.path) for b in all_blocks()}
    assert {"README.md", "docs/kare.md", "docs/clusters.md", "docs/walkthrough.md"} <= files


# The checker itself: what must fail does fail.

def test_parser_check_refuses_unknown_commands_flags_and_choices():
    assert parse_error(["search", "sepsis", "--corpus", "sample"]) is None
    assert parse_error(["slurm", "render", "--help"]) is None
    assert "unrecognized arguments: --bogus" in parse_error(["search", "sepsis", "--bogus", "1"])
    assert "invalid choice" in parse_error(["serch", "sepsis"])
    assert "invalid choice" in parse_error(["slurm", "render", "--layout", "everywhere"])


def test_commands_are_found_through_continuations_pipes_and_assignments():
    text = ("X=1 medret search a \\\n   --topk 3 | head -3   # comment --bogus\n"
            "cd d && medret slurm check job.sbatch; bash job.sbatch --dry-run\n"
            "$ medret plan --gpus 8\n")
    assert [a for _, a in medret_argvs(text)] == [["search", "a", "--topk", "3"], ["slurm", "check", "job.sbatch"],
                                                 ["plan", "--gpus", "8"]]
    assert commands("while [ ! -f $F ]; do sleep 1; done") == [["[", "!", "-f", "$F", "]"], ["sleep", "1"]]
    assert dry_run_lines(text) == ["cd d && medret slurm check job.sbatch; bash job.sbatch --dry-run",
                                   "medret plan --gpus 8"]
    assert logical_lines("a \\\nb\n") == ["a  b"]


def test_hydra_retriever_keys_are_checked():
    assert hydra_retriever_problems("python3 -m verl.trainer.main_ppo +retriever.corpus_name=sample "
                                    "+retriever.gpu_id=3 retriever.topk=3") == []
    (problem,) = hydra_retriever_problems("python3 x +retriever.corpus_nam=sample")
    assert "corpus_nam" in problem


def test_markers(tmp_path):
    md = tmp_path / "x.md"
    md.write_text("a\n\n<!-- docs-test: check needs a GPU -->\n```bash\nmedret search x\n```\n\n"
                  "<!-- docs-test: check -->\n```sh\nls\n```\n<!-- docs-test: skip -->\n\n```console\nls\n```\n"
                  "```python\nprint(1)\n```\n```bash\nls\n```\n", encoding="utf-8")
    got = [(b.line, b.lang, b.mode, b.reason, len(b.problems)) for b in read_blocks(md)]
    assert got == [(4, "bash", "check", "needs a GPU", 0), (9, "sh", "check", "", 1), (14, "console", "skip", "", 1),
                   (20, "bash", "run", "", 0)]


def test_an_unmarked_block_that_cannot_run_fails_naming_its_line(tmp_path, shared):
    md = tmp_path / "bad.md"
    md.write_text("text\n\n```bash\nmedret search sepsis --corpus MedCorp --db-dir /nonexistent\n```\n")
    (block,) = read_blocks(md)
    env = docs_env(tmp_path, shared["cache"], shared["data"], shared["db"])
    problems = check_statically(block) or run_block(block, tmp_path, env)
    assert block.where.endswith("bad.md:3") and problems and "exited 1" in problems[0]


def test_every_medret_command_in_the_prose_has_its_subcommands_and_flags():
    """Inline `medret ...` in the text (usage lines, tables): each subcommand and flag exists."""
    problems, spans = [], 0
    for rel in doc_files():
        for line, span in prose_commands(REPO / rel):
            spans += 1
            problems += [f"{rel}:{line}: {p}" for p in prose_command_problems(span)]
    assert not problems, "\n".join(problems)
    assert spans > 50  # the docs hold about a hundred: the extraction found them


def test_the_prose_check_finds_unknown_flags_and_commands(tmp_path):
    md = tmp_path / "p.md"
    md.write_text("Run `medret search QUERY [--topk] [--bogus]` or\n`medret slurm render|check\n--recipe ppo` and "
                  "`medret serch x` / `medret ray up|info|dance`.\n```bash\nmedret x --in-a-block\n```\n")
    got = [(line, p) for line, span in prose_commands(md) for p in prose_command_problems(span)]
    assert got == [(1, "`medret search QUERY [--topk] [--bogus]`: no flag --bogus (medret search)"),
                   (3, "`medret serch x`: no command serch"), (3, "`medret ray up|info|dance`: no command ray dance")]
