"""Rewards for the KARE mortality task, for Search-R1 and veRL.

Where the response starts
    Search-R1's reward manager scores the decoded *prompt + response*; veRL's ``custom_reward_function``
    gets the response alone. :func:`response_text` finds the response: the text after the first
    chat-template assistant marker (``<|im_start|>assistant`` for Qwen; Llama-3, Gemma, Mistral and
    ``<|assistant|>`` markers are also known), else after this recipe's :data:`PROMPT_END` line, else
    after the first ``Assistant:``, else the whole string is taken to be the response. Retrieved
    ``<information> ... </information>`` blocks are removed from the response before answers are read,
    so a document can never supply the answer. Example ``<answer>`` tags in the prompt are therefore
    never read.

Binary (``kare_mortality_binary``)
    The last ``<answer> ... </answer>`` of the response, lower-cased with whitespace and punctuation
    removed, must equal the label (``"0"`` or ``"1"``): score 1. A well-formed but wrong answer scores
    ``format_score``; no answer scores 0.

Probability (``kare_mortality_prob``)
    The last answer must hold ``mortality: p`` and ``survival: q`` (``:`` or ``=``; also
    ``mortality probability: p``), each a plain decimal in [0, 1], ``|p + q - 1| <= 0.05``, each key
    once. Reward ``p`` if the label is 1 else ``1 - p`` (``rule="linear"``, the task's rule), or
    ``1 - (p - y)**2`` (``rule="brier"``, a proper scoring rule). With a format score ``f`` the reward
    is ``f + (1 - f) * r``. Anything malformed scores 0.
"""
from __future__ import annotations

import logging
import re
import string
from typing import Any, Callable, Literal

from medret.errors import ConfigError
from medret.recipes.kare.prompts import PROMPT_END
from medret.recipes.kare.records import KareInputError

logger = logging.getLogger(__name__)

BINARY_SOURCE = "kare_mortality_binary"
PROB_SOURCE = "kare_mortality_prob"
DATA_SOURCES: dict[str, str] = {"binary": BINARY_SOURCE, "probability": PROB_SOURCE}

ASSISTANT_MARKERS: tuple[str, ...] = (
    "<|im_start|>assistant",
    "<|start_header_id|>assistant<|end_header_id|>",
    "<start_of_turn>model",
    "<|assistant|>",
    "[/INST]",
)
PROB_TOLERANCE = 0.05

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_INFORMATION = re.compile(r"<information>.*?(?:</information>|\Z)", re.DOTALL)
_PROB_ITEM = re.compile(
    r"\b(mortality|survival)(?:[ _-]?(?:probability|prob))?\s*[:=]\s*([^\s,;]+)", re.IGNORECASE
)
_DECIMAL = re.compile(r"\A(?:\d+(?:\.\d*)?|\.\d+)\Z")
_STRIP = str.maketrans("", "", string.punctuation + string.whitespace)


def response_text(solution_str: str) -> str:
    """The response part of ``solution_str`` (see the module docstring for the rule)."""
    for marker in ASSISTANT_MARKERS:
        i = solution_str.find(marker)
        if i >= 0:
            return solution_str[i + len(marker):]
    i = solution_str.find(PROMPT_END)
    if i >= 0:
        return solution_str[i + len(PROMPT_END):]
    i = solution_str.find("Assistant:")
    if i >= 0:
        return solution_str[i + len("Assistant:"):]
    return solution_str


def extract_answer(solution_str: str) -> str | None:
    """Content of the last ``<answer>`` of the response (retrieved information removed), or None."""
    response = _INFORMATION.sub(" ", response_text(solution_str))
    matches = _ANSWER.findall(response)
    if not matches:
        return None
    return matches[-1].strip()


def _targets(ground_truth: Any) -> list[str]:
    target = ground_truth.get("target") if isinstance(ground_truth, dict) else ground_truth
    if target is None:
        raise KareInputError(f"ground_truth={ground_truth!r} has no 'target': expected {{'target': ['0' or '1']}}")
    if isinstance(target, (str, int)) and not isinstance(target, bool):
        return [str(target)]
    try:
        items = [str(t) for t in target]  # list, tuple or the numpy array pandas gives back
    except TypeError:
        raise KareInputError(f"ground_truth target={target!r} is not a list of labels: expected ['0'] or "
                             "['1']") from None
    if not items:
        raise KareInputError("ground_truth target is empty: expected ['0'] or ['1']")
    return items


