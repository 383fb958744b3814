"""Patch a Search-R1 checkout so that its trainer searches through medret and scores medret's data sources.

Three files are edited, each located structurally with :mod:`ast` (never by line number):

``search_r1/llm_agent/generation.py``
    * the ``GenerationConfig`` dataclass gets one more field, ``retriever`` (the whole ``retriever`` config block),
      and a ``__post_init__`` that checks that block with
      :func:`medret.integrations.searchr1_runtime.validate_block`: a typo in a ``+retriever.*`` key (or a value of
      the wrong kind) fails when the trainer builds its generation manager, not at the first search;
    * ``LLMGenerationManager._batch_search(self, queries)`` gets a short preamble: when that block asks for a
      non-HTTP backend (``backend: local|ray`` or the alias ``local: true``) it returns
      ``medret.integrations.searchr1_runtime.batch_search(block, queries, topk=...)``; otherwise the original HTTP
      code below it runs unchanged. ``batch_search`` and ``_passages2string`` are untouched.

``verl/trainer/ppo/ray_trainer.py``
    * every ``GenerationConfig(..., search_url=..., topk=...)`` call gets
      ``retriever=OmegaConf.to_container(self.config.retriever, resolve=True)``.

``verl/trainer/main_ppo.py``
    * ``_select_rm_score_fn(data_source)`` gets a short preamble: a data source starting with
      :data:`MEDRET_SOURCE_PREFIX` (``kare_``) that :func:`medret.recipes.kare.rewards.search_r1_score_fn` knows
      returns medret's score function; every other source (and an unknown ``kare_*`` one) runs the original code
      below, which raises ``NotImplementedError`` for sources it does not know, as before. Other sources never
      import medret. The file is accepted only when ``RewardManager`` calls the selected function with
      ``solution_str=`` and ``ground_truth=`` keywords (no positional arguments), the convention medret's score
      functions take. This edit is in the source because Search-R1 builds its reward manager inside a Ray task
      (``main_task``), where a monkeypatch made in the driver does not reach.

Each inserted piece carries the marker comment :data:`MARKER`, which makes patching idempotent. Before the first
edit the original bytes are saved next to each file as ``<file>.medret-orig``; ``revert`` restores them and removes
the backup. A file whose structure does not match a known Search-R1 version is refused and nothing is written.
"""
from __future__ import annotations

import ast
import enum
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from medret.errors import ConfigError, MedretError
from medret.integrations.source_edit import (
    SourceText,
    dataclass_fields,
    find_class,
    find_method,
    first_statement_after_docstring,
    indent_of,
    is_dataclass,
    statement_start_line,
)
from medret.storage.atomic import atomic_write_bytes

logger = logging.getLogger(__name__)

MARKER = "# medret-searchr1-patch"
BACKUP_SUFFIX = ".medret-orig"
GENERATION_FILE = "search_r1/llm_agent/generation.py"
TRAINER_FILE = "verl/trainer/ppo/ray_trainer.py"
REWARD_FILE = "verl/trainer/main_ppo.py"
TARGET_FILES = (GENERATION_FILE, TRAINER_FILE, REWARD_FILE)
#: data sources whose name starts with this are offered to medret's rewards first
MEDRET_SOURCE_PREFIX = "kare_"


class PatchError(MedretError):
    """The checkout cannot be patched or reverted as asked."""


class Status(enum.Enum):
    PATCHED = "patched"
    UNPATCHED = "not patched"
    UNKNOWN = "unknown version"


#: ``medret searchr1 check`` exit status per overall status.
EXIT_CODES = {Status.PATCHED: 0, Status.UNPATCHED: 1, Status.UNKNOWN: 2}


@dataclass
class FileReport:
    path: Path
    status: Status
    reason: str = ""


@dataclass
class CheckoutReport:
    root: Path
    files: list[FileReport] = field(default_factory=list)

    @property
    def status(self) -> Status:
        states = {f.status for f in self.files}
        if Status.UNKNOWN in states:
            return Status.UNKNOWN
        if states == {Status.PATCHED}:
            return Status.PATCHED
        return Status.UNPATCHED

    def describe(self) -> str:
        lines = [f"{self.root}: {self.status.value}"]
        for f in self.files:
            extra = f" ({f.reason})" if f.reason else ""
            lines.append(f"  {f.path.relative_to(self.root)}: {f.status.value}{extra}")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------
