"""A trained encoder through Ray: all-MiniLM-L6-v2 as a local folder (tests/eval/test_minilm_quality.py) in a Ray
actor on the real local cluster (conftest.py), opening the session's index (cache_dir): the same top 5 for every
PubMedQA question as in-process, so the same Recall@5."""
from __future__ import annotations

import os
import uuid

import pytest

from medret import get_retriever
from medret.config import RetrieverConfig
from tests.conftest import capped_recall, top_ids

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]  # builds the index if run alone


def test_ray_gives_the_same_top5_as_in_process(ray_cluster, minilm_options, minilm_ranked, pqa, monkeypatch):
    monkeypatch.setenv("MEDRET_RAY_JOB", f"t{uuid.uuid4().hex[:8]}")  # this test's own actor, killed below
    options = {**minilm_options, "backend": "ray", "ray_address": ray_cluster["address"], "timeout": 600.0}
    try:
        remote = get_retriever(**options)
        got = top_ids(remote, pqa["questions"])
        info = remote.info()
    finally:
        from medret.transports.ray import kill_actors

        kill_actors(RetrieverConfig.from_mapping(options))
    assert info["ray"]["pid"] != os.getpid() and info["index"][0].startswith("dense"), info
    assert got == minilm_ranked
    assert capped_recall(got, pqa["relevant"]).mean() >= 0.78
