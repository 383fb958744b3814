"""Render a patient's visits and its similar cases as prompt text.

Patient context follows KARE's layout: ``Patient ID``, ``Visit N:``, numbered Conditions / Procedures /
Medications, ``(new)`` for an item first seen after visit 0, ``(continued from previous visit)`` for an
item seen in any earlier visit, and ``No documented conditions.`` (etc.) for an empty list.

Similar cases are rendered so that nothing but their clinical text says anything about the target's
label (see ``docs/kare.md``, "Label leak"):

* KARE's roles are discarded: "positive" (same label as the target) and "negative" (other label) are
  pooled, balanced (the same number from each role, most similar first) and shuffled with a per-sample
  seed; headings are neutral (``Similar case A``, ``Similar case B``, ...).
* Each case's own outcome is stated as a fact about that case.
* One-neighbour case (only one role present): its label alone would give the target's label away
  (a lone "positive" neighbour has the target's label). Policy ``"withhold"`` (default) shows the
  case's clinical text with its outcome withheld; policy ``"drop"`` leaves the case out.
* The neighbour's own ``Patient ID`` line is removed.
"""
from __future__ import annotations

import logging
import random
import re
from dataclasses import dataclass
from typing import Literal, Sequence

from medret.recipes.kare.records import Neighbour, Sample, SimilarEntry

logger = logging.getLogger(__name__)

OneNeighbourPolicy = Literal["withhold", "drop"]
ONE_NEIGHBOUR_POLICIES: tuple[str, ...] = ("withhold", "drop")

_SECTIONS: tuple[tuple[str, str, str], ...] = (
    ("conditions", "Conditions", "conditions"),
    ("procedures", "Procedures", "procedures"),
    ("drugs", "Medications", "medications"),
)
_PATIENT_ID_LINE = re.compile(r"\A\s*Patient ID:[^\n]*\n*")
NO_SIMILAR_TEXT = "No similar cases are available for this patient."


def _visit_block(sample: Sample, v: int, seen: dict[str, set[str]]) -> str:
    lines = [f"Visit {v}:"]
    for field, title, noun in _SECTIONS:
        items: tuple[str, ...] = getattr(sample, field)[v]
        lines.append(f"{title}:")
        if not items:
            lines.append(f"No documented {noun}.")
        for n, item in enumerate(items, 1):
            if item in seen[field]:
                mark = " (continued from previous visit)"
            elif v > 0:
                mark = " (new)"
            else:
                mark = ""
            lines.append(f"{n}. {item}{mark}")
        lines.append("")
    # Marks compare with earlier visits only (an item listed twice in one visit is marked the same both times).
    for field, _, _ in _SECTIONS:
        seen[field].update(getattr(sample, field)[v])
    return "\n".join(lines).rstrip("\n")


def render_patient_context(sample: Sample, drop_oldest: int = 0) -> str:
    """KARE-style context of ``sample``; ``drop_oldest`` leaves out that many of the oldest visits
    (never the latest one). ``(new)``/``(continued ...)`` marks still reflect the full history."""
    n = sample.n_visits
    drop = max(0, min(drop_oldest, n - 1))
    seen: dict[str, set[str]] = {f: set() for f, _, _ in _SECTIONS}
    blocks: list[str] = []
    for v in range(n):
        block = _visit_block(sample, v, seen)
        if v >= drop:
            blocks.append(block)
    head = f"Patient ID: {sample.sample_id}"
    if drop:
        last = drop - 1
        span = "Visit 0" if last == 0 else f"Visits 0-{last}"
        head += f"\n\n({span} omitted for length; {n - drop} most recent of {n} visits shown.)"
    return head + "\n\n" + "\n\n".join(blocks)


def clean_case_text(text: str) -> str:
    """A neighbour's clinical text as shown: its ``Patient ID`` line removed, whitespace trimmed."""
    return _PATIENT_ID_LINE.sub("", text, count=1).strip()


