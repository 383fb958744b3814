"""The checklist in order, for a :class:`DoctorOptions` built from `medret doctor`'s flags or a --config file."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Callable

from medret import config_file
from medret.config import RetrieverConfig, validate_retriever_block
from medret.doctor.checks import FAIL, OK, WARN, Check
from medret.doctor.data import check_corpus, check_memory, check_store_and_indexes
from medret.doctor.environment import (
    check_gpus,
    check_packages,
    check_python,
    check_torch,
)
from medret.doctor.integrity import check_integrity, check_leftovers
from medret.doctor.jobs import check_sbatch, check_searchr1
from medret.doctor.reranker import check_reranker
from medret.doctor.runtime import check_encoder, check_search, check_server
from medret.errors import ConfigError, MedretError
from medret.transports import transport_class

logger = logging.getLogger(__name__)


@dataclass
class DoctorOptions:
    config: Any = None  # medret.config.RetrieverConfig, or None when only environment checks are wanted
    searchr1: str | None = None
    sbatch: str | None = None
    query: str = "What is the first-line treatment of type 2 diabetes?"
    search: bool = True  # load the retriever and run the test query
    deep: bool = False  # hash every file against its manifest, whatever its size (medret.doctor.integrity)
    config_error: str | None = None  # the configuration itself was invalid

    @classmethod
    def from_args(cls, args: Any) -> "DoctorOptions":
        """Build from `medret doctor` flags: a --config file first, explicit flags over it."""
        error = None
        try:
            data = load_config_file(args.config) if args.config else {}
            config = RetrieverConfig.from_args(args, base=data)
        except MedretError as e:
            config, error = None, str(e)
        return cls(config=config, searchr1=args.searchr1, sbatch=args.sbatch, query=args.query,
                   search=not args.no_search, config_error=error, deep=bool(getattr(args, "deep", False)))


def load_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Retriever settings from a YAML/JSON file (read by :mod:`medret.config_file`: scalars as written, no aliases);
    a Search-R1/hydra file's ``retriever:`` block is used as is. Each key and value is checked here, so that an
    error names the file."""
    data = config_file.load_mapping(path, "retriever settings (corpus_name: ..., retriever_name: ...)")
    prefix = ""
    if isinstance(data.get("retriever"), dict):
        data, prefix = data["retriever"], "retriever."
    config_file.require_scalars(data, path, prefix=prefix)
    try:
        validate_retriever_block(data)
    except ConfigError as e:
        raise config_file.naming(path, e) from None
    return dict(data)


def run_checks(opts: DoctorOptions) -> list[Check]:
    """Every check, in the order a set-up is built; a crash in one check becomes its fail line."""
    config = opts.config
    checks: list[Check] = []

    def add(fn: Callable[..., Any], *a: Any, key: str = "internal") -> Any:
        try:
            out = fn(*a)
        except Exception as e:
            logger.debug("check %s crashed", key, exc_info=True)
            checks.append(Check(key, FAIL, f"{key} check crashed: {type(e).__name__}", str(e),
                                "report this with `medret doctor -vv` output"))
            return None
        if isinstance(out, tuple):
            checks.extend(out[0])
            return out
        checks.extend(out)
        return out

    if opts.config_error:
        checks.append(Check("config", FAIL, "the retriever configuration is invalid", opts.config_error,
                            "fix the flag or the --config file named in the message"))
    add(check_python, key="python")
    add(check_packages, config, key="packages")
    add(check_torch, config, key="torch")
    add(check_gpus, config, key="gpu")
    if config is not None and not transport_class(config.backend).remote:  # ray actors read the same files
        add(check_corpus, config, key="corpus")
        res = add(check_store_and_indexes, config, key="store")
        needs_, ready = (res[1], res[2]) if res else ([], False)
        add(check_integrity, config, opts.deep, key="integrity")
        add(check_leftovers, config, key="leftovers")
        add(check_memory, needs_, key="memory")
        if opts.search:
            add(check_encoder, config, ready, key="encoder")
            add(check_reranker, config, key="reranker")
    else:
        ready = True
    add(check_server, config.url if config else None, config.address_file if config else None, key="server")
    blocking = [c for c in checks if (c.status == FAIL and c.key in ("corpus", "store", "index", "server", "gpu",
                                                                      "encoder", "reranker"))
                or (c.status == WARN and c.key == "encoder")]  # an uncached model would be fetched by the query
    if config is not None and opts.search and not blocking:
        add(check_search, config, opts.query, ready, key="search")
    elif config is not None and opts.search:
        checks.append(Check("search", WARN, "test query skipped until the lines above are fixed"))
    add(check_searchr1, opts.searchr1, key="searchr1")
    add(check_sbatch, opts.sbatch, key="slurm")
    return checks


def exit_status(checks: list[Check]) -> int:
    return 1 if any(c.status == FAIL for c in checks) else 0


def format_checks(checks: list[Check], color: bool = False) -> str:
    tags = {OK: ("  ok", "32"), WARN: ("warn", "33"), FAIL: ("FAIL", "31")}
    lines = []
    for c in checks:
        tag, code = tags.get(c.status, (c.status, "0"))
        shown = f"\033[{code}m{tag}\033[0m" if color else tag
        lines.append(f"[{shown}] {c.title}")
        if c.detail and c.status != OK:
            lines.append(f"       {c.detail}")
        if c.fix and c.status != OK:
            lines.append(f"       fix: {c.fix}")
    n = {s: sum(c.status == s for c in checks) for s in (OK, WARN, FAIL)}
    lines.append(f"{n[OK]} ok, {n[WARN]} warn, {n[FAIL]} fail")
    return "\n".join(lines)