def _label(ground_truth: Any) -> int:
    first = _targets(ground_truth)[0].strip()
    if first not in ("0", "1"):
        raise KareInputError(f"ground_truth target={first!r} is not a mortality label: expected '0' or '1'")
    return int(first)


def _norm(s: str) -> str:
    return s.lower().translate(_STRIP)


def binary_score(solution_str: str, ground_truth: Any, format_score: float = 0.0, score: float = 1.0) -> float:
    """Exact match of the response's last answer against the label."""
    answer = extract_answer(solution_str)
    if answer is None:
        return 0.0
    if _norm(answer) in {_norm(t) for t in _targets(ground_truth)}:
        return float(score)
    return float(format_score)


def parse_probabilities(answer: str) -> tuple[float, float] | None:
    """(mortality, survival) from an answer's content, or None when malformed."""
    found: dict[str, float] = {}
    for key, raw in _PROB_ITEM.findall(answer):
        key = key.lower()
        if key in found or not _DECIMAL.match(raw.rstrip(".")):
            return None
        found[key] = float(raw.rstrip("."))
    if set(found) != {"mortality", "survival"}:
        return None
    p, q = found["mortality"], found["survival"]
    if not (0.0 <= p <= 1.0 and 0.0 <= q <= 1.0) or abs(p + q - 1.0) > PROB_TOLERANCE:
        return None
    return p, q


def probability_score(
    solution_str: str,
    ground_truth: Any,
    format_score: float = 0.0,
    rule: Literal["linear", "brier"] = "linear",
) -> float:
    """Reward of a stated mortality probability against the label (0 when malformed)."""
    label = _label(ground_truth)
    answer = extract_answer(solution_str)
    if answer is None:
        return 0.0
    probs = parse_probabilities(answer)
    if probs is None:
        return 0.0
    p = probs[0]
    if rule == "linear":
        r = p if label == 1 else 1.0 - p
    elif rule == "brier":
        r = 1.0 - (p - label) ** 2
    else:
        raise ConfigError(f"rule={rule!r} is invalid: use 'linear' or 'brier'")
    return float(format_score + (1.0 - format_score) * r)


_BY_SOURCE: dict[str, Callable[..., float]] = {BINARY_SOURCE: binary_score, PROB_SOURCE: probability_score}


def compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: Any,
    extra_info: dict[str, Any] | None = None,
    format_score: float = 0.0,
) -> float:
    """veRL ``custom_reward_function`` entry point: picks the reward by ``data_source``."""
    fn = _BY_SOURCE.get(data_source)
    if fn is None:
        raise ConfigError(
            f"data_source={data_source!r} is invalid: this reward knows {sorted(_BY_SOURCE)}; "
            f"route other sources to their own reward"
        )
    return fn(solution_str, ground_truth, format_score=format_score)


def search_r1_score_fn(data_source: str) -> Callable[..., float] | None:
    """The score function for a KARE ``data_source`` in Search-R1's calling convention
    (``fn(solution_str=..., ground_truth=..., format_score=...)``), or None for other sources."""
    fn = _BY_SOURCE.get(data_source)
    if fn is None:
        return None

    def score(solution_str: str, ground_truth: Any, format_score: float = 0.0, **_: Any) -> float:
        return fn(solution_str, ground_truth, format_score=format_score)

    score.__name__ = f"{fn.__name__}_for_{data_source}"
    return score


def install_search_r1(main_ppo_module: Any) -> None:
    """Make Search-R1's ``_select_rm_score_fn`` (in ``verl.trainer.main_ppo``) answer KARE sources.

    Other sources still go to the original function. Call before the trainer builds its RewardManager;
    calling twice is harmless.
    """
    original = getattr(main_ppo_module, "_select_rm_score_fn", None)
    if original is None:
        raise ConfigError(
            f"module {getattr(main_ppo_module, '__name__', main_ppo_module)!r} has no _select_rm_score_fn: "
            f"pass Search-R1's verl.trainer.main_ppo"
        )
    if getattr(original, "_medret_kare", False):
        return

    def _select_rm_score_fn(data_source: str) -> Callable[..., float]:
        fn = search_r1_score_fn(data_source)
        return fn if fn is not None else original(data_source)

    _select_rm_score_fn._medret_kare = True  # type: ignore[attr-defined]
    main_ppo_module._select_rm_score_fn = _select_rm_score_fn
