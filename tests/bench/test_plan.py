"""`medret plan` arithmetic against hand-computed numbers."""
import json

import pytest

from medret.cli import main
from medret.errors import ConfigError
from medret.plan import ASSUMPTIONS, parse_size, plan

GiB = 2**30
MEDCORP = 23_898_701 + 301_202 + 125_847 + 29_913_202  # 54,238,952 snippets
OVERHEAD = int(1.5 * GiB) + 1 * GiB + (512 << 20)  # query encoder + CUDA context + search scratch, per GPU


def opt(p, prefix):
    return next(o for o in p["options"] if o["name"].startswith(prefix))


def test_parse_size_units():
    assert parse_size("80G", "gpu_mem") == 80 * GiB
    assert parse_size("80GiB", "gpu_mem") == 80 * GiB
    assert parse_size("80gi", "gpu_mem") == 80 * GiB
    assert parse_size("141GB", "gpu_mem") == 141 * 10**9
    assert parse_size("1.5T", "ram") == int(1.5 * 2**40)
    assert parse_size("512M", "ram") == 512 * 2**20
    assert parse_size("512MB", "ram") == 512 * 10**6
    assert parse_size("4096B", "ram") == 4096
    assert parse_size(4096, "ram") == 4096  # an int (the Python API) is bytes
    with pytest.raises(ConfigError, match="gpu_mem='lots'"):
        parse_size("lots", "gpu_mem")


@pytest.mark.parametrize("flag,value", [("--gpu-mem", "80"), ("--ram", "256"), ("--gpu-mem", "80.5")])
def test_a_size_without_a_unit_is_refused_naming_the_flag_and_the_fix(flag, value, capsys):
    """`--gpu-mem 80` was read as 80 bytes (issue 14): now refused, naming the flag and the two readings."""
    assert main(["plan", flag, value]) == 1
    err = capsys.readouterr().err
    assert f"({flag})='{value}' has no unit" in err
    assert f"write {value}G for {value} GiB" in err and f"{value}GB for {value}*10^9 bytes" in err


def test_an_unknown_retriever_is_pointed_at_the_dim_flag_which_exists(capsys):
    """plan's error suggested `dim=`, no CLI flag (issue 14): it now names --dim, and --dim works."""
    assert main(["plan", "--retriever", "/models/my-encoder"]) == 1
    assert "--dim N" in capsys.readouterr().err
    assert main(["plan", "--corpus", "Textbooks", "--retriever", "/models/my-encoder", "--dim", "384", "--json"]) == 0
    p = json.loads(capsys.readouterr().out)
    assert p["dim"] == 384
    assert opt(p, "flat fp16")["gpu_bytes_per_gpu"] - OVERHEAD == 125_847 * 384 * 2


@pytest.mark.parametrize("argv,named", [(["--pq-m", "7"], "(--pq-m)=7"), (["--pq-nbits", "17"], "(--pq-nbits)=17")])
def test_plan_errors_name_the_flags_a_user_can_give(argv, named, capsys):
    """Like dim= (above): plan's errors named pq_m= / pq_nbits=, which are no flags (issue 14); they name the flag."""
    assert main(["plan", "--retriever", "MedCPT", *argv]) == 1
    err = capsys.readouterr().err
    assert named in err and "is invalid" in err


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
    with pytest.raises(ConfigError, match=r"pq_m \(--pq-m\)=100"):
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


# ------------------------------------------------------------------------------------------- plan -> layout
FP16 = MEDCORP * 768 * 2  # 83,311,030,272 bytes of MedCPT vectors in fp16


