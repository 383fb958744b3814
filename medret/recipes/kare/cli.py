"""``medret kare prepare`` and ``medret kare synth``."""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from medret.recipes.kare.prepare import (
    PrepareOptions,
    format_summary,
    parse_balance,
    prepare,
)
from medret.recipes.kare.prompts import MODES
from medret.recipes.kare.render import ONE_NEIGHBOUR_POLICIES
from medret.recipes.kare.synth import synth


def register(subparsers: Any) -> None:
    kare = subparsers.add_parser("kare", help="KARE mortality recipe: prepare Search-R1 data, make synthetic data")
    sub = kare.add_subparsers(dest="kare_command", metavar="KARE_COMMAND")
    kare.set_defaults(func=lambda args: (kare.print_help(), 2)[1])

    p = sub.add_parser(
        "prepare",
        help="KARE samples (+ similar patients) -> train/val[/test].parquet in Search-R1's row schema",
        description="Validate KARE samples, split by patient, balance, render leak-free prompts and write "
        "train.parquet / val.parquet (and test.parquet with --test) plus prepare_summary.json.",
        argument_default=argparse.SUPPRESS,  # a flag not given is left out: PrepareOptions' default applies
    )
    p.add_argument("--samples", required=True, type=Path, help="KARE samples JSON (training split, or all data)")
    p.add_argument("--val", type=Path,
                   help="validation samples JSON; without it --val-fraction of the patients are held out")
    p.add_argument("--test", type=Path, help="test samples JSON; written to test.parquet, never balanced")
    p.add_argument("--similar", type=Path, help="KARE similar-patient JSON (patient_to_top_1_patient_contexts_*.json)")
    p.add_argument("--mode", choices=list(MODES), help=f"answer and reward type (default {_default('mode')})")
    p.add_argument("--balance", help="POS:NEG = label-1 and label-0 samples to keep in train, e.g. 100:100")
    p.add_argument("--val-balance", help="POS:NEG for val (default: keep every val sample)")
    p.add_argument("--val-fraction", type=float, help="share of patients held out for val without --val (default "
                   f"{_default('val_fraction')})")
    p.add_argument("--allow-fewer", action="store_true", help="keep what exists when --balance asks for more")
    p.add_argument("--seed", type=int, help="seed of the val split, the balancing draw and the choice of similar "
                   f"cases (default {_default('seed')})")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--tokenizer", type=Path, help="local Hugging Face tokenizer directory for exact token counts")
    p.add_argument("--max-prompt-tokens", type=int,
                   help="shorten history (oldest visits first) to fit; skip if impossible")
    p.add_argument(
        "--one-neighbour",
        choices=list(ONE_NEIGHBOUR_POLICIES),
        help="when only one similar case exists: show it with its outcome withheld or leave it out (default "
        f"{_default('one_neighbour')})",
    )
    p.add_argument("--json", action="store_true", default=False, help="print the summary as JSON")
    p.set_defaults(func=_prepare)

    s = sub.add_parser("synth", help="write synthetic KARE samples.json and similar.json (no real patient data)")
    s.add_argument("--n", type=int, default=500, help="number of samples")
    s.add_argument("--positive-rate", type=float, default=0.05, help="share of label-1 (died) samples")
    s.add_argument("--seed", type=int, default=0, help="seed of the synthetic samples (default 0)")
    s.add_argument("--one-neighbour-rate", type=float, default=0.05, help="share of entries with only one neighbour")
    s.add_argument("--none-rate", type=float, default=0.02, help='share of entries with no neighbour (["None"])')
    s.add_argument("--out", required=True, type=Path, help="output directory")
    s.set_defaults(func=_synth)


def _default(name: str) -> object:
    """A PrepareOptions default, as the help shows it (declared there, once)."""
    return next(f.default for f in dataclasses.fields(PrepareOptions) if f.name == name)


def _prepare(args: argparse.Namespace) -> int:
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(PrepareOptions) if hasattr(args, f.name)}
    for name in ("balance", "val_balance"):  # "POS:NEG" on the command line
        if name in given:
            given[name] = parse_balance(given[name])
    opts = PrepareOptions(**given)
    summary = prepare(opts)
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0


def _synth(args: argparse.Namespace) -> int:
    summary = synth(
        args.out,
        n=args.n,
        positive_rate=args.positive_rate,
        seed=args.seed,
        one_neighbour_rate=args.one_neighbour_rate,
        none_rate=args.none_rate,
    )
    print(
        f"wrote {summary['samples']} samples ({summary['label_1']} label-1) from {summary['patients']} patients "
        f"to {summary['samples_path']}\nwrote {summary['similar_entries']} similar-patient entries "
        f"({summary['one_neighbour_entries']} with one neighbour, {summary['none_entries']} with none) to "
        f"{summary['similar_path']}"
    )
    return 0
