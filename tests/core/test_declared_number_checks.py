"""Issue 22 item 2: the number checks of plan, the benchmark, the exact GPU top-k and the server's socket are
validate.py's (one wording, the field and its flag named, the value, what is accepted), not hand-written."""
from __future__ import annotations

import numpy as np
import pytest

from medret.bench.harness import BenchConfig
from medret.errors import ConfigError
from medret.index.gpu_topk import exact_topk
from medret.plan import plan
from medret.serve.server import bind_socket


@pytest.mark.parametrize("kwargs,message", [
    ({"pq_nbits": "8"}, r"pq_nbits \(--pq-nbits\)='8' is invalid: a positive whole number up to 16, bits per sub-"),
    ({"pq_nbits": 17}, r"pq_nbits \(--pq-nbits\)=17 is invalid: a positive whole number up to 16"),
    ({"gpus": -1}, r"gpus \(--gpus\)=-1 is invalid: a non-negative whole number, GPUs per node"),
    ({"nodes": True}, r"nodes \(--nodes\)=True is invalid: a positive whole number"),
    ({"retriever": "/models/x", "dim": 0}, r"dim \(--dim\)=0 is invalid: a positive whole number, the embedding"),
])
def test_plan_numbers(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        plan(**{"corpus": "Textbooks", **kwargs})


@pytest.mark.parametrize("name,bad", [("topk", 0), ("repeats", 0), ("min_repeats", 2.5), ("topk", True)])
def test_bench_numbers(name, bad):
    with pytest.raises(ConfigError, match=rf"^{name}={bad!r} is invalid: a positive whole number$"):
        BenchConfig(**{name: bad})


def test_exact_topk_chunk_rows():
    x = np.ones((4, 3), np.float32)
    with pytest.raises(ConfigError, match=r"chunk_rows=0 is invalid: a positive whole number, rows scored at once"):
        exact_topk([x], x[:1], 2, chunk_rows=0)


@pytest.mark.parametrize("port", [-1, 65536, 80.0, True])
def test_server_port(port):
    with pytest.raises(ConfigError, match=rf"port={port!r} is invalid: a non-negative whole number up to 65535, "
                                          "0 picks a free port"):
        bind_socket("127.0.0.1", port)
