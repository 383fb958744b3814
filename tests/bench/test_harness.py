"""`medret bench` harness on tiny sizes: structure and arithmetic of the results, never wall-clock values."""
import json

import numpy as np
import pytest

from medret.bench.harness import (
    BenchConfig,
    format_table,
    make_batch,
    run_bench,
    write_outputs,
)
from medret.cli import main
from medret.errors import ConfigError

QUERIES = ["sepsis elderly", "kidney injury", "stroke risk", "insulin fluids", "heart failure congestion",
           "delirium icu", "pneumonia lung", "septic shock vasopressors"]


def test_make_batch_duplicate_ratio():
    assert make_batch(QUERIES, 8, 0.0) == QUERIES
    b = make_batch(QUERIES, 8, 0.75)  # GRPO groups of 4: 2 distinct queries, each 4 times in a row
    assert b == [QUERIES[0]] * 4 + [QUERIES[1]] * 4
    b = make_batch(QUERIES, 10, 0.5, start=3)  # 5 distinct, 2 each
    assert b == [q for q in QUERIES[3:8] for _ in range(2)]
    b = make_batch(QUERIES, 7, 0.5)  # ceil(3.5) = 4 distinct: groups of 2,2,2,1
    assert b == [QUERIES[0]] * 2 + [QUERIES[1]] * 2 + [QUERIES[2]] * 2 + [QUERIES[3]]
    assert len(make_batch(QUERIES, 20, 0.0)) == 20  # the pool wraps around


def test_config_validation():
    with pytest.raises(ConfigError, match="backends="):
        BenchConfig(backends=["grpc"])
    with pytest.raises(ConfigError, match="dup_ratio=1.0"):
        BenchConfig(dup_ratio=1.0)
    with pytest.raises(ConfigError, match="batch_sizes="):
        BenchConfig(batch_sizes=[0])


def test_local_run_arithmetic_and_outputs(toy_corpus, tmp_path):
    cfg = BenchConfig(corpus=str(toy_corpus), retriever="BM25", backends=["local"], batch_sizes=[1, 4, 16],
                      repeats=3, min_repeats=3, max_seconds=60, queries=QUERIES, measure_startup=False,
                      dup_ratio=0.5)
    res = run_bench(cfg)
    (local,) = res["backends"]
    assert "error" not in local, local.get("error")
    assert [r["batch"] for r in local["rows"]] == [1, 4, 16]
    assert [r["unique"] for r in local["rows"]] == [1, 2, 8]
    for r in local["rows"]:
        lat = r["latencies_ms"]
        assert r["runs"] == len(lat) == 3
        assert r["p50_ms"] == pytest.approx(np.percentile(lat, 50), rel=1e-3)
        assert r["p95_ms"] == pytest.approx(np.percentile(lat, 95), rel=1e-3)
        assert r["qps"] == pytest.approx(r["batch"] * 3 / (sum(lat) / 1000), rel=1e-3)
        assert 0.0 < r["engine_frac"] <= 1.0
    assert local["client_peak_rss_bytes"] >= local["client_rss_bytes"] > 0
    assert res["info"]["n_docs"] == 8
    paths = write_outputs(res, tmp_path / "out")
    assert json.loads(paths["json"].read_text())["backends"][0]["rows"][2]["batch"] == 16
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = paths["md"].read_text()
    assert md.count("\n| local |") == 3 and md == format_table(res) + "\n"


def test_queries_are_drawn_from_the_corpus_when_not_given(toy_corpus):
    res = run_bench(BenchConfig(corpus=str(toy_corpus), backends=["local"], batch_sizes=[2], repeats=1,
                                measure_startup=False))
    assert res["query_pool"] >= 2 + 16 and "rows" in res["backends"][0]


@pytest.mark.integration
def test_startup_probe_and_http_backend(toy_corpus, tmp_path, capsys):
    """Starts a child process (start-up probe) and a real `medret serve`; http answers the same number of rows."""
    rc = main(["bench", "--corpus", str(toy_corpus), "--retriever", "BM25", "--backends", "local,http,ray",
               "--batch-sizes", "1,3", "--repeats", "2", "--out", str(tmp_path / "b")])
    out = json.loads((tmp_path / "b" / "bench.json").read_text())
    by = {b["backend"]: b for b in out["backends"]}
    assert rc == 0, by
    for name in ("local", "http"):  # both run on every machine that installed medret[all]
        assert "skipped" not in by[name] and "error" not in by[name], by[name]
    assert by["local"]["startup_s"] > 0 and by["local"]["startup_peak_rss_bytes"] > 0
    assert by["http"]["startup_s"] > 0 and by["http"]["server_peak_rss_bytes"] > 0
    assert [r["batch"] for r in by["http"]["rows"]] == [1, 3]
    for r in by["http"]["rows"]:
        local_p50 = next(x["p50_ms"] for x in by["local"]["rows"] if x["batch"] == r["batch"])
        assert r["overhead_vs_local"] == pytest.approx(r["p50_ms"] / local_p50 - 1, rel=1e-6)
    assert "rows" in by["ray"] or "skipped" in by["ray"]
    assert "| http |" in capsys.readouterr().out
