"""Shell blocks of the markdown docs, and the checks the docs test applies to them.

A block is a fenced block whose language is ``bash``, ``sh``, ``shell`` or ``console``. The line just above its
fence (blank lines between are allowed) may carry a marker:

* none, or ``<!-- docs-test: run -->``: the block is run with ``bash -eo pipefail`` in a scratch folder;
* ``<!-- docs-test: check REASON -->``: the block needs what the test machine lacks (a GPU, MedCorp, a cluster, the
  network, a trainer checkout), so it is not run; it is checked instead: ``bash -n``, every ``medret ...`` command
  parsed by medret's own argument parser, every ``retriever.KEY=VALUE`` hydra override read by
  ``RetrieverConfig.from_mapping``, and its dry runs run (``medret slurm render``, ``medret slurm check``,
  ``medret plan``, ``bash FILE --dry-run``).

A marker other than these, or ``check`` without a reason, is an error.
"""
from __future__ import annotations

import contextlib
import functools
import io
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

LANGS = ("bash", "sh", "shell", "console")
MARKER = re.compile(r"^\s*<!--\s*docs-test:\s*(.*?)\s*-->\s*$")
FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")
SEPARATORS = {"&&", "||", ";", "|", "&", "(", ")", ";;", "|&"}
# words that may stand before a command in a shell line
PREFIX_WORDS = {"do", "then", "else", "if", "while", "until", "time", "exec", "!", "{", "}", "done", "fi", "nohup"}
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
HYDRA_RETRIEVER = re.compile(r"^\+{0,2}retriever\.([A-Za-z_][A-Za-z0-9_]*)=(.*)$")


@dataclass
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    mode: str = "run"  # run | check
    reason: str = ""
    problems: list[str] = field(default_factory=list)  # marker errors found while reading
    output: str = ""  # what running it (or its dry runs) printed

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


def read_blocks(path: Path) -> list[Block]:
    """Every shell block of a markdown file, with its marker."""
    lines = path.read_text(encoding="utf-8").splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, lang, start = m.group(2), m.group(3).lower(), i
        j = i + 1
        while j < len(lines) and not lines[j].strip().startswith(fence):
            j += 1
        if lang in LANGS:
            block = Block(path, start + 1, lang, "\n".join(lines[start + 1:j]) + "\n")
            k = start - 1
            while k >= 0 and not lines[k].strip():
                k -= 1
            marker = MARKER.match(lines[k]) if k >= 0 else None
            if marker:
                word, _, reason = marker.group(1).partition(" ")
                block.mode, block.reason = word, reason.strip()
                if word not in ("run", "check"):
                    block.problems.append(f"unknown docs-test marker {marker.group(1)!r} (use run, check REASON)")
                elif word == "check" and not block.reason:
                    block.problems.append("`docs-test: check` needs a reason (what the test machine lacks)")
            out.append(block)
        i = j + 1
    return out


def logical_lines(text: str) -> list[str]:
    """Lines with backslash continuations joined; console prompts (``$ ``) dropped."""
    text = text.replace("\\\n", " ")
    return [line[2:] if line.startswith("$ ") else line for line in text.splitlines()]


