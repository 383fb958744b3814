"""`medret doctor`: check the whole set-up before a long job starts."""
from __future__ import annotations

import argparse
import json
import sys

from medret.config import EngineOptions, RetrieverConfig
from medret.doctor.run import DoctorOptions, exit_status, format_checks, run_checks
from medret.options import add_flags


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "doctor", help="check Python, torch/CUDA, GPUs, corpus, index, encoder, server, Search-R1 patch, job script",
        description="Print a checklist (ok / warn / fail, each with the fix). Exit status 1 when anything fails.")
    p.add_argument("--config", default=None, metavar="FILE",
                   help="YAML/JSON file with the retriever settings (keys as get_retriever; a `retriever:` block "
                        "of a Search-R1/hydra config works too); flags given explicitly override it")
    add_flags(p, EngineOptions)
    add_flags(p, RetrieverConfig, only=("backend", "url", "address_file"), title="transport to check")
    p.add_argument("--searchr1", default=None, metavar="PATH", help="Search-R1 checkout that must be patched")
    p.add_argument("--sbatch", default=None, metavar="FILE", help="SLURM job script to check")
    p.add_argument("--query", default="What is the first-line treatment of type 2 diabetes?",
                   help="test query for the search check")
    p.add_argument("--no-search", action="store_true",
                   help="skip loading the retriever and the test query (quick check of files only)")
    p.add_argument("--deep", action="store_true",
                   help="hash every chunk file, store, BM25 and embedding file against the sha256 recorded when it "
                        "was built (by default only when they total at most 1 GiB: MedCorp is minutes of reading)")
    p.add_argument("--json", action="store_true", help="print the checks as JSON")
    p.set_defaults(func=cmd_doctor)


def cmd_doctor(args: argparse.Namespace) -> int:
    opts = DoctorOptions.from_args(args)
    checks = run_checks(opts)
    if args.json:
        out = {"ok": exit_status(checks) == 0, "checks": [c.to_dict() for c in checks]}
        sys.stdout.write(json.dumps(out, indent=1) + "\n")
    else:
        sys.stdout.write(format_checks(checks, color=sys.stdout.isatty()) + "\n")
    return exit_status(checks)
