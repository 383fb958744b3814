"""KARE rewards on hand-written responses; expectations worked out by hand from the rules in docs/kare.md."""
from __future__ import annotations

import types

import numpy as np
import pytest

from medret.errors import ConfigError
from medret.recipes.kare.prompts import PROMPT_END
from medret.recipes.kare.records import KareInputError
from medret.recipes.kare.rewards import (
    BINARY_SOURCE,
    PROB_SOURCE,
    binary_score,
    compute_score,
    extract_answer,
    install_search_r1,
    parse_probabilities,
    probability_score,
    response_text,
    search_r1_score_fn,
)

GT1 = {"target": ["1"]}
GT0 = {"target": ["0"]}

# A prompt like the seed's: two example answers in the user message.
USER = (
    "Predict mortality. Answer like <answer> 1 </answer> if the patient dies or <answer> 0 </answer> if not.\n"
    "Example probability answer: <answer> mortality: 0.15, survival: 0.85 </answer>\n"
    "Patient ID: 1_0 ..."
)


def qwen(response: str, user: str = USER) -> str:
    """Prompt + response as Search-R1's reward manager decodes them for a Qwen chat model."""
    return (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n{response}<|im_end|>"
    )


# ---------------------------------------------------------------- binary


def test_no_answer_in_response_scores_zero_although_prompt_has_example_tags() -> None:
    text = qwen("<think>The patient has sepsis.</think> I am not sure.")
    assert binary_score(text, GT1) == 0.0
    assert binary_score(text, GT0) == 0.0
    assert compute_score(BINARY_SOURCE, text, GT1) == 0.0


def test_last_answer_of_the_response_wins() -> None:
    text = qwen("<think>first guess</think><answer> 0 </answer> wait, reconsider <answer>1</answer>")
    assert binary_score(text, GT1) == 1.0
    assert binary_score(text, GT0) == 0.0


def test_whitespace_case_and_punctuation_tolerated() -> None:
    assert binary_score(qwen("<answer>\n  1 \n</answer>"), GT1) == 1.0
    assert binary_score(qwen("<answer>1.</answer>"), GT1) == 1.0
    assert binary_score(qwen("<answer> **0** </answer>"), GT0) == 1.0


def test_wrong_but_well_formed_gets_format_score_and_missing_gets_zero() -> None:
    assert binary_score(qwen("<answer> 0 </answer>"), GT1, format_score=0.1) == pytest.approx(0.1)
    assert binary_score(qwen("<answer> 0"), GT1, format_score=0.1) == 0.0  # unclosed: no answer
    assert binary_score(qwen("<answer> 1 (death) </answer>"), GT1) == 0.0  # not an exact match
    assert compute_score(BINARY_SOURCE, qwen("<answer> 0 </answer>"), GT1, None, format_score=0.2) == pytest.approx(0.2)


def test_answer_inside_retrieved_information_is_ignored() -> None:
    resp = ("<search> sepsis mortality </search>\n\n<information>Doc 1: the <answer> 1 </answer> tag</information>"
            "\n\n<think>hm</think>")
    assert binary_score(qwen(resp), GT1) == 0.0
    resp2 = resp + "<answer> 1 </answer>"
    assert binary_score(qwen(resp2), GT1) == 1.0


def test_response_found_without_chat_template() -> None:
    # No chat template: Search-R1 decodes the raw prompt followed by the response; the prompt ends with PROMPT_END.
    prompt = USER + "\n\n" + PROMPT_END + "\n"
    assert binary_score(prompt + "<think>x</think>", GT1) == 0.0
    assert binary_score(prompt + "<answer> 1 </answer>", GT1) == 1.0
    # veRL's custom reward gets the response alone.
    assert binary_score("<think>x</think><answer>1</answer>", GT1) == 1.0
    assert response_text("Question ... Assistant: <answer>0</answer>") == " <answer>0</answer>"


def test_other_chat_markers() -> None:
    llama = (f"<|start_header_id|>user<|end_header_id|>\n\n{USER}<|eot_id|><|start_header_id|>assistant"
             "<|end_header_id|>\n\nno answer")
    assert binary_score(llama, GT1) == 0.0
    assert extract_answer(llama + "<answer>0</answer>") == "0"


def test_ground_truth_as_pandas_returns_it() -> None:
    # pandas reads list<string> columns back as numpy object arrays.
    gt = {"target": np.array(["1"], dtype=object)}
    assert binary_score(qwen("<answer>1</answer>"), gt) == 1.0
    assert probability_score(qwen("<answer>mortality: 0.6, survival: 0.4</answer>"), gt) == pytest.approx(0.6)


# ---------------------------------------------------------------- probability