def commands(line: str) -> list[list[str]]:
    """The simple commands of one shell line, as argv (words as the shell would split them, unexpanded), with
    leading assignments and keywords removed; comments dropped."""
    lex = shlex.shlex(line, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    lex.commenters = "#"
    cmds: list[list[str]] = [[]]
    try:
        tokens = list(lex)
    except ValueError as e:  # unbalanced quotes: bash -n reports it
        raise ValueError(f"cannot split {line!r}: {e}") from e
    for tok in tokens:
        if tok in SEPARATORS or set(tok) <= set("<>&|;()0123456789") and any(c in tok for c in "<>&|;()"):
            cmds.append([])
            continue
        cur = cmds[-1]
        if not cur and (tok in PREFIX_WORDS or ASSIGNMENT.match(tok)):
            continue
        cur.append(tok)
    return [c for c in cmds if c]


def medret_argvs(text: str) -> list[tuple[str, list[str]]]:
    """(logical line, argv after ``medret``) of every medret command in a block."""
    out = []
    for line in logical_lines(text):
        for argv in commands(line):
            if argv[0] == "medret" or argv[0].endswith("/bin/medret"):
                out.append((line.strip(), argv[1:]))
    return out


def parse_error(argv: list[str]) -> str | None:
    """What medret's own parser says of ``argv`` (None if it accepts it): unknown commands, flags and choices."""
    from medret import cli

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            cli.build_parser().parse_args(argv)
    except SystemExit as e:
        if e.code not in (0, None):
            return err.getvalue().strip().splitlines()[-1] if err.getvalue().strip() else f"exit {e.code}"
    return None


def hydra_retriever_problems(text: str) -> list[str]:
    """``retriever.KEY=VALUE`` overrides of one command that Search-R1's ``retriever`` block does not accept."""
    from medret.config import RetrieverConfig
    from medret.errors import MedretError

    problems = []
    for line in logical_lines(text):
        for argv in commands(line):
            block = {}
            for word in argv:
                m = HYDRA_RETRIEVER.match(word)
                if m:
                    block[m.group(1)] = m.group(2)
            if block:
                try:
                    RetrieverConfig.from_mapping(block)
                except MedretError as e:
                    problems.append(f"{' '.join(f'retriever.{k}={v}' for k, v in block.items())}: {e}")
    return problems


def is_dry_run(argv: list[str]) -> bool:
    """Commands of a check block that run anyway: they write a job script, check one or print a plan."""
    if argv[:1] == ["medret"]:
        return argv[1:3] in (["slurm", "render"], ["slurm", "check"]) or argv[1:2] == ["plan"]
    return argv[:1] == ["bash"] and "--dry-run" in argv


def dry_run_lines(text: str) -> list[str]:
    return [line.strip() for line in logical_lines(text) if any(is_dry_run(a) for a in commands(line))]


def shell_words(argv: list[str]) -> str:
    return " ".join(shlex.quote(a) for a in argv)


# ------------------------------------------------------------------------------------------ `medret ...` in prose

FENCED = re.compile(r"^(\s*)(`{3,}|~{3,}).*?^\1\2[ \t]*$", re.S | re.M)
CODE_SPAN = re.compile(r"(?<!`)`([^`]+)`(?!`)")
FLAG = re.compile(r"(?<![\w-])(--?[A-Za-z][\w-]*)")


def prose_commands(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every inline code span of the prose (fenced blocks left out) that starts with ``medret ``;
    a span that wraps onto the next line is joined; ``a / b`` spans give each command."""
    text = path.read_text(encoding="utf-8")
    text = FENCED.sub(lambda m: "\n" * m.group(0).count("\n"), text)
    out = []
    for m in CODE_SPAN.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        for part in re.split(r"\s+/\s+", " ".join(m.group(1).split())):
            if part.startswith("medret "):
                out.append((line, part))
    return out


@functools.lru_cache(maxsize=1)
def _parser():
    from medret import cli

    return cli.build_parser()


def prose_command_problems(span: str) -> list[str]:
    """The subcommands and flags of a usage line such as ``medret slurm render ... [--recipe ppo|grpo]`` that
    medret's parser does not have (words in capitals are placeholders; ``a|b`` are alternatives)."""
    import argparse

    parser = _parser()
    words = span.split()[1:]
    problems = []
    i = 0
    while i < len(words):
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        word = words[i].strip("[]()`,.")
        if not subs or word.startswith("-") or not re.fullmatch(r"[a-z][a-z0-9-]*(\|[a-z][a-z0-9-]*)*", word):
            break
        choices = subs[0].choices
        names = word.split("|")
        unknown = [n for n in names if n not in choices]
        if unknown:
            problems.append(f"`{span}`: no command {' '.join(words[:i])} {unknown[0]}".replace("  ", " "))
            return problems
        parser = choices[names[0]]
        i += 1
    known = set(parser._option_string_actions) | set(_parser()._option_string_actions)
    for flag in FLAG.findall(" ".join(words[i:])):
        if flag not in known:
            problems.append(f"`{span}`: no flag {flag} (medret {' '.join(words[:i])})")
    return problems