# parsing


def _parse(path: Path, source: str) -> ast.Module:
    try:
        return ast.parse(source, filename=str(path))
    except SyntaxError as e:
        raise PatchError(f"{path} is not valid Python ({e.msg} at line {e.lineno}); restore it (git checkout) "
                         "before patching") from None


# --------------------------------------------------------------------------------------------------------------
# generation.py


def _generation_batch_search_preamble(indent: str, nl: str) -> str:
    lines = [
        f"{MARKER}: the whole `retriever` config block decides the backend; http keeps the code below",
        "medret_cfg = getattr(self.config, 'retriever', None) or {}",
        "if str(medret_cfg.get('backend', 'http')).lower() != 'http' or "
        "str(medret_cfg.get('local', False)).lower() in ('true', '1', 'yes', 'on'):",
        "    from medret.integrations.searchr1_runtime import batch_search as medret_batch_search",
        "    return medret_batch_search(medret_cfg, queries, topk=self.config.topk)",
        f"{MARKER}: end",
    ]
    return "".join(f"{indent}{line}{nl}" for line in lines)


def _generation_post_init(indent: str, nl: str) -> str:
    inner = indent * 2 if indent else "        "
    return (f"{nl}{indent}def __post_init__(self):  {MARKER}: a typo in +retriever.* fails here, when the trainer "
            f"builds its generation manager{nl}"
            f"{inner}from medret.integrations.searchr1_runtime import validate_block as medret_validate_block{nl}"
            f"{inner}medret_validate_block(self.retriever){nl}")


def _inspect_generation(path: Path, source: str) -> tuple[Status, str, ast.Module | None]:
    tree = _parse(path, source)
    cfg = find_class(tree, "GenerationConfig")
    mgr = find_class(tree, "LLMGenerationManager")
    if cfg is None or not is_dataclass(cfg):
        return Status.UNKNOWN, "no @dataclass GenerationConfig", tree
    if mgr is None:
        return Status.UNKNOWN, "no class LLMGenerationManager", tree
    names = [f.target.id for f in dataclass_fields(cfg)]  # type: ignore[union-attr]
    for needed in ("search_url", "topk"):
        if needed not in names:
            return Status.UNKNOWN, f"GenerationConfig has no field {needed!r}", tree
    fn = find_method(mgr, "_batch_search")
    if fn is None:
        return Status.UNKNOWN, "LLMGenerationManager has no _batch_search method", tree
    args = [a.arg for a in fn.args.args]
    if args != ["self", "queries"] or fn.args.vararg or fn.args.kwarg or fn.args.kwonlyargs:
        return Status.UNKNOWN, f"_batch_search{tuple(args)} does not take (self, queries)", tree
    for method in ("batch_search", "_passages2string"):
        if find_method(mgr, method) is None:
            return Status.UNKNOWN, f"LLMGenerationManager has no {method} method", tree
    has_field = "retriever" in names
    fn_src = ast.get_source_segment(source, fn) or ""
    has_preamble = MARKER in fn_src and "medret_batch_search" in fn_src
    post_init = find_method(cfg, "__post_init__")
    post_src = ast.get_source_segment(source, post_init) or "" if post_init is not None else ""
    checks_block = MARKER in post_src and "medret_validate_block" in post_src
    if post_init is not None and not checks_block:
        return Status.UNKNOWN, "GenerationConfig has a __post_init__ of its own", tree
    if has_field and has_preamble:
        if not checks_block:
            return Status.UNKNOWN, ("patched by an older medret (GenerationConfig does not check the retriever "
                                    "block): run `medret searchr1 revert` and then `medret searchr1 patch`"), tree
        return Status.PATCHED, "", tree
    if not has_field and not has_preamble and MARKER not in source:
        if "requests.post" not in fn_src or "search_url" not in fn_src:
            return Status.UNKNOWN, "_batch_search does not post to self.config.search_url", tree
        return Status.UNPATCHED, "", tree
    return Status.UNKNOWN, "partly patched (GenerationConfig.retriever and the _batch_search preamble disagree)", tree


