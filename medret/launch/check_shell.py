"""What `medret slurm check` applies to every line and word of a script (docs/clusters.md, "What `slurm check`
refuses"): no injected command, no expansion where a user value was rendered. The rule:

any script
  1. no control character but tab and newline (a carriage return, escape, ...) anywhere;
  2. between the first line and the last #SBATCH line, nothing but comments and blank lines: sbatch stops
     reading #SBATCH at the first command, so the options after it are silently ignored, and a command there
     is how a newline injected into an #SBATCH value shows;
  3. every #SBATCH value valid for its option (SBATCH_VALUES; other options: no spaces, quotes or $).
scripts rendered by medret (they carry the job-spec block)
  4. nothing but comments and blank lines before `set -eo pipefail` (the template has only #SBATCH lines and
     comments there);
  5. every line of the "this job" block has the template's shape, with a LITERAL_WORD wherever the template
     puts a user value (corpus, retriever, model, data dir, db dir) and a number or GPU list where it puts one;
  6. every word of the training, smoke and retriever commands is a LITERAL_WORD or one of the template's
     TEMPLATE_WORDS; every line of the training command but the last ends in " \"; the smoke and retriever
     commands are one line each.
A LITERAL_WORD is a shell word without any expansion: bare [A-Za-z0-9_@%+=:,./-], '...' or "..." without $, `
or \\. Commands a user adds elsewhere in a rendered script, and the body of a hand-written one after its #SBATCH
lines, are not judged: nothing tells a user value from the author's code there.
"""
from __future__ import annotations

import re

from medret.launch.render import TEMPLATE_WORDS, template
from medret.launch.spec import sbatch_value_problem

# A shell word with no expansion at all: the only form a user value may take in a rendered script (what
# shlex.quote writes: bare safe characters, '...' segments, and "..." without $, ` or \)
LITERAL_WORD = r"(?:[A-Za-z0-9_@%+=:,./-]|'[^']*'|\"[^\"$`\\]*\")+"
_LITERAL_RE = re.compile(LITERAL_WORD)

_BLOCK_BEGIN = "# ---------------------------------------------------------------- this job"
_BLOCK_END = "# ---------------------------------------------------------------- helpers"
_PLACEHOLDER_PATTERNS = {
    "nodes": r"\d+", "gpus_per_node": r"\d+", "n_train_gpus": r"\d+", "shards": r"\d+", "health_timeout": r"\d+",
    "train_gpus": r"[\d,]*", "retriever_gpus": r"[\d,]*", "retriever_node": r"\d*", "layout": r"[a-z-]+",
    "mode": r"[a-z]+", "retriever_device": r"[a-z]+", "ray_resource": r"[A-Za-z0-9_]+",
    "paths_on_compute_nodes": r"[01]",
}


def _is_code(line: str) -> bool:
    t = line.strip()
    return bool(t) and not t.startswith("#")


def _block_patterns() -> list[re.Pattern]:
    """One regex per line of the template's "this job" block: literal text, placeholders as their values' form."""
    text = template("job.sbatch")
    lines = text[text.index(_BLOCK_BEGIN) + len(_BLOCK_BEGIN):text.index("@@{common}")].splitlines()
    out = []
    for line in lines:
        code = line.split("  #", 1)[0].strip()  # the template's comments follow two spaces
        if not code:
            continue
        parts = re.split(r"@@\{(\w+)\}", code)
        rx = "".join(re.escape(p) if i % 2 == 0 else f"(?:{_PLACEHOLDER_PATTERNS.get(p, LITERAL_WORD)})"
                     for i, p in enumerate(parts))
        out.append(re.compile(rx + r"(?:\s+#.*)?"))
    return out


def shell_words(text: str) -> list[str]:
    """Split shell text into words as written (quotes kept): whitespace outside quotes, ${...} and $(...)
    separates words; a backslash-newline continues the line. Enough to judge words, not a full shell parser."""
    words: list[str] = []
    cur = ""
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in " \t\n":
            if cur:
                words.append(cur)
                cur = ""
            i += 1
        elif c == "\\":
            if text.startswith("\\\n", i):
                i += 2
            else:
                cur += text[i:i + 2]
                i += 2
        elif c == "'":
            j = text.find("'", i + 1)
            j = n - 1 if j < 0 else j
            cur += text[i:j + 1]
            i = j + 1
        elif c == '"' or text.startswith("${", i) or text.startswith("$(", i):
            j = _closing(text, i)
            cur += text[i:j + 1]
            i = j + 1
        else:
            cur += c
            i += 1
    if cur:
        words.append(cur)
    return words


