"""Label-leak test: the similar-case section, clinical text removed, must not predict the target label.

On 1,000 synthetic samples (half label 1, 30% one-neighbour entries whose lone neighbour is the
"positive" one, the worst case) the prompt's similar-case section is
reduced to its "skeleton": every line that is not clinical text (headings, outcome statements, their
order, how many cases, withheld markers). Two simple classifiers are trained on 70% and scored on the
held-out 30%:

* a frequency table: the majority label of each distinct skeleton (falls back to the overall majority);
* logistic regression (numpy, gradient descent) over bag-of-(line position, word) features.

Their held-out accuracy must not exceed what a label-blind rule reaches by luck: the 99.9% quantile of
Binomial(n_test, max(share of 1, share of 0)) / n_test. The same classifiers run on deliberately leaky
renderings (the seed's headings, unshuffled roles, a lone neighbour's label shown) must see the leak,
which shows the test can fail.
"""
from __future__ import annotations

import random
import re
from collections import Counter, defaultdict
from typing import Callable

import numpy as np
import pytest
from scipy.stats import binom

from medret.recipes.kare.prompts import PROMPT_END, build_prompt
from medret.recipes.kare.records import (
    Sample,
    SimilarEntry,
    parse_samples,
    parse_similar,
)
from medret.recipes.kare.render import (
    ShownCase,
    SimilarSelection,
    case_rng,
    clean_case_text,
    select_similar,
)
from medret.recipes.kare.synth import synth_samples, synth_similar

N = 1000
SEED = 7
CLINICAL_LINE = re.compile(
    r"^(Visit \d+:|Conditions:|Procedures:|Medications:|\d+\. .*|No documented (conditions|procedures|medications)\.|)$"
)


@pytest.fixture(scope="module")
def data() -> tuple[list[Sample], dict[str, SimilarEntry]]:
    samples = parse_samples(synth_samples(N, positive_rate=0.5, seed=SEED), "synthetic")
    similar = parse_similar(synth_similar(samples, seed=SEED, one_neighbour_rate=0.3, none_rate=0.05,
                                          lone_role="positive"), "synthetic")
    return samples, similar


def similar_section(prompt: str) -> str:
    start = prompt.index("\nSimilar cases:\n")
    end = prompt.index(PROMPT_END)
    return prompt[start:end]


def skeleton(section: str) -> list[str]:
    """Every line of the similar-case section except the clinical text."""
    return [line for line in section.splitlines() if not CLINICAL_LINE.match(line.strip())]


def split_idx(n: int) -> tuple[list[int], list[int]]:
    idx = list(range(n))
    random.Random(123).shuffle(idx)
    cut = int(0.7 * n)
    return idx[:cut], idx[cut:]


def table_accuracy(keys: list[str], y: np.ndarray, train: list[int], test: list[int]) -> float:
    votes: dict[str, Counter[int]] = defaultdict(Counter)
    for i in train:
        votes[keys[i]][int(y[i])] += 1
    overall = Counter(int(y[i]) for i in train).most_common(1)[0][0]
    pred = [votes[keys[i]].most_common(1)[0][0] if keys[i] in votes else overall for i in test]
    return float(np.mean([p == y[i] for p, i in zip(pred, test)]))


def logreg_accuracy(lines: list[list[str]], y: np.ndarray, train: list[int], test: list[int]) -> float:
    vocab: dict[str, int] = {}
    feats: list[list[int]] = []
    for sk in lines:
        f = [vocab.setdefault(f"n={len(sk)}", len(vocab))]
        for pos, line in enumerate(sk):
            for word in re.findall(r"\w+|[^\w\s]", line.lower()):
                f.append(vocab.setdefault(f"{pos}:{word}", len(vocab)))
                f.append(vocab.setdefault(f"*:{word}", len(vocab)))
        feats.append(f)
    x = np.zeros((len(lines), len(vocab) + 1))
    for i, f in enumerate(feats):
        x[i, f] = 1.0
    x[:, -1] = 1.0
    w = np.zeros(x.shape[1])
    xt, yt = x[train], y[train]
    for _ in range(400):
        p = 1.0 / (1.0 + np.exp(-(xt @ w)))
        w -= 0.5 * (xt.T @ (p - yt) / len(train) + 1e-3 * w)
    pred = (x[test] @ w > 0).astype(int)
    return float(np.mean(pred == y[test]))


def chance_bound(y: np.ndarray, test: list[int]) -> float:
    n = len(test)
    share = float(np.mean(y[test]))
    return float(binom.ppf(0.999, n, max(share, 1 - share)) / n)


def accuracies(sections: list[str], y: np.ndarray) -> tuple[float, float, float]:
    train, test = split_idx(len(sections))
    sks = [skeleton(s) for s in sections]
    return (
        table_accuracy(["\n".join(s) for s in sks], y, train, test),
        logreg_accuracy(sks, y, train, test),
        chance_bound(y, test),
    )


