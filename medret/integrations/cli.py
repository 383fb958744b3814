"""`medret searchr1 patch|check|revert` and `medret rollout-smoke`."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from medret.config import DEFAULT_TOPK, EngineOptions, RayOptions, RetrieverConfig
from medret.errors import ConfigError, MedretError
from medret.integrations import rollout
from medret.integrations import searchr1_patch as sp
from medret.integrations.searchr1_runtime import backend_of, get_searchr1_retriever
from medret.options import add_flags, given
from medret.transports import transport_class

ROLLOUT_EXIT_FAILED = 1


def register(sub: Any) -> None:
    p = sub.add_parser("searchr1", help="patch a Search-R1 checkout so its trainer searches through medret")
    ssub = p.add_subparsers(dest="searchr1_command", metavar="SUBCOMMAND", required=True)

    pp = ssub.add_parser("patch", help="patch (idempotent; backups as <file>.medret-orig)",
                         description="Patch search_r1/llm_agent/generation.py, verl/trainer/ppo/ray_trainer.py and "
                         "verl/trainer/main_ppo.py (KARE rewards). "
                         "With --check only report (exit 0 patched, 1 not patched, 2 unknown version); with "
                         "--revert restore the original bytes.")
    pp.add_argument("path", help="root of the Search-R1 checkout")
    mode = pp.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="only report; exit 0 patched, 1 not patched, 2 unknown")
    mode.add_argument("--revert", action="store_true", help="restore the original files from their backups")
    mode.add_argument("--dry-run", action="store_true", help="say what would change, write nothing")
    pp.add_argument("--force", action="store_true", help="with --revert: restore even if the files were edited")
    pp.set_defaults(func=cmd_patch)

    pc = ssub.add_parser("check", help="report whether a checkout is patched (exit 0 patched, 1 not, 2 unknown)")
    pc.add_argument("path", help="root of the Search-R1 checkout")
    pc.set_defaults(func=cmd_check)

    pr = ssub.add_parser("revert", help="restore the original files from their .medret-orig backups")
    pr.add_argument("path", help="root of the Search-R1 checkout")
    pr.add_argument("--force", action="store_true", help="restore even if the files were edited after patching")
    pr.set_defaults(func=cmd_revert)

    r = sub.add_parser("rollout-smoke", help="scripted multi-turn search rollout: prints what the trainer injects",
                       description="Run a multi-turn Search-R1 rollout with a scripted policy (search TURNS times, "
                       "then answer) against a backend and print every observation exactly as the trainer would "
                       "inject it. Exit status 0 when every search returned passages, 1 otherwise.")
    add_flags(r, EngineOptions)
    add_flags(r, RetrieverConfig, only=("backend", "url"), title="backend (--url: the /retrieve address Search-R1 "
              "posts to, e.g. http://127.0.0.1:8000/retrieve)")
    add_flags(r, RayOptions)
    r.add_argument("--turns", type=int, default=2, help="search turns before the answer (default 2)")
    r.add_argument("--topk", type=int, default=DEFAULT_TOPK,
                   help=f"passages per query (retriever.topk; default {DEFAULT_TOPK})")
    r.add_argument("--question", action="append", default=None, metavar="TEXT",
                   help="a question for the scripted policy (repeatable; default: two built-in questions)")
    r.add_argument("--protocol", choices=["searchr1", "verl"], default="searchr1",
                   help="searchr1: <information> observations; verl: MedretSearchTool answers (default searchr1)")
    r.add_argument("--json", action="store_true", help="print the whole rollout as JSON (exact strings)")
    r.set_defaults(func=cmd_rollout_smoke)


# ---------------------------------------------------------------------------------------------------- searchr1


def cmd_patch(args: argparse.Namespace) -> int:
    if args.check:
        return cmd_check(args)
    if args.revert:
        return cmd_revert(args)
    before = sp.check(args.path)
    report = sp.patch(args.path, dry_run=args.dry_run)
    if args.dry_run:
        print(report.describe())
        return 0
    if before.status is sp.Status.PATCHED:
        print(f"{report.root}: already patched; nothing changed")
    else:
        print(report.describe())
        print(f"backups: <file>{sp.BACKUP_SUFFIX}; undo with `medret searchr1 revert {args.path}`")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    report = sp.check(args.path)
    print(report.describe())
    return sp.EXIT_CODES[report.status]


def cmd_revert(args: argparse.Namespace) -> int:
    before = sp.check(args.path)
    report = sp.revert(args.path, force=args.force)
    if before.status is sp.Status.UNPATCHED:
        print(f"{report.root}: not patched; nothing to revert")
    else:
        print(report.describe())
    return 0


# ---------------------------------------------------------------------------------------------------- rollout


def rollout_block(args: argparse.Namespace) -> dict[str, Any]:
    """The trainer's ``retriever`` block equivalent to the flags (those given)."""
    backend = args.backend or "local"
    at_url = transport_class(backend).at_url
    if at_url and not args.url:
        raise ConfigError(f"--backend {backend} needs --url http://HOST:PORT/retrieve (the address Search-R1 posts "
                          "to)")
    block: dict[str, Any] = {"backend": backend, "topk": args.topk}
    if at_url:
        block["url"] = args.url
        return block
    return {**block, **given(args, RetrieverConfig, exclude=("backend", "url"))}