def _patch_generation(path: Path, source: str, tree: ast.Module) -> str:
    text = SourceText(source)
    nl = text.newline
    cfg = find_class(tree, "GenerationConfig")
    mgr = find_class(tree, "LLMGenerationManager")
    assert cfg is not None and mgr is not None
    fields = dataclass_fields(cfg)
    last = fields[-1]
    indent = indent_of(text.line(last.lineno))
    text.insert_after_line(
        last.end_lineno or last.lineno,
        f"{indent}retriever: dict = None  {MARKER}: the whole `retriever` config block (backend, gpu_id, ...){nl}"
        + _generation_post_init(indent, nl),
    )
    fn = find_method(mgr, "_batch_search")
    assert fn is not None
    first = first_statement_after_docstring(fn)
    start = statement_start_line(first)
    body_indent = indent_of(text.line(first.lineno))
    if first.lineno == fn.lineno:
        raise PatchError(f"{path}: _batch_search is written on one line; cannot insert the medret preamble")
    text.insert_before_line(start, _generation_batch_search_preamble(body_indent, nl))
    return text.render()


# --------------------------------------------------------------------------------------------------------------
# ray_trainer.py


def _generation_config_calls(tree: ast.Module) -> list[ast.Call]:
    calls = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
            if name == "GenerationConfig":
                calls.append(node)
    return sorted(calls, key=lambda c: (c.lineno, c.col_offset))


def _imports_omegaconf(tree: ast.Module) -> bool:
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module == "omegaconf":
            if any(alias.name == "OmegaConf" and alias.asname is None for alias in node.names):
                return True
    return False


def _inspect_trainer(path: Path, source: str) -> tuple[Status, str, ast.Module | None]:
    tree = _parse(path, source)
    trainer = find_class(tree, "RayPPOTrainer")
    if trainer is None:
        return Status.UNKNOWN, "no class RayPPOTrainer", tree
    if find_method(trainer, "fit") is None:
        return Status.UNKNOWN, "RayPPOTrainer has no fit method", tree
    imports_gen = any(
        isinstance(n, ast.ImportFrom) and n.module == "search_r1.llm_agent.generation"
        and any(a.name == "GenerationConfig" for a in n.names)
        for n in tree.body
    )
    if not imports_gen:
        return Status.UNKNOWN, "does not import GenerationConfig from search_r1.llm_agent.generation", tree
    calls = _generation_config_calls(tree)
    if not calls:
        return Status.UNKNOWN, "no GenerationConfig(...) call", tree
    with_retriever = 0
    for call in calls:
        keywords = {k.arg for k in call.keywords}
        if call.args or None in keywords or not {"search_url", "topk"} <= keywords:
            return Status.UNKNOWN, f"GenerationConfig(...) at line {call.lineno} is not built from keyword " \
                                   "arguments including search_url and topk", tree
        if "retriever" in keywords:
            lines = source.splitlines()[call.lineno - 1: call.end_lineno]  # whole lines: the marker is a comment
            if not any(MARKER in line for line in lines):
                return Status.UNKNOWN, f"GenerationConfig(...) at line {call.lineno} already has a retriever " \
                                       "argument that medret did not add", tree
            with_retriever += 1
    if with_retriever == len(calls):
        return Status.PATCHED, "", tree
    if with_retriever == 0 and MARKER not in source:
        return Status.UNPATCHED, "", tree
    return Status.UNKNOWN, f"partly patched ({with_retriever} of {len(calls)} GenerationConfig calls)", tree


