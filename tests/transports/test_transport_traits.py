"""Issue 22 item 3: each transport answers for itself (named by its backend, remote or not, what it needs installed,
where it searches); doctor and the benchmark ask the transport instead of comparing backend names."""
from __future__ import annotations

import pytest

from medret.bench.harness import BenchConfig, available
from medret.config import BACKENDS, RetrieverConfig
from medret.doctor.environment import needs
from medret.errors import ConfigError
from medret.transports import TRANSPORTS, HttpTransport, LocalTransport, RayTransport, make_transport, transport_class

DENSE = {"torch": "dense", "transformers": "dense", "faiss-cpu": "dense"}


def test_every_declared_backend_is_one_registered_transport():
    assert tuple(TRANSPORTS) == BACKENDS == ("local", "http", "ray")
    assert [transport_class(b) for b in BACKENDS] == [LocalTransport, HttpTransport, RayTransport]
    assert [transport_class(b).remote for b in BACKENDS] == [False, True, False]
    with pytest.raises(ConfigError, match=r"backend='grpc' is invalid: choose one of local, http, ray"):
        transport_class("grpc")


def test_make_transport_builds_the_named_class_with_its_options():
    http = make_transport(RetrieverConfig(backend="http", url="http://127.0.0.1:9/retrieve", retries=2))
    assert type(http) is HttpTransport and http.config.retries == 2 and http.url == "http://127.0.0.1:9/retrieve"
    local = make_transport(RetrieverConfig(corpus_name="sample", retriever_name="BM25"))
    try:
        assert type(local) is LocalTransport and local.search(["sepsis"], 2)[0]
    finally:
        local.close()


@pytest.mark.parametrize("backend,retriever,expected", [
    ("local", "BM25", {}), ("local", "MedCPT", DENSE), ("local", "BM25+e5", DENSE),
    ("http", "MedCPT", {}),  # the server loads the models, not this machine
    ("ray", "BM25", {"ray": "ray"}), ("ray", "MedCPT", {"ray": "ray"}),
])
def test_doctor_asks_the_transport_what_it_needs(backend, retriever, expected):
    url = {"url": "http://127.0.0.1:9/retrieve"} if backend == "http" else {}
    assert needs(RetrieverConfig(backend=backend, retriever_name=retriever, **url)) == expected


def test_where_each_transport_searches():
    cfg = RetrieverConfig(corpus_name="sample", retriever_name="BM25")
    assert LocalTransport.where(cfg) == "corpus=sample retriever=BM25"
    assert RayTransport.where(cfg).startswith("corpus=sample retriever=BM25 in Ray actor ")
    assert HttpTransport.where(RetrieverConfig(backend="http", url="http://h:1/retrieve")) == "http://h:1/retrieve"


def test_bench_backends_are_the_transports():
    assert available("local") is None and available("http") is None  # starlette and uvicorn are installed here
    with pytest.raises(ConfigError, match=r"backends=\['grpc'\] is invalid: choose from local, http, ray"):
        BenchConfig(backends=("grpc",))