def _closing(text: str, i: int) -> int:
    """Index of what closes the double quote, ${ or $( that starts at ``i`` (nesting and quotes inside)."""
    closer = '"' if text[i] == '"' else ("}" if text[i + 1] == "{" else ")")
    j = i + (1 if closer == '"' else 2)
    while j < len(text):
        c = text[j]
        if c == "\\":
            j += 2
            continue
        if c == closer:
            return j
        if c == "'" and closer != '"':
            k = text.find("'", j + 1)
            j = len(text) if k < 0 else k + 1
            continue
        if c == '"' and closer != '"' or text.startswith("${", j) or text.startswith("$(", j):
            j = _closing(text, j) + 1
            continue
        j += 1
    return len(text) - 1


def check_injection(errors: list[str], text: str, rendered: bool) -> None:
    """Append to ``errors`` every line or word of ``text`` that breaks the rule above."""
    lines = text.split("\n")
    for no, line in enumerate(lines, 1):
        m = re.search("[\x00-\x08\x0b-\x1f\x7f]", line)
        if m:
            errors.append(f"line {no} holds the control character {m.group()!r}: job scripts are plain text "
                              "(a carriage return means Windows line endings: convert with dos2unix)")
    sbatch_lines = [no for no, line in enumerate(lines, 1) if re.match(r"\s*#SBATCH\b", line)]
    if sbatch_lines:
        for no in range(2, sbatch_lines[-1]):
            if _is_code(lines[no - 1]):
                errors.append(f"line {no} ({lines[no - 1].strip()[:80]!r}) is a command among the #SBATCH lines: "
                                  "sbatch stops reading #SBATCH options at the first command, so the ones after it "
                                  "are ignored, and bash runs it; in a rendered script it can only come from a value "
                                  "with a newline. Re-render the script (or move the command below the #SBATCH lines)")
                break
    for no in sbatch_lines:
        m = re.match(r"\s*#SBATCH\s+--([A-Za-z][A-Za-z0-9-]*)(?:[= ]\s*(.*?))?\s*$", lines[no - 1])
        if m and m.group(2) is not None:
            problem = sbatch_value_problem(m.group(1), m.group(2))
            if problem:
                errors.append(f"line {no}: #SBATCH {problem}")
    if not rendered:
        return
    try:
        first = next(no for no, line in enumerate(lines, 1) if line.strip() == "set -eo pipefail")
    except StopIteration:
        first = len(lines) + 1
    for no in range(2, first):
        if _is_code(lines[no - 1]) and not re.match(r"\s*#", lines[no - 1]):
            errors.append(f"line {no} ({lines[no - 1].strip()[:80]!r}) is a command before `set -eo pipefail`, "
                              "where medret's template has only #SBATCH lines and comments: a value with a newline "
                              "was rendered into the script, or it was edited. Re-render it")
            break
    begin = [no for no, line in enumerate(lines, 1) if line.startswith(_BLOCK_BEGIN)]
    end = [no for no, line in enumerate(lines, 1) if line.startswith(_BLOCK_END)]
    if not begin or not end or end[0] < begin[0]:
        errors.append("the script has no \"this job\" block between its '# ---- this job' and '# ---- helpers' "
                          "lines: it is not a script medret rendered, or it was edited; re-render it")
    else:
        patterns = _block_patterns()
        for no in range(begin[0] + 1, end[0]):
            line = lines[no - 1]
            if _is_code(line) and not any(p.fullmatch(line.strip()) for p in patterns):
                errors.append(f"line {no} ({line.strip()[:80]!r}) is not in the form medret renders: the job "
                                  "block holds plain values only (a quoted word, a number, a GPU list); an "
                                  "unquoted $(...), `...` or ; would run when the script starts. Re-render it")
    for name, m in (("training", re.search(r"TRAIN_CMD=\((.*?)\n\s*\)", text, re.S)),
                    ("smoke", re.search(r"SMOKE_CMD=\((.*?)\)\s*\n\}", text, re.S)),
                    ("retriever", re.search(r"RETRIEVER_CMD=\((.*?)\)\s*\n\}", text, re.S))):
        if not m:
            continue
        cmd_lines = [line for line in m.group(1).strip("\n").split("\n")]
        if name != "training" and len(cmd_lines) > 1:
            errors.append(f"the {name} command spans several lines; medret renders it on one: a value with a "
                          "newline was rendered into it, or it was edited. Re-render the script")
        for line in cmd_lines[:-1]:
            if name == "training" and not line.rstrip().endswith(" \\"):
                errors.append(f"the training command's line {line.strip()[:80]!r} does not end with ' \\' as "
                                  "every line of it but the last does when medret renders it: a value with a newline "
                                  "was rendered into it, or it was edited. Re-render the script")
                break
        for w in shell_words(m.group(1)):
            if w not in TEMPLATE_WORDS and not _LITERAL_RE.fullmatch(w):
                errors.append(f"the {name} command holds the word {w[:80]!r}, which is neither a plain value "
                                  "(quoted, no $ or `) nor one of medret's template words: it would be expanded or "
                                  "run by bash. Re-render the script")