def _patch_trainer(path: Path, source: str, tree: ast.Module) -> str:
    text = SourceText(source)
    nl = text.newline
    value = "OmegaConf.to_container(self.config.retriever, resolve=True)"
    for call in _generation_config_calls(tree):
        last = call.keywords[-1]
        end_line, end_col = last.value.end_lineno, last.value.end_col_offset
        assert end_line is not None and end_col is not None and call.end_lineno is not None
        close_line = text.line(call.end_lineno)
        closing_alone = close_line.strip().startswith(")") and call.end_lineno > end_line
        # text between the last argument and the closing parenthesis: is there already a trailing comma?
        if end_line == call.end_lineno:
            between = close_line.encode("utf-8")[end_col:(call.end_col_offset or 0) - 1].decode("utf-8")
        else:
            tail = text.line(end_line).encode("utf-8")[end_col:].decode("utf-8")
            middle = "".join(text.line(n) for n in range(end_line + 1, call.end_lineno))
            head = close_line[: len(close_line) - len(close_line.lstrip())]
            between = tail + middle + head
        has_comma = "," in between.split("#", 1)[0]
        if closing_alone:
            if not has_comma:
                text.insert_at(end_line, end_col, ",")
            indent = indent_of(text.line(last.lineno))
            text.insert_before_line(call.end_lineno, f"{indent}retriever={value},  {MARKER}{nl}")
        else:
            # a call closed on the line of its last argument: add the keyword inline and mark the line
            insertion = f"retriever={value}"
            insertion = (" " if has_comma else ", ") + insertion
            if has_comma:
                # put it after the existing comma
                raw = text.line(end_line).encode("utf-8")
                comma_at = raw.index(b",", end_col)
                text.insert_at(end_line, comma_at + 1, insertion)
            else:
                text.insert_at(end_line, end_col, insertion)
            line_end = len(text.line(call.end_lineno).rstrip("\r\n").encode("utf-8"))
            text.insert_at(call.end_lineno, line_end, f"  {MARKER}")
    if not _imports_omegaconf(tree):
        gen_import = next(
            n for n in tree.body
            if isinstance(n, ast.ImportFrom) and n.module == "search_r1.llm_agent.generation"
        )
        text.insert_after_line(gen_import.end_lineno or gen_import.lineno,
                               f"from omegaconf import OmegaConf  {MARKER}{nl}")
    return text.render()


# --------------------------------------------------------------------------------------------------------------
# main_ppo.py

#: keywords medret's score functions need from the caller (they accept any others, e.g. ``format_score``)
SCORE_FN_KEYWORDS = ("solution_str", "ground_truth")


def _find_function(tree: ast.Module, name: str) -> ast.FunctionDef | None:
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return node
    return None


def _reward_select_preamble(indent: str, nl: str) -> str:
    lines = [
        f"{MARKER}: data sources medret scores get its reward; every other source runs the code below",
        f"if str(data_source).startswith({MEDRET_SOURCE_PREFIX!r}):",
        "    from medret.recipes.kare.rewards import search_r1_score_fn as medret_score_fn",
        "    medret_fn = medret_score_fn(data_source)",
        "    if medret_fn is not None:",
        "        return medret_fn",
        f"{MARKER}: end",
    ]
    return "".join(f"{indent}{line}{nl}" for line in lines)


def _score_fn_calls(method: ast.FunctionDef) -> tuple[list[str], list[ast.Call]]:
    """Names bound to ``_select_rm_score_fn(...)`` in ``method`` and the calls made through them."""
    names: list[str] = []
    for node in ast.walk(method):
        if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)
                and isinstance(node.value.func, ast.Name) and node.value.func.id == "_select_rm_score_fn"):
            names += [t.id for t in node.targets if isinstance(t, ast.Name)]
    calls = [node for node in ast.walk(method) if isinstance(node, ast.Call)
             and isinstance(node.func, ast.Name) and node.func.id in names]
    return names, sorted(calls, key=lambda c: (c.lineno, c.col_offset))