def render_all(
    samples: list[Sample], similar: dict[str, SimilarEntry], select: Callable[[Sample], SimilarSelection],
    mode: str = "binary"
) -> list[str]:
    return [similar_section(build_prompt(s, select(s), mode)) for s in samples]


@pytest.mark.parametrize("policy", ["withhold", "drop"])
@pytest.mark.parametrize("mode", ["binary", "probability"])
def test_similar_cases_do_not_predict_the_target(data, policy: str, mode: str) -> None:
    samples, similar = data
    y = np.array([s.label for s in samples])
    assert 0.45 < y.mean() < 0.55
    kinds = Counter(select_similar(similar.get(s.sample_id), case_rng(0, s.sample_id), policy).kind for s in samples)  # type: ignore[arg-type]
    assert kinds["paired"] > 400 and sum(v for k, v in kinds.items() if k.startswith("one_neighbour")) > 150

    sections = render_all(samples, similar,
                          lambda s: select_similar(similar.get(s.sample_id), case_rng(0, s.sample_id), policy),  # type: ignore[arg-type]
                          mode)
    # Sanity: the skeleton does contain the structure (headings and stated outcomes), not just nothing.
    assert any("Outcome of similar case B: mortality label" in "\n".join(skeleton(s)) for s in sections)
    table_acc, lr_acc, bound = accuracies(sections, y)
    assert table_acc <= bound, (table_acc, bound)
    assert lr_acc <= bound, (lr_acc, bound)


def test_no_role_words_or_raw_label_lines(data) -> None:
    samples, similar = data
    for s in samples[:300]:
        sel = select_similar(similar.get(s.sample_id), case_rng(0, s.sample_id))
        section = similar_section(build_prompt(s, sel, "binary"))
        assert not re.search(r"positive|negative|Label:|Mortality=|Survival=|Patient ID", section), section[:400]
        if sel.kind == "one_neighbour_withheld":
            assert "mortality label" not in section and "not disclosed" in section


def _seed_style(similar: dict[str, SimilarEntry]) -> Callable[[Sample], str]:
    """The seed's layout: 'positive' (same label) block headed by its label. Written here for the test."""

    def render(s: Sample) -> str:
        e = similar.get(s.sample_id)
        parts = []
        if e is not None:
            for nb in e.positive + e.negative:
                head = "Similar Cases with Mortality=1" if nb.label == 1 else "Similar Cases with Survival=0"
                parts.append(f"{head}:\n{clean_case_text(nb.text)}")
        return "\nSimilar cases:\n" + "\n\n".join(parts) + "\n"

    return render


def test_leak_test_detects_the_seed_layout(data) -> None:
    samples, similar = data
    y = np.array([s.label for s in samples])
    render = _seed_style(similar)
    table_acc, lr_acc, bound = accuracies([render(s) for s in samples], y)
    assert table_acc > 0.9 and lr_acc > 0.9, (table_acc, lr_acc, bound)


def test_leak_test_detects_unshuffled_roles(data) -> None:
    samples, similar = data
    y = np.array([s.label for s in samples])

    def unshuffled(s: Sample) -> SimilarSelection:
        e = similar.get(s.sample_id)
        if e is None or not (e.positive and e.negative):
            return SimilarSelection((), "none", 0)
        pos, neg = e.positive[0], e.negative[0]
        return SimilarSelection(
            (ShownCase(clean_case_text(pos.text), pos.label), ShownCase(clean_case_text(neg.text), neg.label)),
            "paired", 0
        )

    table_acc, lr_acc, bound = accuracies(render_all(samples, similar, unshuffled), y)
    assert table_acc > bound and lr_acc > bound, (table_acc, lr_acc, bound)


def test_leak_test_detects_a_lone_neighbours_label() -> None:
    """With mostly one-neighbour entries, showing the lone case's label would leak; withholding does not."""
    samples = parse_samples(synth_samples(N, positive_rate=0.5, seed=SEED + 1), "synthetic")
    similar = parse_similar(synth_similar(samples, seed=SEED + 1, one_neighbour_rate=0.95, none_rate=0.0,
                                          lone_role="positive"), "synthetic")
    y = np.array([s.label for s in samples])

    def shown(s: Sample) -> SimilarSelection:
        sel = select_similar(similar.get(s.sample_id), case_rng(0, s.sample_id))
        if sel.kind != "one_neighbour_withheld":
            return sel
        e = similar[s.sample_id]
        lone = (e.positive or e.negative)[0]
        return SimilarSelection((ShownCase(sel.cases[0].text, lone.label),), sel.kind, 0)

    leaky = accuracies(render_all(samples, similar, shown), y)
    assert leaky[0] > leaky[2] and leaky[1] > leaky[2], leaky
    safe = accuracies(render_all(samples, similar,
                                 lambda s: select_similar(similar.get(s.sample_id), case_rng(0, s.sample_id))), y)
    assert safe[0] <= safe[2] and safe[1] <= safe[2], safe
