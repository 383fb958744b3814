"""KARE samples -> Search-R1 training parquet files (``train.parquet``, ``val.parquet``, ``test.parquet``).

Row schema (Search-R1's ``scripts/data_process/nq_search.py`` contract)::

    data_source   string   "kare_mortality_binary" | "kare_mortality_prob"
    prompt        list<struct<role: string, content: string>>   [{"role": "user", "content": ...}]
    ability       string   "clinical-prediction"
    reward_model  struct<style: string, ground_truth: struct<target: list<string>>>
                  {"style": "rule", "ground_truth": {"target": ["0" | "1"]}}
    extra_info    struct<split, index (position in the input file), patient_id, visit_id, sample_id,
                         prompt_tokens, dropped_visits, similar_cases>

Everything is validated before anything is written; all files are written under temporary names and
renamed only when every one of them is complete.
"""
from __future__ import annotations

import json
import logging
import math
import os
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from medret import optional
from medret.errors import ConfigError
from medret.recipes.kare.prompts import MODES, TokenCounter, fit_prompt
from medret.recipes.kare.records import (
    KareInputError,
    Sample,
    SimilarEntry,
    check_similar_consistency,
    load_samples,
    load_similar,
)
from medret.recipes.kare.render import ONE_NEIGHBOUR_POLICIES, case_rng, select_similar
from medret.recipes.kare.rewards import DATA_SOURCES
from medret.storage.atomic import temp_name

logger = logging.getLogger(__name__)

ABILITY = "clinical-prediction"
SUMMARY_NAME = "prepare_summary.json"
SPLITS: tuple[str, ...] = ("train", "val", "test")