def cmd_rollout_smoke(args: argparse.Namespace) -> int:
    block = rollout_block(args)
    backend = block["backend"]
    questions = args.question or list(rollout.DEFAULT_QUESTIONS)
    where = args.url if transport_class(backend).at_url else \
        f"corpus={args.corpus_name or 'sample'} retriever={args.retriever_name or 'BM25'}"
    try:
        result = rollout.smoke(questions, block, turns=args.turns, which=args.protocol)
    except (MedretError, OSError) as e:
        print(f"rollout-smoke: FAILED ({backend}, {where}): {e}", file=sys.stderr)
        return ROLLOUT_EXIT_FAILED
    info = _retriever_info(block)
    if args.json:
        print(json.dumps({"backend": backend, "protocol": args.protocol, "topk": args.topk,
                          "turns": args.turns, "retriever_info": info, **result.to_dict()},
                         ensure_ascii=False, indent=1, default=str))
        return 0
    out = sys.stdout
    out.write(f"rollout-smoke: backend={backend} {where} topk={args.topk} turns={args.turns} "
              f"protocol={args.protocol}\n")
    for i, q in enumerate(result.questions):
        out.write(f"\n=== trajectory {i}: {q}\n")
        for s in (s for s in result.steps if s.trajectory == i):
            out.write(f"--- step {s.step}: response (cut as the trainer cuts it), action={s.action}\n")
            out.write(s.response + "\n")
            label = "tool answer" if args.protocol == "verl" and s.action == "search" else "observation"
            out.write(f"--- step {s.step}: {label}, {len(s.observation)} chars, verbatim between the markers, "
                      f"{s.n_passages} passages\n")
            out.write(">>>" + s.observation + "<<<\n")
    out.write(f"\nrollout-smoke: OK: {len(result.questions)} trajectories, {result.n_searches} searches in "
              f"{len(result.batches)} batches {result.batches}, {result.n_answers} answers, {result.n_invalid} "
              "invalid actions\n")
    if info:
        out.write("rollout-smoke: retriever " + ", ".join(f"{k}={info[k]}" for k in
                  ("corpus", "retriever", "n_docs", "index", "device") if k in info) + "\n")
    return 0


def _retriever_info(block: dict[str, Any]) -> dict[str, Any] | None:
    """What served the searches (corpus, size, index, device); None for http or when it cannot be asked."""
    if transport_class(backend_of(block)).at_url:
        return None
    try:
        return dict(get_searchr1_retriever(block).info())
    except Exception as e:  # noqa: BLE001 - the rollout already succeeded; this is only a report
        return {"error": str(e)}
