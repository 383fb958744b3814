"""KARE ICU-mortality recipe: KARE patient records -> Search-R1 training data, rewards, synthetic data.

See ``docs/kare.md``. Public entry points::

    from medret.recipes.kare import prepare, PrepareOptions, synth, compute_score
"""
from __future__ import annotations

from medret.recipes.kare.prepare import PrepareOptions, parse_balance, prepare
from medret.recipes.kare.records import (
    KareInputError,
    Sample,
    SimilarEntry,
    load_samples,
    load_similar,
)
from medret.recipes.kare.rewards import (
    BINARY_SOURCE,
    DATA_SOURCES,
    PROB_SOURCE,
    binary_score,
    compute_score,
    install_search_r1,
    probability_score,
    search_r1_score_fn,
)
from medret.recipes.kare.synth import synth

__all__ = [
    "BINARY_SOURCE",
    "DATA_SOURCES",
    "PROB_SOURCE",
    "KareInputError",
    "PrepareOptions",
    "Sample",
    "SimilarEntry",
    "binary_score",
    "compute_score",
    "install_search_r1",
    "load_samples",
    "load_similar",
    "parse_balance",
    "prepare",
    "probability_score",
    "search_r1_score_fn",
    "synth",
]