def parquet_schema() -> Any:
    pa = optional.pyarrow()
    return pa.schema(
        [
            ("data_source", pa.string()),
            ("prompt", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
            ("ability", pa.string()),
            (
                "reward_model",
                pa.struct([("style", pa.string()), ("ground_truth", pa.struct([("target", pa.list_(pa.string()))]))]),
            ),
            (
                "extra_info",
                pa.struct(
                    [
                        ("split", pa.string()),
                        ("index", pa.int64()),
                        ("patient_id", pa.string()),
                        ("visit_id", pa.string()),
                        ("sample_id", pa.string()),
                        ("prompt_tokens", pa.int64()),
                        ("dropped_visits", pa.int64()),
                        ("similar_cases", pa.string()),
                    ]
                ),
            ),
        ]
    )


def parse_balance(text: str | None) -> tuple[int, int] | None:
    """``"POS:NEG"`` -> (number of label-1 samples, number of label-0 samples)."""
    if text is None or text == "":
        return None
    parts = text.split(":")
    try:
        if len(parts) != 2:
            raise ValueError
        pos, neg = int(parts[0]), int(parts[1])
    except ValueError:
        raise ConfigError(
            f"balance={text!r} is invalid: write POS:NEG, the number of label-1 (died) and label-0 (survived) "
            f"samples to keep, e.g. 100:100"
        ) from None
    if pos < 0 or neg < 0 or pos + neg == 0:
        raise ConfigError(f"balance={text!r} is invalid: both counts must be >= 0 and not both 0")
    return pos, neg


@dataclass
class PrepareOptions:
    samples: Path
    out: Path
    mode: str = "binary"
    similar: Path | None = None
    val: Path | None = None
    test: Path | None = None
    balance: tuple[int, int] | None = None  # train: (label-1, label-0)
    val_balance: tuple[int, int] | None = None
    val_fraction: float = 0.1  # used when no val file is given
    seed: int = 0
    tokenizer: Path | None = None
    max_prompt_tokens: int | None = None
    one_neighbour: str = "withhold"
    allow_fewer: bool = False

    def check(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"mode={self.mode!r} is invalid: use one of {list(MODES)}")
        if self.one_neighbour not in ONE_NEIGHBOUR_POLICIES:
            raise ConfigError(f"one_neighbour={self.one_neighbour!r} is invalid: use one of "
                              f"{list(ONE_NEIGHBOUR_POLICIES)}")
        if self.val is None and not (0.0 < self.val_fraction < 1.0):
            raise ConfigError(
                f"val_fraction={self.val_fraction!r} is invalid: without --val it must be between 0 and 1 (exclusive)"
            )
        if self.max_prompt_tokens is not None and self.max_prompt_tokens <= 0:
            raise ConfigError(f"max_prompt_tokens={self.max_prompt_tokens!r} is invalid: give a positive number")
        if self.out.exists() and not self.out.is_dir():
            raise ConfigError(f"out={str(self.out)!r} is invalid: it is a file; pass a directory")


@dataclass
class SplitResult:
    name: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


def _by_label(samples: Sequence[Sample]) -> dict[str, int]:
    c = Counter(s.label for s in samples)
    return {"1": c.get(1, 0), "0": c.get(0, 0)}


def split_by_patient(samples: Sequence[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Move ``fraction`` of the patients (stratified by whether the patient has a label-1 sample) to a
    second split. Deterministic for a seed; no patient is in both."""
    patients: dict[str, int] = {}
    for s in samples:
        patients[s.patient_id] = max(patients.get(s.patient_id, 0), s.label)
    if len(patients) < 2:
        raise KareInputError(
            f"cannot split {len(patients)} patient(s) into train and val: give more patients or pass --val FILE"
        )
    rng = random.Random(f"medret-kare:{seed}:split")
    held: set[str] = set()
    groups = [sorted(p for p, y in patients.items() if y == lab) for lab in (1, 0)]
    for group in groups:
        rng.shuffle(group)
        held.update(group[: int(round(fraction * len(group)))])
    if not held:
        held.add(max(groups, key=len)[0])
    if len(held) == len(patients):
        held.discard(sorted(held)[0])
    first = [s for s in samples if s.patient_id not in held]
    second = [s for s in samples if s.patient_id in held]
    return first, second


def balanced_sample(
    samples: Sequence[Sample], balance: tuple[int, int] | None, seed: int, split: str, allow_fewer: bool
) -> tuple[list[Sample], dict[str, Any]]:
    """Draw ``balance`` = (label-1, label-0) samples without replacement, reproducibly by seed."""
    if balance is None:
        return list(samples), {}
    rng = random.Random(f"medret-kare:{seed}:balance:{split}")
    chosen: list[Sample] = []
    shortfall: dict[str, Any] = {}
    for label, want in ((1, balance[0]), (0, balance[1])):
        pool = [s for s in samples if s.label == label]  # input order: deterministic
        if want > len(pool):
            if not allow_fewer:
                raise ConfigError(
                    f"balance for split {split!r} asks for {want} label-{label} samples but only {len(pool)} are "
                    f"available: lower --balance{'' if split == 'train' else ' / --val-balance'} or pass --allow-fewer"
                )
            shortfall[str(label)] = {"requested": want, "available": len(pool)}
            logger.warning("split %s: %d label-%d samples requested, only %d available", split, want, label, len(pool))
            want = len(pool)
        chosen.extend(rng.sample(pool, want))
    rng.shuffle(chosen)
    return chosen, shortfall


def _token_stats(values: list[int]) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    v = sorted(values)

    def pct(q: float) -> int:
        return v[min(len(v) - 1, max(0, math.ceil(q * len(v)) - 1))]

    return {"n": len(v), "min": v[0], "mean": round(sum(v) / len(v), 1), "median": pct(0.5), "p95": pct(0.95),
            "max": v[-1]}


def build_rows(
    name: str,
    available: Sequence[Sample],
    selected: Sequence[Sample],
    similar: dict[str, SimilarEntry] | None,
    opts: PrepareOptions,
    counter: TokenCounter,
) -> SplitResult:
    result = SplitResult(name)
    data_source = DATA_SOURCES[opts.mode]
    kinds: Counter[str] = Counter()
    skipped: Counter[str] = Counter()
    skipped["not_sampled_by_balance"] = len(available) - len(selected)
    tokens: list[int] = []
    truncated = 0
    dropped_neighbours = 0
    for s in selected:
        selection = None
        if similar is not None:
            selection = select_similar(similar.get(s.sample_id), case_rng(opts.seed, s.sample_id), opts.one_neighbour)  # type: ignore[arg-type]
            kinds[selection.kind] += 1
            dropped_neighbours += selection.dropped_for_balance
        fitted = fit_prompt(s, selection, opts.mode, counter.count, opts.max_prompt_tokens)
        if fitted is None:
            skipped["prompt_too_long"] += 1
            logger.info("%s: %s skipped, prompt longer than %s tokens", name, s.sample_id, opts.max_prompt_tokens)
            continue
        if fitted.dropped_visits or fitted.dropped_case_visits:
            truncated += 1
        tokens.append(fitted.n_tokens)
        result.rows.append(
            {
                "data_source": data_source,
                "prompt": [{"role": "user", "content": fitted.content}],
                "ability": ABILITY,
                "reward_model": {"style": "rule", "ground_truth": {"target": [str(s.label)]}},
                "extra_info": {
                    "split": name,
                    "index": s.index,
                    "patient_id": s.patient_id,
                    "visit_id": s.visit_id,
                    "sample_id": s.sample_id,
                    "prompt_tokens": fitted.n_tokens,
                    "dropped_visits": fitted.dropped_visits,
                    "similar_cases": selection.kind if selection is not None else "not_given",
                },
            }
        )
    kept = result.rows
    kept_labels = Counter(r["reward_model"]["ground_truth"]["target"][0] for r in kept)
    result.summary = {
        "available": len(available),
        "available_by_label": _by_label(available),
        "patients": len({s.patient_id for s in available}),
        "kept": len(kept),
        "kept_by_label": {"1": kept_labels.get("1", 0), "0": kept_labels.get("0", 0)},
        "kept_patients": len({r["extra_info"]["patient_id"] for r in kept}),
        "skipped": {k: v for k, v in skipped.items() if v},
        "similar_cases": dict(kinds),
        "neighbours_left_out_for_balance": dropped_neighbours,
        "tokens": {**_token_stats(tokens), "truncated": truncated},
    }
    return result


def _check_disjoint(named: dict[str, list[Sample]]) -> None:
    owners: dict[str, str] = {}
    clashes: list[str] = []
    for name, samples in named.items():
        for pid in dict.fromkeys(s.patient_id for s in samples):
            if pid in owners and owners[pid] != name:
                clashes.append(f"patient_id={pid!r} is in both the {owners[pid]} and the {name} file")
            owners.setdefault(pid, name)
    if clashes:
        shown = "\n  ".join(clashes[:20])
        raise KareInputError(
            f"{len(clashes)} patient(s) appear in more than one split; splits must be disjoint by patient "
            f"(remove them from one file):\n  {shown}"
        )


def write_parquet_set(out: Path, tables: dict[str, list[dict[str, Any]]], summary: dict[str, Any]) -> list[Path]:
    """Write every split and the summary under temporary names, then rename them all."""
    out.mkdir(parents=True, exist_ok=True)
    pa = optional.pyarrow()
    schema = parquet_schema()
    staged: list[tuple[Path, Path]] = []
    try:
        for name, rows in tables.items():
            final = out / f"{name}.parquet"
            tmp = temp_name(final)
            staged.append((tmp, final))
            pa.parquet.write_table(pa.Table.from_pylist(rows, schema=schema), tmp)
        final = out / SUMMARY_NAME
        tmp = temp_name(final)
        staged.append((tmp, final))
        tmp.write_text(json.dumps(summary, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    except BaseException:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        raise
    for tmp, final in staged:
        os.replace(tmp, final)
    return [final for _, final in staged]


def prepare(opts: PrepareOptions) -> dict[str, Any]:
    """Run the whole preparation; returns the summary (also written to ``out/prepare_summary.json``)."""
    opts.check()
    counter = TokenCounter(opts.tokenizer)
    read: dict[str, int] = {}
    train_all = load_samples(opts.samples)
    read[str(opts.samples)] = len(train_all)
    named: dict[str, list[Sample]] = {"train": train_all}
    for name, path in (("val", opts.val), ("test", opts.test)):
        if path is not None:
            named[name] = load_samples(path)
            read[str(path)] = len(named[name])
    _check_disjoint(named)
    if opts.val is None:
        named["train"], named["val"] = split_by_patient(train_all, opts.val_fraction, opts.seed)

    similar: dict[str, SimilarEntry] | None = None
    similar_info: dict[str, Any] = {}
    if opts.similar is not None:
        similar = load_similar(opts.similar)
        for samples in named.values():
            check_similar_consistency(samples, similar, str(opts.similar))
        all_ids = [s.sample_id for ss in named.values() for s in ss]
        matched = sum(1 for i in all_ids if i in similar)
        if matched == 0 and all_ids:
            example = next(iter(similar), None)
            raise KareInputError(
                f"{opts.similar}: none of its {len(similar)} keys matches a sample id (sample ids look like "
                f"{all_ids[0]!r}, keys like {example!r}); pass the similar-patient file made for these samples"
            )
        similar_info = {"entries": len(similar), "samples_with_entry": matched,
                        "samples_without_entry": len(all_ids) - matched}

    balances = {"train": opts.balance, "val": opts.val_balance, "test": None}
    results: dict[str, SplitResult] = {}
    for name in SPLITS:
        if name not in named:
            continue
        available = named[name]
        selected, shortfall = balanced_sample(available, balances[name], opts.seed, name, opts.allow_fewer)
        if name != "train":
            selected.sort(key=lambda s: s.index)  # evaluation splits keep input order
        res = build_rows(name, available, selected, similar, opts, counter)
        if shortfall:
            res.summary["balance_shortfall"] = shortfall
        if not res.rows:
            raise KareInputError(
                f"split {name!r} would be empty ({res.summary['available']} available, skipped: "
                f"{res.summary['skipped']}): give more samples, a larger --max-prompt-tokens or other --balance"
            )
        results[name] = res

    summary: dict[str, Any] = {
        "mode": opts.mode,
        "data_source": DATA_SOURCES[opts.mode],
        "seed": opts.seed,
        "balance_pos_neg": {k: list(v) if v else None for k, v in balances.items() if k in results},
        "one_neighbour_policy": opts.one_neighbour,
        "read": read,
        "similar": similar_info or None,
        "token_count_method": counter.method,
        "max_prompt_tokens": opts.max_prompt_tokens,
        "splits": {name: r.summary for name, r in results.items()},
    }
    stale = [n for n in SPLITS if n not in results and (opts.out / f"{n}.parquet").exists()]
    if stale:
        summary["stale_files_left"] = [f"{n}.parquet" for n in stale]
        logger.warning("%s: %s from an earlier run left in place", opts.out, stale)
    paths = write_parquet_set(opts.out, {n: r.rows for n, r in results.items()}, summary)
    summary["written"] = [str(p) for p in paths]
    logger.info("wrote %s", ", ".join(str(p) for p in paths))
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """A short human-readable account of what was read, kept and skipped."""
    lines = [f"mode {summary['mode']} (data_source {summary['data_source']}), seed {summary['seed']}"]
    for path, n in summary["read"].items():
        lines.append(f"read {n} samples from {path}")
    if summary.get("similar"):
        s = summary["similar"]
        lines.append(
            f"similar-patient file: {s['entries']} entries; {s['samples_with_entry']} samples have one, "
            f"{s['samples_without_entry']} do not (shown as 'no similar cases')"
        )
    for name, sp in summary["splits"].items():
        skipped = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in sp["skipped"].items()) or "none"
        lines.append(
            f"{name}: {sp['available']} available ({sp['available_by_label']['1']} label-1) from {sp['patients']} "
            f"patients; kept {sp['kept']} ({sp['kept_by_label']['1']} label-1, {sp['kept_by_label']['0']} label-0); "
            f"skipped: {skipped}"
        )
        if sp.get("similar_cases"):
            lines.append(f"  similar cases: {sp['similar_cases']}")
        t = sp["tokens"]
        if t.get("n"):
            lines.append(
                f"  prompt tokens: min {t['min']} median {t['median']} mean {t['mean']} p95 {t['p95']} max {t['max']}; "
                f"{t['truncated']} truncated (oldest visits dropped)"
            )
        if sp.get("balance_shortfall"):
            lines.append(f"  balance shortfall: {sp['balance_shortfall']}")
    lines.append(f"token counts: {summary['token_count_method']}")
    for p in summary.get("written", []):
        lines.append(f"wrote {p}")
    if summary.get("written"):
        out = Path(summary["written"][0]).parent
        lines.append(f"train on it: medret slurm render ... --data-dir {out} (the job reads train.parquet and "
                     "val.parquet there by default)")
    return "\n".join(lines)
