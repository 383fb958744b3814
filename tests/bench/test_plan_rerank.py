"""`medret plan` with a rerank stage: the cross-encoder's memory where the retriever runs, its time per batch;
every number computed here by hand from ASSUMPTIONS."""
from __future__ import annotations

import json

import pytest

from medret.cli import main
from medret.errors import ConfigError
from medret.plan import ASSUMPTIONS, GiB, plan


def by_name(p):
    return {o["name"]: o for o in p["options"]}


def test_cross_encoder_memory_and_time_are_counted():
    base = plan("PubMed", "MedCPT", "80G", "256G")
    p = plan("PubMed", "MedCPT", "80G", "256G", reranker="MedCPT-Cross-Encoder", rerank_depth=20,
             queries_per_batch=512)
    r = p["reranker"]
    assert r["pairs_per_batch"] == 512 * 20
    assert r["gpu_s_per_batch"] == pytest.approx(10_240 / 2_000)  # 5.12 s on one GPU
    assert r["cpu_s_per_batch"] == pytest.approx(10_240 / (1.0 * 32))  # 320 s on 32 cores
    assert (r["gpu_bytes"], r["ram_bytes"]) == (2 * GiB, 2 * GiB) == (ASSUMPTIONS["cross_encoder_gpu_bytes"],
                                                                      ASSUMPTIONS["cross_encoder_ram_bytes"])
    before, after = by_name(base), by_name(p)
    for name, o in after.items():
        b = before[name]
        if name.startswith("document store"):
            assert o == b
        elif o["where"] == "gpu":
            assert o["gpu_bytes_per_gpu"] == b["gpu_bytes_per_gpu"] + 2 * GiB and o["ram_bytes"] == b["ram_bytes"]
        else:
            assert o["ram_bytes"] == b["ram_bytes"] + 2 * GiB and o["gpu_bytes_per_gpu"] == b["gpu_bytes_per_gpu"]
    assert base["reranker"] is None


def test_the_cross_encoder_can_tip_an_option_out_of_a_gpu():
    fp16 = by_name(plan("PubMed", "MedCPT", "141G", "256G"))["flat fp16 (GPU, exact)"]["gpu_bytes_per_gpu"]
    gpu = fp16 + GiB  # holds the index with 1 GiB to spare, not the 2 GiB cross-encoder too
    assert by_name(plan("PubMed", "MedCPT", gpu, "256G"))["flat fp16 (GPU, exact)"]["fits"]
    with_rr = by_name(plan("PubMed", "MedCPT", gpu, "256G", reranker="MedCPT-Cross-Encoder"))
    assert not with_rr["flat fp16 (GPU, exact)"]["fits"]
    assert "GPU memory" in with_rr["flat fp16 (GPU, exact)"]["why"]


@pytest.mark.parametrize("depth", [0, 5000])
def test_a_bad_depth_is_refused_by_name(depth):
    with pytest.raises(ConfigError, match=f"rerank_depth \\(--rerank-depth\\)={depth} is invalid"):
        plan("PubMed", "MedCPT", reranker="MedCPT-Cross-Encoder", rerank_depth=depth)


def test_cli(capsys):
    assert main(["plan", "--corpus", "PubMed", "--reranker", "MedCPT-Cross-Encoder", "--rerank-depth", "10",
                 "--queries-per-batch", "64", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)["reranker"]
    assert (r["reranker"], r["pairs_per_batch"]) == ("MedCPT-Cross-Encoder", 640)
    assert main(["plan", "--corpus", "PubMed", "--reranker", "MedCPT-Cross-Encoder"]) == 0
    assert "rerank stage: MedCPT-Cross-Encoder, 5,120 pairs per batch (512 queries x depth 10)" in \
        capsys.readouterr().out