def _visit_chunks(text: str) -> list[str]:
    """Split a rendered context into ``Visit N:`` blocks (anything before the first is kept with it)."""
    parts = re.split(r"(?m)^(?=Visit \d+:)", text)
    head, blocks = parts[0], parts[1:]
    if not blocks:
        return [text]
    blocks[0] = head + blocks[0]
    return blocks


def shorten_case_text(text: str, drop_oldest: int) -> str:
    """Drop the ``drop_oldest`` oldest visit blocks of a neighbour's context (keeps the latest)."""
    if drop_oldest <= 0:
        return text
    blocks = _visit_chunks(text)
    drop = min(drop_oldest, len(blocks) - 1)
    if drop <= 0:
        return text
    kept = "\n".join(b.strip("\n") + "\n" for b in blocks[drop:]).strip()
    return f"(Oldest {drop} visit(s) omitted for length.)\n" + kept


def case_visit_count(text: str) -> int:
    return len(_visit_chunks(text))


def outcome_sentence(letter: str, label: int | None) -> str:
    if label is None:
        return f"Outcome of similar case {letter}: not disclosed."
    what = "the patient died" if label == 1 else "the patient survived"
    return f"Outcome of similar case {letter}: mortality label {label} ({what})."


@dataclass(frozen=True)
class ShownCase:
    """A similar case as placed in the prompt."""

    text: str
    label: int | None  # None: withheld


@dataclass(frozen=True)
class SimilarSelection:
    cases: tuple[ShownCase, ...]
    kind: str  # "paired", "one_neighbour_withheld", "one_neighbour_dropped", "none", "missing"
    dropped_for_balance: int


def case_rng(seed: int, sample_id: str) -> random.Random:
    """Per-sample RNG: the same (seed, sample) always gives the same order, whatever else is prepared."""
    return random.Random(f"medret-kare:{seed}:{sample_id}")


def select_similar(
    entry: SimilarEntry | None, rng: random.Random, policy: OneNeighbourPolicy = "withhold"
) -> SimilarSelection:
    """Choose and order the cases to show; see the module docstring for the rules."""
    if policy not in ONE_NEIGHBOUR_POLICIES:
        raise ValueError(f"one-neighbour policy {policy!r} is not one of {ONE_NEIGHBOUR_POLICIES}")
    if entry is None:
        return SimilarSelection((), "missing", 0)
    pos, neg = list(entry.positive), list(entry.negative)
    m = min(len(pos), len(neg))
    if m > 0:
        chosen: list[Neighbour] = pos[:m] + neg[:m]
        dropped = len(pos) + len(neg) - 2 * m
        rng.shuffle(chosen)
        cases = tuple(ShownCase(clean_case_text(nb.text), nb.label) for nb in chosen)
        return SimilarSelection(cases, "paired", dropped)
    lone = pos or neg
    if not lone:
        return SimilarSelection((), "none", 0)
    if policy == "drop":
        return SimilarSelection((), "one_neighbour_dropped", len(lone))
    # Only the most similar one is shown so the count does not depend on which role was present.
    return SimilarSelection((ShownCase(clean_case_text(lone[0].text), None),), "one_neighbour_withheld", len(lone) - 1)


def case_letter(i: int) -> str:
    letters = ""
    i += 1
    while i:
        i, r = divmod(i - 1, 26)
        letters = chr(ord("A") + r) + letters
    return letters


def render_similar_cases(cases: Sequence[ShownCase], case_drop_oldest: int = 0) -> str:
    """Text of the similar-case section body (heading added by the prompt)."""
    if not cases:
        return NO_SIMILAR_TEXT
    out: list[str] = []
    for i, case in enumerate(cases):
        letter = case_letter(i)
        body = shorten_case_text(case.text, case_drop_oldest)
        out.append(f"Similar case {letter}:\n{body}\n\n{outcome_sentence(letter, case.label)}")
    return "\n\n".join(out)
