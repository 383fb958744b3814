"""Fixtures of the eval tests: a real `medret serve` process (from tests/serve) for the MiniLM quality tests' HTTP
check."""
from tests.serve.conftest import serve_process  # noqa: F401 - fixture
