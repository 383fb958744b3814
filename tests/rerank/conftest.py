"""Fixtures of the rerank-stage tests: a tiny random cross-encoder saved like a hub model, and the reference
(tests/rerank/reference.py); the HTTP and Ray tests use medret's own server and a real local Ray cluster."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.rerank.reference import Reference, save_cross_encoder
from tests.serve.conftest import serve_process, serve_thread  # noqa: F401 - fixtures
from tests.transports.conftest import ray_cluster  # noqa: F401 - fixture


@pytest.fixture(scope="session")
def cross_encoder_dir(tmp_path_factory, make_tiny_bert) -> Path:
    return save_cross_encoder(tmp_path_factory.mktemp("tiny-cross-encoder"), make_tiny_bert)


@pytest.fixture(scope="session")
def reference(cross_encoder_dir) -> Reference:
    return Reference(cross_encoder_dir)
