"""Prompt text for the KARE mortality task, and fitting prompts into a token budget.

Layout (instructions always first, never truncated)::

    <instructions for the mode>

    Patient record:
    <KARE-style patient context>

    Similar cases:
    <similar-case section>

    <PROMPT_END>

Over-long prompts drop the patient's oldest visits first (down to the latest visit), then the oldest
visits of the similar cases; a prompt that still does not fit is reported and skipped.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Literal

from medret import optional
from medret.errors import ConfigError, ModelNotFoundError
from medret.recipes.kare.records import Sample
from medret.recipes.kare.render import (
    SimilarSelection,
    case_visit_count,
    render_patient_context,
    render_similar_cases,
)

logger = logging.getLogger(__name__)

Mode = Literal["binary", "probability"]
MODES: tuple[str, ...] = ("binary", "probability")

# The last line of every prompt; the reward uses it to find where the response starts when the text it
# is given has no chat-template assistant marker (see rewards.response_text).
PROMPT_END = "[End of the patient record. Write your response below.]"

_COMMON = (
    "You are assisting with a clinical prediction task for a patient in intensive care.\n"
    "Task: predict whether the patient will die during the next hospital visit (in-hospital mortality), "
    "using the patient's visit history below.\n"
    "Reason step by step inside <think> and </think> each time you receive new information. "
    "If you need medical knowledge you do not have, search the medical literature by writing "
    "<search> your query </search>; the results are returned between <information> and </information>. "
    "You may search several times.\n"
)
_SIMILAR_NOTE = (
    "Similar cases are other patients retrieved for their resemblance to this one, each with its own "
    "outcome when disclosed; weigh how closely each resembles this patient, and do not assume the "
    "outcome of any similar case carries over.\n"
)

_ANSWER = {
    "binary": (
        "When you have decided, give only the final answer inside <answer> and </answer>: "
        "1 if the patient will die, 0 if the patient will survive. "
        "For example, <answer> 0 </answer>.\n"
    ),
    "probability": (
        "When you have decided, give only the final answer inside <answer> and </answer> as the probability "
        "of mortality and the probability of survival, each between 0 and 1, summing to 1. "
        "For example, <answer> mortality: 0.15, survival: 0.85 </answer>.\n"
    ),
}


def instructions(mode: str, with_similar: bool = True) -> str:
    """The instruction block that opens every prompt."""
    if mode not in MODES:
        raise ConfigError(f"mode={mode!r} is invalid: use one of {list(MODES)}")
    return _COMMON + (_SIMILAR_NOTE if with_similar else "") + _ANSWER[mode]


def build_prompt(
    sample: Sample,
    similar: SimilarSelection | None,
    mode: str,
    drop_oldest: int = 0,
    case_drop_oldest: int = 0,
) -> str:
    """The user message for ``sample``; ``similar=None`` omits the similar-case section."""
    parts = [instructions(mode, similar is not None), "Patient record:\n" + render_patient_context(sample, drop_oldest)]
    if similar is not None:
        parts.append("Similar cases:\n" + render_similar_cases(similar.cases, case_drop_oldest))
    parts.append(PROMPT_END)
    return "\n\n".join(p.rstrip("\n") for p in parts) + "\n"


class TokenCounter:
    """Counts prompt tokens: exactly with a Hugging Face tokenizer (chat template applied, as Search-R1's
    dataset does), else an estimate of ``ceil(characters / 4)``."""

    def __init__(self, tokenizer_path: str | os.PathLike[str] | None = None) -> None:
        self._tok: Any = None
        if tokenizer_path is None:
            self.method = "estimate: ceil(characters / 4) (pass --tokenizer PATH for exact counts)"
            return
        path = str(tokenizer_path)
        if not os.path.isdir(path):
            raise ConfigError(f"tokenizer={path!r} is invalid: pass a local directory holding a Hugging Face tokenizer")
        try:
            AutoTokenizer = optional.transformers.AutoTokenizer
        except ImportError as e:  # pragma: no cover - depends on the install
            raise ConfigError("--tokenizer needs the 'transformers' package: pip install 'medret[dense]'") from e
        try:
            self._tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        except Exception as e:  # transformers raises many types for a bad directory
            raise ModelNotFoundError(f"tokenizer={path!r} could not be loaded ({e}): pass a tokenizer directory") from e
        templ = "with its chat template" if getattr(self._tok, "chat_template", None) else "without a chat template"
        self.method = f"tokenizer {path} ({templ})"

    @property
    def exact(self) -> bool:
        return self._tok is not None

    def count(self, content: str) -> int:
        if self._tok is None:
            return math.ceil(len(content) / 4)
        tok = self._tok
        if getattr(tok, "chat_template", None):
            text = tok.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                           tokenize=False)
        else:
            text = content
        return len(tok(text, add_special_tokens=False)["input_ids"])


@dataclass(frozen=True)
class FittedPrompt:
    content: str
    n_tokens: int
    dropped_visits: int  # oldest visits of the patient left out
    dropped_case_visits: int  # oldest visits of each similar case left out


def fit_prompt(
    sample: Sample,
    similar: SimilarSelection | None,
    mode: str,
    count: Callable[[str], int],
    max_tokens: int | None,
) -> FittedPrompt | None:
    """Build the prompt, shortening the history (never the instructions) until it fits ``max_tokens``.

    Returns None when even the latest visit with the shortest similar cases does not fit.
    """
    text = build_prompt(sample, similar, mode)
    n = count(text)
    if max_tokens is None or n <= max_tokens:
        return FittedPrompt(text, n, 0, 0)
    for drop in range(1, sample.n_visits):
        text = build_prompt(sample, similar, mode, drop_oldest=drop)
        n = count(text)
        if n <= max_tokens:
            return FittedPrompt(text, n, drop, 0)
    drop = sample.n_visits - 1
    if similar is not None and similar.cases:
        most = max(case_visit_count(c.text) for c in similar.cases)
        for case_drop in range(1, most):
            text = build_prompt(sample, similar, mode, drop_oldest=drop, case_drop_oldest=case_drop)
            n = count(text)
            if n <= max_tokens:
                return FittedPrompt(text, n, drop, case_drop)
    return None