def hand_shards(gpu_mem_bytes):
    """The fewest GPUs whose memory, less the per-GPU overhead, holds MedCorp's fp16 vectors (at least 2)."""
    usable = gpu_mem_bytes - OVERHEAD
    return max(2, -(-FP16 // usable))


@pytest.mark.parametrize("kw,best,layout,retriever_gpus,shards,train", [
    # 80 GiB: 77.6 GiB of vectors + 3 GiB > 80 GiB, so two shards (41.8 GiB each) on the node's last two GPUs
    (dict(gpu_mem="80G", gpus=8), "sharded flat fp16 over 2", "retriever-node", [6, 7], 2, (6, 1)),
    # two nodes: the shards get the last node, the trainer node keeps its 8 GPUs
    (dict(gpu_mem="80G", gpus=8, nodes=2), "sharded flat fp16 over 2", "retriever-node", [0, 1], 2, (8, 1)),
    # 141 GiB (H200): one GPU holds the fp16 index; the retriever on the last GPU
    (dict(gpu_mem="141G", gpus=8), "flat fp16 (GPU", "local", [7], 1, (7, 1)),
    (dict(gpu_mem="141G", gpus=4, nodes=3), "flat fp16 (GPU", "per-node", [3], 1, (3, 3)),
    # 40 GiB x 4: ceil(77.6 / 37) = 3 shards, one GPU left to train
    (dict(gpu_mem="40G", gpus=4), "sharded flat fp16 over 3", "retriever-node", [1, 2, 3], 3, (1, 1)),
    # 24 GiB x 2: 4 shards needed, 2 GPUs: nothing on GPU; HNSW (171.9 GiB RAM) fits 256 GiB, on CPU
    (dict(gpu_mem="24G", gpus=2), "HNSW32", "local", [], 1, (2, 1)),
    # ... and with 64 GiB of RAM only the IVF-PQ codes (8.8 GiB) fit
    (dict(gpu_mem="24G", gpus=2, ram="64G"), "IVF32768,PQ96x8", "local", [], 1, (2, 1)),
    # one GPU per node: the retriever may not take the only GPU that trains
    (dict(gpu_mem="141G", gpus=1), "HNSW32", "local", [], 1, (1, 1)),
])
def test_plan_picks_the_layout_a_hand_computation_gives(kw, best, layout, retriever_gpus, shards, train):
    p = plan("MedCorp", "MedCPT", **{"ram": "256G", **kw})
    gpu_b = parse_size(kw["gpu_mem"], "gpu_mem")
    flat16 = opt(p, "flat fp16")
    assert flat16["gpu_bytes_per_gpu"] == FP16 + OVERHEAD
    # flat fp16 on one GPU fits exactly when its bytes fit and a second GPU is left to train
    assert flat16["fits"] == (FP16 + OVERHEAD <= gpu_b and kw["gpus"] >= 2)
    g = hand_shards(gpu_b)
    sharded = opt(p, "sharded")
    assert sharded["gpus"] == g and sharded["gpu_bytes_per_gpu"] == -(-FP16 // g) + OVERHEAD
    room = kw["gpus"] - 1 if kw.get("nodes", 1) == 1 else kw["gpus"]
    assert sharded["fits"] == (g <= room)
    hnsw_ram = MEDCORP * (768 * 4 + int(2 * 32 * 4 * 1.03)) + 3 * GiB + 8 * MEDCORP
    assert opt(p, "HNSW32")["ram_bytes"] == hnsw_ram and opt(p, "HNSW32")["fits"] == (
        hnsw_ram <= parse_size(kw.get("ram", "256G"), "ram"))
    assert p["best"].startswith(best)
    chosen = opt(p, best)
    assert (chosen["layout"], chosen["retriever_gpus"], chosen["shards"]) == (layout, retriever_gpus, shards)
    assert (chosen["train_gpus_per_node"], chosen["train_nodes"]) == train


def test_no_gpu_means_no_training_job_but_an_index_command():
    p = plan("Textbooks", "MedCPT", None, "64G")
    assert p["best"].startswith("HNSW32") and p["commands"]["render"] is None
    assert "--device cpu --index-type hnsw" in p["commands"]["index_build"]


@pytest.mark.parametrize("recipe,world,expected", [("ppo", 6, "504"), ("ppo", 7, "504"), ("ppo", 8, None),
                                                   ("grpo", 6, "504"), ("grpo", 3, "510"), ("ppo", 4, None)])
def test_recipe_batches_fitted_to_the_training_gpus(recipe, world, expected):
    """512 prompts x n_agent rollouts must split evenly over the training GPUs, in whole mini-batches of
    256 // world prompts each (veRL): 504 = 6 x 84 = 7 x 72 (84 = 2 x 42, 72 = 2 x 36); 510 = 3 x 170 = 2 x 85 x 3."""
    p = plan("MedCorp", "MedCPT", "141G", "256G", gpus=world + 1, recipe=recipe)  # flat on one GPU, world train
    assert opt(p, "flat fp16")["train_gpus_per_node"] == world
    render = p["commands"]["render"]
    if expected:
        assert f"--override data.train_batch_size={expected}" in render
    else:
        assert "--override" not in render
    assert f"--recipe {recipe}" in render


def _bash(cmd, tmp_path, **env):
    import os
    import subprocess
    import sys

    environ = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
                   MEDRET_CACHE=str(tmp_path / "cache"), **env)
    return subprocess.run(["bash", "-c", cmd], cwd=tmp_path, env=environ, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("args,expect", [
    (["--corpus", "MedCorp", "--gpus", "8", "--gpu-mem", "80G", "--recipe", "ppo"],
     ["+retriever.ray_shards=2", "trainer.n_gpus_per_node=6", "data.train_batch_size=504",
      "+retriever.backend=ray", "algorithm.adv_estimator=gae"]),
    (["--corpus", "MedCorp", "--gpus", "8", "--nodes", "2", "--gpu-mem", "80G", "--recipe", "grpo"],
     ["+retriever.ray_shards=2", "trainer.n_gpus_per_node=8", "trainer.nnodes=1", "data.train_batch_size=512",
      "algorithm.adv_estimator=grpo"]),
    (["--corpus", "PubMed", "--gpus", "2", "--gpu-mem", "24G", "--ram", "128G"],
     ["+retriever.device=cpu", "trainer.n_gpus_per_node=2"]),
    (["--corpus", "sample", "--retriever", "BM25", "--gpus", "4", "--recipe", "ppo"],
     ["+retriever.backend=local", "+retriever.device=cpu", "trainer.n_gpus_per_node=4"]),
])
def test_printed_commands_run_with_the_real_cli(args, expect, tmp_path, capsys):
    """What `medret plan` prints is run as printed: render, `slurm check`, the script's dry run; the index build is
    parsed by medret's own parser, and run where it applies (BM25 on the shipped sample corpus)."""
    import shlex

    from medret.cli import build_parser

    assert main(["plan", *args, "--json"]) == 0
    c = json.loads(capsys.readouterr().out)["commands"]
    for name in ("index_build", "render", "check"):
        words = shlex.split(c[name].replace('"$DB"', "/data/medrag"))
        assert words[0] == "medret"
        parsed = build_parser().parse_args(words[1:])  # argparse exits on anything it does not know
        assert callable(parsed.func)
    r = _bash(c["render"], tmp_path, DB="/data/medrag")
    assert r.returncode == 0, r.stderr
    r = _bash(c["check"], tmp_path)
    assert r.returncode == 0 and "job.sbatch: OK" in r.stdout, r.stdout + r.stderr
    r = _bash(c["dry_run"], tmp_path)
    assert r.returncode == 0, r.stderr
    for word in expect:
        assert word in r.stdout, (word, r.stdout[-3000:])
    if "sample" in args:
        r = _bash(c["index_build"], tmp_path)
        assert r.returncode == 0, r.stderr
        assert "BM25 index:" in r.stdout and [p.name for p in (tmp_path / "cache").glob("sample-*/bm25")] == ["bm25"]


@pytest.mark.parametrize("ram,alt_prefix", [("256G", "HNSW32"), ("128G", "IVF")])
def test_idle_gpus_are_counted_and_the_best_layout_without_them_is_shown(ram, alt_prefix, tmp_path, capsys):
    """Issue 24 item 7: 2 nodes x 8 GPUs (grpo) shards MedCorp's fp16 index over 2 GPUs of a dedicated retriever
    node, whose other 6 GPUs neither train (veRL wants the same count on every trainer node) nor search. By hand:
    16 GPUs - 8 training - 2 retriever = 6 idle. The alternative is the first fitting option (preference order) that
    trains on every GPU: a CPU index per node, 16 training GPUs; HNSW needs ~172 GiB RAM, so with 128 GiB IVF-PQ."""
    p = plan("MedCorp", "MedCPT", "80G", ram, 8, nodes=2, recipe="grpo")
    assert p["best"].startswith("sharded flat fp16 over 2") and p["idle_gpus"] == 6
    alt = p["alternative"]
    assert alt["name"].startswith(alt_prefix) and alt["layout"] == "per-node" and alt["train_gpus"] == 16
    by_name = {o["name"]: o for o in p["options"]}
    best, other = by_name[p["best"]], by_name[alt["name"]]
    assert f"recall {other['recall']} instead of {best['recall']}" in alt["cost"]
    assert any("RAM per node" in c for c in alt["cost"])
    assert "--layout per-node" in alt["commands"]["render"] and "--retriever-gpus none" in alt["commands"]["render"]

    assert main(["plan", "--corpus", "MedCorp", "--gpus", "8", "--nodes", "2", "--gpu-mem", "80G", "--ram", ram,
                 "--recipe", "grpo"]) == 0
    text = capsys.readouterr().out
    assert "6 of the job's 16 GPUs stay idle" in text
    assert f"alternative without idle GPUs: {alt['name']}, layout per-node, 16 training GPUs; cost: recall" in text
    # the alternative's commands are real: its job renders and passes `slurm check`
    r = _bash(alt["commands"]["render"], tmp_path, DB="/data/medrag")
    assert r.returncode == 0, r.stderr
    r = _bash("medret slurm check job.sbatch", tmp_path)
    assert r.returncode == 0 and "job.sbatch: OK" in r.stdout, r.stdout + r.stderr


@pytest.mark.parametrize("kw", [dict(gpus=8, nodes=1), dict(gpus=8, nodes=2, gpu_mem="141G")])
def test_no_idle_gpus_no_alternative(kw, capsys):
    """One node (retriever on its last GPUs, the rest train) or an index on one GPU per node: nothing idle."""
    gpu_mem = kw.pop("gpu_mem", "80G")
    p = plan("MedCorp", "MedCPT", gpu_mem, "256G", recipe="grpo", **kw)
    assert p["idle_gpus"] == 0 and p["alternative"] is None, (p["best"], p["idle_gpus"])
