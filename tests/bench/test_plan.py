"""`medret plan` arithmetic against hand-computed numbers."""
import json

import pytest

from medret.cli import main
from medret.errors import ConfigError
from medret.plan import ASSUMPTIONS, parse_size, plan

GiB = 2**30
MEDCORP = 23_898_701 + 301_202 + 125_847 + 29_913_202  # 54,238,952 snippets


def opt(p, prefix):
    return next(o for o in p["options"] if o["name"].startswith(prefix))


def test_parse_size_units():
    assert parse_size("80G", "gpu_mem") == 80 * GiB
    assert parse_size("80GiB", "gpu_mem") == 80 * GiB
    assert parse_size("141GB", "gpu_mem") == 141 * 10**9
    assert parse_size("1.5T", "ram") == int(1.5 * 2**40)
    assert parse_size("4096", "ram") == 4096
    with pytest.raises(ConfigError, match="gpu_mem='lots'"):
        parse_size("lots", "gpu_mem")


def test_medcorp_medcpt_flat_sizes_and_build_time():
    p = plan("MedCorp", "MedCPT", "80G", "256G")
    assert p["n"] == MEDCORP == 54_238_952
    overhead = (ASSUMPTIONS["gpu_model_bytes"] + ASSUMPTIONS["gpu_context_bytes"]
                + ASSUMPTIONS["gpu_search_temp_bytes"])
    fp16 = opt(p, "flat fp16")
    assert fp16["gpu_bytes_per_gpu"] == 54_238_952 * 768 * 2 + overhead  # 83,311,030,272 B of vectors = 77.6 GiB
    assert 54_238_952 * 768 * 2 / GiB == pytest.approx(77.59, abs=0.01)
    fp32 = opt(p, "flat fp32 (GPU")
    assert fp32["gpu_bytes_per_gpu"] == 54_238_952 * 768 * 4 + overhead
    assert not fp32["fits"] and "GPU memory" in fp32["why"]
    # 54,238,952 / 8,900 snippets/s = 6,094.3 s = 1.69 GPU-hours
    assert fp16["build_s"] == pytest.approx(6094.27, abs=0.01)
    # 77.6 GiB of vectors + 3.0 GiB (encoder, CUDA context, scratch) > 80 GiB: one 80 GB GPU cannot hold it
    assert not fp16["fits"] and "GPU memory" in fp16["why"]
    assert opt(plan("MedCorp", "MedCPT", "141G", "256G"), "flat fp16")["fits"]  # one H200


def test_sharding_picks_the_fewest_gpus_that_hold_fp16():
    p = plan("MedCorp", "MedCPT", "40G", "256G", gpus=4)
    sh = opt(p, "sharded")
    usable = (40 * GiB - ASSUMPTIONS["gpu_model_bytes"] - ASSUMPTIONS["gpu_context_bytes"]
              - ASSUMPTIONS["gpu_search_temp_bytes"])
    g = -(-54_238_952 * 768 * 2 // usable)  # ceil: 77.6 GiB over 37 GiB usable = 3 GPUs
    assert g == 3 and sh["gpus"] == 3 and sh["fits"]
    assert sh["gpu_bytes_per_gpu"] == -(-54_238_952 * 768 * 2 // 3) + 40 * GiB - usable
    assert not opt(plan("MedCorp", "MedCPT", "40G", "256G", gpus=2), "sharded")["fits"]


def test_ivfpq_and_hnsw_bytes():
    n = 125_847  # Textbooks
    p = plan("Textbooks", "MedCPT", "80G", "64G", pq_m=48, pq_nbits=8)
    ivf = opt(p, "IVF1024,PQ48x8 (CPU")  # nlist = 2**round(log2(4*sqrt(n))) = 2**round(10.47) = 1024
    expected = n * (48 + 8) + 1024 * 768 * 4 + 256 * 768 * 4
    assert ivf["ram_bytes"] - ASSUMPTIONS["process_ram_bytes"] - 8 * n == expected
    # on disk the fp16 vectors stay beside the codes for the exact re-rank
    assert ivf["disk_bytes"] - opt(p, "document store")["disk_bytes"] == expected + n * 768 * 2
    hnsw = opt(p, "HNSW32")
    assert hnsw["ram_bytes"] - ASSUMPTIONS["process_ram_bytes"] - 8 * n == n * (768 * 4 + int(2 * 32 * 4 * 1.03))


def test_no_gpu_and_small_ram_do_not_fit():
    p = plan("MedCorp", "MedCPT", None, "64G")
    assert not opt(p, "flat fp16")["fits"] and opt(p, "flat fp16")["why"] == "no GPU"
    cpu_flat = opt(p, "flat fp32 (CPU")
    assert not cpu_flat["fits"] and "RAM" in cpu_flat["why"]
    assert opt(p, "IVF32768,PQ96x8 (CPU")["fits"]


def test_bm25_plan_uses_terms_per_snippet():
    p = plan("PubMed", "BM25", None, "256G")
    bm = opt(p, "BM25")
    assert bm["disk_bytes"] - opt(p, "document store")["disk_bytes"] == 23_898_701 * 110 * 8 + 8 * (23_898_701 + 1)
    assert bm["fits"]


def test_bad_arguments_name_the_field():
    with pytest.raises(ConfigError, match="corpus='Medline'"):
        plan("Medline")
    with pytest.raises(ConfigError, match="pq_m=100"):
        plan("MedCorp", "MedCPT", pq_m=100)
    with pytest.raises(ConfigError, match="retriever='BERT'"):
        plan("MedCorp", "BERT")


def test_cli_prints_json(capsys):
    assert main(["plan", "--corpus", "MedText", "--retriever", "MedCPT", "--gpu-mem", "24G", "--ram", "32G",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n"] == 301_202 + 125_847
    assert out["rows"] == {"textbooks": 125_847, "statpearls": 301_202}
    assert main(["plan", "--corpus", "MedCorp"]) == 0
    assert "fits" in capsys.readouterr().out