def _inspect_reward(path: Path, source: str) -> tuple[Status, str, ast.Module | None]:
    tree = _parse(path, source)
    fn = _find_function(tree, "_select_rm_score_fn")
    if fn is None:
        return Status.UNKNOWN, "no module-level function _select_rm_score_fn", tree
    a = fn.args
    args = [x.arg for x in a.posonlyargs + a.args]
    if args != ["data_source"] or a.vararg or a.kwarg or a.kwonlyargs:
        return Status.UNKNOWN, f"_select_rm_score_fn{tuple(args)} does not take (data_source)", tree
    manager = find_class(tree, "RewardManager")
    if manager is None:
        return Status.UNKNOWN, "no class RewardManager", tree
    call_method = find_method(manager, "__call__")
    if call_method is None:
        return Status.UNKNOWN, "RewardManager has no __call__ method", tree
    names, calls = _score_fn_calls(call_method)
    if not calls:
        return Status.UNKNOWN, "RewardManager.__call__ does not call the function _select_rm_score_fn returns", tree
    for call in calls:
        keywords = {k.arg for k in call.keywords}
        if call.args or None in keywords or not set(SCORE_FN_KEYWORDS) <= keywords:
            return Status.UNKNOWN, (f"RewardManager calls the score function at line {call.lineno} as "
                                    f"{ast.unparse(call)[:120]}; medret's score functions need the keywords "
                                    f"{', '.join(k + '=' for k in SCORE_FN_KEYWORDS)} and no positional "
                                    "arguments"), tree
    fn_src = ast.get_source_segment(source, fn) or ""
    has_preamble = MARKER in fn_src and "medret_score_fn" in fn_src
    if has_preamble:
        return Status.PATCHED, "", tree
    if MARKER not in source:
        return Status.UNPATCHED, "", tree
    return Status.UNKNOWN, "partly patched (a medret marker outside an intact _select_rm_score_fn preamble)", tree


def _patch_reward(path: Path, source: str, tree: ast.Module) -> str:
    text = SourceText(source)
    fn = _find_function(tree, "_select_rm_score_fn")
    assert fn is not None
    first = first_statement_after_docstring(fn)
    if first.lineno == fn.lineno:
        raise PatchError(f"{path}: _select_rm_score_fn is written on one line; cannot insert the medret preamble")
    body_indent = indent_of(text.line(first.lineno))
    text.insert_before_line(statement_start_line(first), _reward_select_preamble(body_indent, text.newline))
    return text.render()


# --------------------------------------------------------------------------------------------------------------
# public API

_INSPECTORS = {GENERATION_FILE: _inspect_generation, TRAINER_FILE: _inspect_trainer, REWARD_FILE: _inspect_reward}
_PATCHERS = {GENERATION_FILE: _patch_generation, TRAINER_FILE: _patch_trainer, REWARD_FILE: _patch_reward}


def _root(path: str | os.PathLike[str]) -> Path:
    root = Path(path).expanduser().resolve()
    if not root.is_dir():
        raise ConfigError(f"path={str(path)!r} is not a directory: pass the root of a Search-R1 checkout "
                          f"(the folder that holds {', '.join(TARGET_FILES)})")
    missing = [rel for rel in TARGET_FILES if not (root / rel).is_file()]
    if missing:
        raise PatchError(f"{root} does not look like a Search-R1 checkout: missing {', '.join(missing)}; pass the "
                         "repository root (git clone https://github.com/PeterGriffinJin/Search-R1)")
    return root


def _read(path: Path) -> tuple[bytes, str]:
    raw = path.read_bytes()
    try:
        return raw, raw.decode("utf-8")
    except UnicodeDecodeError:
        raise PatchError(f"{path} is not UTF-8 text; cannot patch it") from None


def check(path: str | os.PathLike[str]) -> CheckoutReport:
    """Inspect a checkout without changing it."""
    root = _root(path)
    report = CheckoutReport(root=root)
    for rel in TARGET_FILES:
        file = root / rel
        _, source = _read(file)
        try:
            status, reason, _ = _INSPECTORS[rel](file, source)
        except PatchError as e:
            status, reason = Status.UNKNOWN, str(e)
        report.files.append(FileReport(path=file, status=status, reason=reason))
    return report


def patched_text(rel: str, path: Path, source: str) -> str:
    """The patched version of ``source`` (which must be an unpatched, known version of ``rel``)."""
    status, reason, tree = _INSPECTORS[rel](path, source)
    if status is not Status.UNPATCHED or tree is None:
        raise PatchError(f"{path}: cannot patch a file that is {status.value}" + (f" ({reason})" if reason else ""))
    new = _PATCHERS[rel](path, source, tree)
    after, why, _ = _INSPECTORS[rel](path, new)
    if after is not Status.PATCHED:  # pragma: no cover - a bug in the patcher, never the user's fault
        raise PatchError(f"{path}: patching produced an unexpected result ({after.value}: {why}); nothing written")
    compile(new, str(path), "exec")
    return new