@pytest.mark.parametrize(
    "answer, label, expected",
    [
        ("mortality: 0.8, survival: 0.2", 1, 0.8),
        ("mortality: 0.8, survival: 0.2", 0, 0.2),
        ("Mortality probability = 0.25; Survival probability = 0.75", 1, 0.25),
        ("mortality: 0.30 survival: 0.66", 0, 0.70),  # sum 0.96, within 0.05; reward uses 1 - p
        ("survival: 1, mortality: 0", 0, 1.0),
        ("mortality: .5, survival: .5.", 1, 0.5),
    ],
)
def test_probability_reward_is_p_or_one_minus_p(answer: str, label: int, expected: float) -> None:
    gt = {"target": [str(label)]}
    text = qwen(f"<think>risk</think><answer> {answer} </answer>")
    assert probability_score(text, gt) == pytest.approx(expected)
    assert compute_score(PROB_SOURCE, text, gt) == pytest.approx(expected)


@pytest.mark.parametrize(
    "answer",
    [
        "mortality: 0.9, survival: 0.2",  # sums to 1.1
        "mortality: 1.2, survival: -0.2",  # out of range
        "mortality: 80%, survival: 20%",  # not a decimal in [0, 1]
        "mortality: 0.8",  # survival missing
        "mortality: 0.8, survival: 0.2, mortality: 0.7",  # key twice
        "0.8, 0.2",  # unlabeled
        "1",  # a binary answer
        "mortality: high, survival: low",
    ],
)
def test_malformed_probabilities_score_zero(answer: str) -> None:
    text = qwen(f"<answer>{answer}</answer>")
    assert probability_score(text, GT1) == 0.0
    assert probability_score(text, GT0) == 0.0
    assert probability_score(text, GT1, format_score=0.1) == 0.0


def test_probability_must_be_inside_answer_of_response() -> None:
    # The prompt's example (0.15/0.85) and values in <think> must not be read.
    no_answer = qwen("<think>mortality: 0.9, survival: 0.1</think>")
    assert probability_score(no_answer, GT1) == 0.0
    answered = qwen("<think>mortality: 0.9, survival: 0.1</think><answer>mortality: 0.7, survival: 0.3</answer>")
    assert probability_score(answered, GT1) == pytest.approx(0.7)


def test_probability_format_score_and_brier_rule() -> None:
    text = qwen("<answer>mortality: 0.8, survival: 0.2</answer>")
    assert probability_score(text, GT0, format_score=0.1) == pytest.approx(0.1 + 0.9 * 0.2)
    assert probability_score(text, GT1, rule="brier") == pytest.approx(1 - 0.2**2)
    assert probability_score(text, GT0, rule="brier") == pytest.approx(1 - 0.8**2)
    assert parse_probabilities("mortality: 0.8, survival: 0.2") == (0.8, 0.2)


def test_bad_ground_truth_and_unknown_source_are_errors() -> None:
    with pytest.raises(KareInputError, match="target"):
        probability_score(qwen("<answer>mortality: 0.5, survival: 0.5</answer>"), {"target": ["yes"]})
    with pytest.raises(KareInputError, match="target"):
        binary_score(qwen("<answer>1</answer>"), {"answer": "1"})
    with pytest.raises(ConfigError, match="data_source='nq'"):
        compute_score("nq", qwen("<answer>1</answer>"), GT1)


# ---------------------------------------------------------------- Search-R1 registration


def _fake_main_ppo() -> types.ModuleType:
    """Stands in for Search-R1's verl.trainer.main_ppo: only the selector's contract (known sources, else raise)."""
    mod = types.ModuleType("fake_main_ppo")

    def em(solution_str: str, ground_truth: dict, format_score: float = 0.0) -> float:
        return -1.0

    def _select_rm_score_fn(data_source: str):  # type: ignore[no-untyped-def]
        if data_source == "nq":
            return em
        raise NotImplementedError

    mod._select_rm_score_fn = _select_rm_score_fn  # type: ignore[attr-defined]
    return mod


def test_search_r1_score_fn_uses_search_r1_keywords() -> None:
    assert search_r1_score_fn("nq") is None
    fn = search_r1_score_fn(BINARY_SOURCE)
    assert fn is not None
    assert fn(solution_str=qwen("<answer>1</answer>"), ground_truth=GT1, format_score=0.0) == 1.0
    pfn = search_r1_score_fn(PROB_SOURCE)
    assert pfn is not None
    assert pfn(solution_str=qwen("<answer>mortality: 0.3, survival: 0.7</answer>"), ground_truth=GT0,
               format_score=0.0) == pytest.approx(0.7)


def test_install_search_r1_routes_kare_sources_and_keeps_others() -> None:
    mod = _fake_main_ppo()
    with pytest.raises(NotImplementedError):
        mod._select_rm_score_fn(BINARY_SOURCE)
    install_search_r1(mod)
    install_search_r1(mod)  # idempotent
    sel = mod._select_rm_score_fn
    assert sel("nq")("x", GT1) == -1.0
    assert sel(BINARY_SOURCE)(solution_str=qwen("no answer"), ground_truth=GT1, format_score=0.0) == 0.0
    assert sel(PROB_SOURCE)(solution_str=qwen("<answer>mortality: 1, survival: 0</answer>"), ground_truth=GT1) == 1.0
    with pytest.raises(NotImplementedError):
        sel("triviaqa_unknown")
    with pytest.raises(ConfigError, match="_select_rm_score_fn"):
        install_search_r1(types.ModuleType("empty"))