def patch(path: str | os.PathLike[str], dry_run: bool = False) -> CheckoutReport:
    """Patch a checkout (idempotent). Nothing is written unless every file is known and patchable."""
    report = check(path)
    unknown = [f for f in report.files if f.status is Status.UNKNOWN]
    if unknown:
        details = "; ".join(f"{f.path}: {f.reason}" for f in unknown)
        raise PatchError(f"refusing to patch {report.root}: not a known Search-R1 version ({details}). Nothing was "
                         "changed. medret knows the layout of PeterGriffinJin/Search-R1 main; patch by hand following "
                         "docs/searchr1.md or open an issue with the file attached.")
    plans: list[tuple[Path, bytes, str]] = []
    for rel, frep in zip(TARGET_FILES, report.files):
        if frep.status is Status.PATCHED:
            logger.info("%s is already patched", frep.path)
            continue
        raw, source = _read(frep.path)
        plans.append((frep.path, raw, patched_text(rel, frep.path, source)))
    if dry_run or not plans:
        return report if not plans else _planned_report(report, [p[0] for p in plans])
    for file, raw, _ in plans:  # backups first: a crash between the two loops leaves only backups behind
        mode = file.stat().st_mode
        atomic_write_bytes(_backup_path(file), raw)
        _set_mode(_backup_path(file), mode)
    for file, _, new in plans:
        mode = file.stat().st_mode
        atomic_write_bytes(file, new.encode("utf-8"))
        _set_mode(file, mode)
        logger.info("patched %s (original saved as %s)", file, _backup_path(file))
    return check(path)


def _planned_report(report: CheckoutReport, paths: list[Path]) -> CheckoutReport:
    files = [FileReport(f.path, f.status, "would be patched" if f.path in paths else f.reason) for f in report.files]
    return CheckoutReport(root=report.root, files=files)


def _backup_path(file: Path) -> Path:
    return file.with_name(file.name + BACKUP_SUFFIX)


def _set_mode(path: Path, mode: int) -> None:
    try:
        os.chmod(path, mode & 0o7777)
    except OSError:  # pragma: no cover - e.g. a file system without permissions
        pass


def revert(path: str | os.PathLike[str], force: bool = False) -> CheckoutReport:
    """Restore the original bytes of every patched file from its backup, then remove the backup.

    Refuses (changing nothing) when a patched file was edited after patching, unless ``force`` is true.
    """
    root = _root(path)
    report = check(root)
    plans: list[tuple[Path, bytes]] = []
    for rel, frep in zip(TARGET_FILES, report.files):
        backup = _backup_path(frep.path)
        if frep.status is Status.UNPATCHED:
            continue
        if not backup.is_file():
            raise PatchError(f"cannot revert {frep.path}: its backup {backup.name} is missing; restore the file "
                             f"with `git -C {root} checkout -- {rel}`. Nothing was changed.")
        original_raw, original = _read(backup)
        if frep.status is Status.UNKNOWN and not force:
            raise PatchError(f"cannot revert {frep.path}: it is {frep.status.value} ({frep.reason}); pass --force to "
                             f"restore {backup.name} anyway. Nothing was changed.")
        if not force:
            _, current = _read(frep.path)
            try:
                expected = patched_text(rel, backup, original)
            except PatchError as e:
                raise PatchError(f"cannot revert {frep.path}: its backup is not an unpatched Search-R1 file ({e}); "
                                 "pass --force to restore it anyway. Nothing was changed.") from None
            if expected != current:
                raise PatchError(f"cannot revert {frep.path}: it was edited after medret patched it, and restoring "
                                 f"{backup.name} would lose those edits; pass --force to restore it anyway. "
                                 "Nothing was changed.")
        plans.append((frep.path, original_raw))
    for file, raw in plans:
        mode = _backup_path(file).stat().st_mode
        atomic_write_bytes(file, raw)
        _set_mode(file, mode)
        _backup_path(file).unlink()
        logger.info("restored %s", file)
    return check(root)
