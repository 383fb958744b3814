"""`medret plan`: what each index option needs (GPU memory, RAM, disk, build time), which fit a cluster's nodes,
and, for the best one, the `medret index build` and `medret slurm render` commands that set it up.

Every number is arithmetic on the corpus size (MedRAG's snippet counts, :data:`medret.corpus.registry.KNOWN_ROWS`)
and the constants in :data:`ASSUMPTIONS`; nothing is measured. Sizes are bytes; in flags "G" / "GiB" is 2**30,
"GB" is 10**9, and a number without a unit is refused.

The machine is ``nodes`` nodes of ``gpus`` GPUs with ``gpu_mem`` each and ``ram`` of host memory, for a training
job: every option leaves GPUs to train on. The layout that realises an option (medret.launch.slurm):

* one GPU holds the index: ``local`` (one node; the retriever on the last GPU) or ``per-node`` (a server on the
  last GPU of every node);
* the index sharded over ``g`` GPUs: ``retriever-node`` with ``shards=g`` — on one node its last ``g`` GPUs, on
  several the last node (the trainer nodes keep all their GPUs);
* CPU indexes (HNSW, IVF-PQ, BM25): the retriever on CPU, ``--retriever-gpus none`` (``local``, or ``per-node``
  on several nodes); every GPU trains.

The best option is the first that fits in :data:`PREFERENCE` order: exact before approximate, GPU before CPU.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import shlex
from dataclasses import asdict, dataclass, field
from typing import Any

from medret.config import EngineOptions
from medret.corpus.registry import DISPLAY, KNOWN_ROWS, SAMPLE_DIR, SOURCES
from medret.encoders.specs import MAX_RERANK_DEPTH, REGISTRY, known_names
from medret.errors import ConfigError
from medret.launch import recipes
from medret.options import add_flags
from medret.validate import check_whole

GiB = 1 << 30

# Model dimensions of the named dense retrievers (all BERT-base sized).

ASSUMPTIONS: dict[str, Any] = {
    # MedCPT document encoding on one H200 at 256 tokens (measured by the author, fp16).
    "encode_snippets_per_s_per_gpu": 8_900,
    # query encoder (fp16 BERT-base, 110M params) + activations for 2,560 queries of 64 tokens
    "gpu_model_bytes": int(1.5 * GiB),
    # CUDA context, cuBLAS workspace and the caching allocator's slack: never plan a GPU to its last GiB
    "gpu_context_bytes": 1 * GiB,
    # bounded temporary memory of the exact search (medret.index.gpu_topk, max_temp_bytes)
    "gpu_search_temp_bytes": 512 << 20,
    # per-process RAM of the Python retriever beyond the index (interpreter, torch, tokenizer)
    "process_ram_bytes": 3 * GiB,
    # faiss HNSW32 graph: level-0 links 2·M int32 per vector, upper levels ~3 % more
    "hnsw_m": 32,
    "hnsw_link_bytes_per_vector": int(2 * 32 * 4 * 1.03),
    # HNSW insertion rate on CPU (efConstruction 200, 768-d), per core — a rough estimate
    "hnsw_add_per_s_per_core": 1_000,
    "cpu_cores": 32,
    # faiss IVF-PQ adds (medret builds it with faiss on CPU), vectors/s — a rough estimate
    "ivfpq_add_per_s": 50_000,
    # BM25 (bm25s): non-zeros per snippet (distinct stemmed non-stop-word terms), 8 bytes each (float32 + int32)
    "bm25_terms_per_snippet": {"pubmed": 110, "wikipedia": 75, "textbooks": 85, "statpearls": 80, "sample": 40},
    "bm25_bytes_per_nnz": 8,
    "bm25_tokenize_per_s": 25_000,
    # document store: JSON bytes per snippet (id, title, content), + 8-byte offset
    "store_bytes_per_snippet": {"pubmed": 1_300, "wikipedia": 700, "textbooks": 950, "statpearls": 900,
                                "sample": 600},
    "store_build_per_s": 150_000,
    # the rerank stage's cross-encoder (BERT-base, MedCPT-Cross-Encoder): fp16 weights + activations of a batch of
    # 256 pairs of 512 tokens on a GPU; fp32 weights + activations on a CPU
    "cross_encoder_gpu_bytes": 2 * GiB,
    "cross_encoder_ram_bytes": 2 * GiB,
    # pairs of ~300 tokens scored per second, from the FLOPs of a BERT-base pair (2 x 85M x 300 = ~50 GFLOP): one
    # H100/H200 in fp16 at ~20 % of its dense peak; one server CPU core at ~50 GFLOP/s. Rough estimates; measured
    # on a 2-core VM: 0.23-0.34 CPU-seconds per pair of ~77 tokens (~13 GFLOP), i.e. ~40-55 GFLOP/s per core
    # (benchmarks/RESULTS.md, "Rerank stage")
    "cross_encoder_pairs_per_s_gpu": 2_000,
    "cross_encoder_pairs_per_s_per_core": 1.0,
}


# Which option the commands are printed for: the first that fits, in this order (prefixes of Option.name).
PREFERENCE = ("flat fp16 (GPU", "sharded flat fp16", "flat fp32 (GPU", "HNSW", "IVF", "flat fp32 (CPU", "BM25")


@dataclass
class Option:
    name: str
    where: str  # "gpu" or "cpu"
    gpu_bytes_per_gpu: int
    gpus: int
    ram_bytes: int
    disk_bytes: int
    build_s: float
    recall: str
    fits: bool = False
    why: str = ""
    notes: list[str] = field(default_factory=list)
    # the job layout that realises it (medret slurm render), when it fits the nodes
    layout: str | None = None
    retriever_gpus: list[int] = field(default_factory=list)
    shards: int = 1
    train_gpus_per_node: int = 0
    train_nodes: int = 0


_SIZE = re.compile(r"\s*([0-9]*\.?[0-9]+)\s*([KMGTP]?)(I?)(B?)\s*", re.I)


def parse_size(text: str | int | None, name: str) -> int | None:
    """'80G' / '80GiB' / '80Gi' -> 80 * 2**30; '80GB' -> 80 * 10**9; '512M', '1.5T', '4096B'. A number without a
    unit is refused (80 what?); an int is a number of bytes. ``name`` is how the message names the setting."""
    if text is None or (isinstance(text, int) and not isinstance(text, bool)):
        return text
    m = _SIZE.fullmatch(str(text))
    if not m:
        raise ConfigError(f"{name}={text!r} is invalid: give a size with a unit, e.g. 80G (GiB), 80GB (10^9 bytes), "
                          "512M or 1.5T")
    num, unit, i, b = float(m.group(1)), m.group(2).upper(), m.group(3), m.group(4)
    if not unit and not b:
        v = m.group(1)
        raise ConfigError(f"{name}={text!r} has no unit: write {v}G for {v} GiB (2^30 bytes), {v}GB for {v}*10^9 "
                          f"bytes, or {v}B if you mean bytes")
    if not unit and i:
        raise ConfigError(f"{name}={text!r} is invalid: give a size with a unit, e.g. 80G (GiB) or 80GB (10^9 bytes)")
    power = "KMGTP".index(unit) + 1 if unit else 0
    base = 1000 if b and not i and unit else 1024
    return int(num * base ** power)


def corpus_rows(corpus: str) -> dict[str, int]:
    key = corpus.strip().lower()
    if key == "sample":  # the shipped sample: count its snippets
        return {"sample": sum(1 for f in sorted((SAMPLE_DIR / "chunk").glob("*.jsonl"))
                              for line in f.read_text(encoding="utf-8").splitlines() if line.strip())}
    if key not in SOURCES:
        raise ConfigError(f"corpus={corpus!r} is unknown to the planner: use one of "
                          f"{', '.join(DISPLAY[k] for k in SOURCES)} or sample")
    return {s: KNOWN_ROWS[s] for s in SOURCES[key]}


def plan(corpus: str = "MedCorp", retriever: str = "MedCPT", gpu_mem: int | str | None = "80G",
         ram: int | str | None = "256G", gpus: int = 8, pq_m: int = 96, pq_nbits: int = 8,
         dim: int | None = None, nodes: int = 1, recipe: str = "none", db_dir: str | None = None,
         reranker: str | None = None, rerank_depth: int = 10, queries_per_batch: int = 512) -> dict[str, Any]:
    """Requirements of every index option for ``corpus`` and ``retriever``, which fit ``nodes`` nodes of ``gpus``
    GPUs (``gpu_mem`` each, ``None``: no GPU) and ``ram``, the best one, and the commands that set it up. With a
    ``reranker``, its cross-encoder's memory is added where the retriever runs (the GPU of GPU options, the RAM of
    CPU ones) and its time for a batch of ``queries_per_batch`` queries x ``rerank_depth`` candidates is given."""
    rows = corpus_rows(corpus)
    n = sum(rows.values())
    gpu_b = parse_size(gpu_mem, "gpu_mem (--gpu-mem)")
    ram_b = parse_size(ram, "ram (--ram)")
    check_whole.at_least(0)("gpus (--gpus)", gpus, "GPUs per node")
    check_whole("nodes (--nodes)", nodes)
    if gpu_b is None:
        gpus = 0
    r = retriever.strip().lower()
    dense = r != "bm25"
    if dim is None:
        spec = REGISTRY.get(r)  # a named dense retriever's dimension is its spec's
        if dense and (spec is None or spec.dim is None):
            raise ConfigError(f"retriever={retriever!r} is unknown to the planner: use BM25, "
                              f"{', '.join(known_names())}, or give the embedding "
                              "dimension of your model with --dim N (dim=N in Python), e.g. --dim 768")
        dim = spec.dim if spec is not None and spec.dim else 768
    check_whole("dim (--dim)", dim, "the embedding dimension, such as 768")
    if dim % pq_m:
        raise ConfigError(f"pq_m (--pq-m)={pq_m} is invalid: it must divide the dimension {dim} (e.g. 96, 48, 192)")
    check_whole.at_most(16)("pq_nbits (--pq-nbits)", pq_nbits, "bits per sub-quantizer (8 is usual)")
    recipes.recipe_keys(recipe)  # refuses an unknown recipe
    a = ASSUMPTIONS
    model = a["gpu_model_bytes"] + a["gpu_context_bytes"]
    temp = a["gpu_search_temp_bytes"]
    proc = a["process_ram_bytes"]
    store_disk = sum(rows[s] * (a["store_bytes_per_snippet"][s] + 8) for s in rows)
    store_ram = 8 * n  # offsets, if every page of them is touched; the texts stay on disk (read by row)
    encode_gpus = 1  # `medret index build` encodes on one device
    encode_s = n / a["encode_snippets_per_s_per_gpu"]
    opts: list[Option] = []
    nlist = 0
    if dense:
        fp32, fp16 = n * dim * 4, n * dim * 2
        opts.append(Option("flat fp32 (GPU, exact)", "gpu", fp32 + model + temp, 1, proc + store_ram, fp32 + store_disk,
                           encode_s / encode_gpus, "exact"))
        opts.append(Option("flat fp16 (GPU, exact)", "gpu", fp16 + model + temp, 1, proc + store_ram, fp16 + store_disk,
                           encode_s / encode_gpus, "≥0.99 vs fp32"))
        if gpu_b:
            usable = gpu_b - model - temp
            g = max(2, math.ceil(fp16 / usable)) if usable > 0 else 0
        else:
            g = 2
        if g:
            opts.append(Option(f"sharded flat fp16 over {g} GPU(s)", "gpu", math.ceil(fp16 / g) + model + temp, g,
                               proc + store_ram, fp16 + store_disk, encode_s / encode_gpus,
                               "≥0.99 vs fp32", notes=[f"{g} GPU(s) of {_fmt(gpu_b)} each" if gpu_b else ""]))
        opts.append(Option("flat fp32 (CPU, faiss IndexFlatIP in RAM)", "cpu", 0, 0, proc + store_ram + fp32,
                           fp32 + store_disk, encode_s / encode_gpus, "exact"))
        hnsw = n * (dim * 4 + a["hnsw_link_bytes_per_vector"])
        hnsw_s = encode_s / encode_gpus + n / (a["hnsw_add_per_s_per_core"] * a["cpu_cores"])
        opts.append(Option(f"HNSW{a['hnsw_m']},Flat (CPU, faiss)", "cpu", 0, 0, proc + store_ram + hnsw,
                           hnsw + store_disk, hnsw_s, "approximate (≈0.95-0.99 at efSearch 128)"))
        code = math.ceil(pq_m * pq_nbits / 8)
        nlist = 2 ** max(0, round(math.log2(max(1.0, 4 * math.sqrt(n)))))
        ivf = n * (code + 8) + nlist * dim * 4 + (2 ** pq_nbits) * dim * 4
        ivf_s = encode_s / encode_gpus + n / a["ivfpq_add_per_s"]
        # the fp16 vectors stay on disk (memory-mapped): the exact re-scoring reads k x refine_factor rows of them
        # per query
        opts.append(Option(f"IVF{nlist},PQ{pq_m}x{pq_nbits} (CPU, re-ranked)", "cpu", 0, 0, proc + store_ram + ivf,
                           ivf + fp16 + store_disk, ivf_s, "approximate; candidates re-scored exactly (fp16)"))
    else:
        nnz = sum(rows[s] * a["bm25_terms_per_snippet"][s] for s in rows)
        bm = nnz * a["bm25_bytes_per_nnz"] + 8 * (n + 1)
        opts.append(Option("BM25 (bm25s sparse, memory-mapped)", "cpu", 0, 0, proc + store_ram + bm, bm + store_disk,
                           n / a["bm25_tokenize_per_s"], "exact BM25"))
    opts.append(Option("document store (on disk, read by row)", "cpu", 0, 0, store_ram, store_disk,
                       n / a["store_build_per_s"], "-", notes=["needed by every option; included in their RAM/disk"]))
    rerank = _rerank_need(reranker, rerank_depth, queries_per_batch, a)
    for o in opts:
        if rerank is not None and not o.name.startswith("document store"):
            if o.where == "gpu":
                o.gpu_bytes_per_gpu += rerank["gpu_bytes"]
                o.notes.append(f"+ cross-encoder {_fmt(rerank['gpu_bytes'])} on the retriever GPU, "
                               f"{rerank['gpu_s_per_batch']:.2f} s per batch of {queries_per_batch} queries")
            else:
                o.ram_bytes += rerank["ram_bytes"]
                o.notes.append(f"+ cross-encoder {_fmt(rerank['ram_bytes'])} RAM, "
                               f"{rerank['cpu_s_per_batch']:.0f} s per batch of {queries_per_batch} queries on CPU")
        o.notes = [x for x in o.notes if x]
        why = []
        if o.where == "gpu":
            if gpu_b is None:
                why.append("no GPU")
            elif o.gpu_bytes_per_gpu > gpu_b:
                why.append(f"GPU memory {_fmt(o.gpu_bytes_per_gpu)} > {_fmt(gpu_b)}")
            else:
                why += _place_on_gpus(o, gpus, nodes)
        elif not o.name.startswith("document store"):
            _place_on_cpu(o, gpus, nodes)
        if ram_b is not None and o.ram_bytes > ram_b:
            why.append(f"RAM {_fmt(o.ram_bytes)} > {_fmt(ram_b)}")
        o.fits = not why
        o.why = "; ".join(why)
    out = {"corpus": DISPLAY.get(corpus.strip().lower(), corpus), "retriever": retriever, "rows": rows,
           "n": n, "dim": dim if dense else None, "gpu_mem": gpu_b, "ram": ram_b, "gpus": gpus, "nodes": nodes,
           "recipe": recipe, "options": [asdict(o) for o in opts], "assumptions": a, "reranker": rerank}
    ranked = [o for prefix in PREFERENCE for o in opts if o.name.startswith(prefix) and o.fits]
    best = ranked[0] if ranked else None
    out["best"] = best.name if best else None
    out["commands"] = _commands(out, best, db_dir, pq_m, pq_nbits, nlist) if best else None
    out["idle_gpus"] = idle_gpus(best, gpus, nodes) if best else 0
    out["alternative"] = None
    if best is not None and out["idle_gpus"]:
        # the first option in preference order that trains on more GPUs (none idle): what the idle GPUs would buy
        alt = next((o for o in ranked[1:] if o.layout and idle_gpus(o, gpus, nodes) == 0
                    and _world(o) > _world(best)), None)
        if alt is not None:
            out["alternative"] = {"name": alt.name, "layout": alt.layout, "train_gpus": _world(alt),
                                  "cost": _cost(alt, best),
                                  "commands": _commands(out, alt, db_dir, pq_m, pq_nbits, nlist)}
    return out


def _world(o: Option) -> int:
    return o.train_gpus_per_node * o.train_nodes


def idle_gpus(o: Option, gpus: int, nodes: int) -> int:
    """GPUs of the job that neither train nor hold the index (the retriever node's rest, on several nodes)."""
    if o.layout is None:
        return 0
    used = _world(o) + len(o.retriever_gpus) * (1 if o.layout == "retriever-node" else nodes)
    return max(0, gpus * nodes - used)


def _cost(alt: Option, best: Option) -> list[str]:
    """What ``alt`` gives up against ``best``, in the plan's own numbers."""
    cost = []
    if alt.recall != best.recall:
        cost.append(f"recall {alt.recall} instead of {best.recall}")
    if alt.where == "cpu" and best.where == "gpu":
        cost.append("the index is searched (and queries encoded) on CPU, beside the trainer on every node")
    if alt.ram_bytes > best.ram_bytes:
        cost.append(f"{_fmt(alt.ram_bytes)} RAM per node instead of {_fmt(best.ram_bytes)}")
    if alt.build_s > best.build_s:
        cost.append(f"build {_hours(alt.build_s)} instead of {_hours(best.build_s)}")
    return cost


def _rerank_need(reranker: str | None, depth: int, queries: int, a: dict[str, Any]) -> dict[str, Any] | None:
    """The rerank stage's memory and its seconds per batch of ``queries`` x ``depth`` pairs, or None without one."""
    if reranker is None:
        return None
    check_whole.at_most(MAX_RERANK_DEPTH)("rerank_depth (--rerank-depth)", depth)
    check_whole("queries_per_batch (--queries-per-batch)", queries)
    pairs = queries * depth
    return {"reranker": reranker, "rerank_depth": depth, "queries_per_batch": queries, "pairs_per_batch": pairs,
            "gpu_bytes": a["cross_encoder_gpu_bytes"], "ram_bytes": a["cross_encoder_ram_bytes"],
            "gpu_s_per_batch": pairs / a["cross_encoder_pairs_per_s_gpu"],
            "cpu_s_per_batch": pairs / (a["cross_encoder_pairs_per_s_per_core"] * a["cpu_cores"])}


def _place_on_gpus(o: Option, gpus: int, nodes: int) -> list[str]:
    """The layout for an option whose index takes ``o.gpus`` GPUs, leaving GPUs to train; why not, if none."""
    g = o.gpus
    if g == 1:
        if gpus < 2:
            return [f"a node of {gpus} GPU(s) has none left to train on beside the retriever's"]
        o.layout = "local" if nodes == 1 else "per-node"
        o.retriever_gpus, o.train_gpus_per_node, o.train_nodes = [gpus - 1], gpus - 1, nodes
        return []
    if nodes == 1:
        if g > gpus - 1:
            return [f"needs {g} GPUs for the retriever and one to train on; the node has {gpus}"]
        o.layout, o.retriever_gpus, o.shards = "retriever-node", list(range(gpus - g, gpus)), g
        o.train_gpus_per_node, o.train_nodes = gpus - g, 1
        return []
    if g > gpus:
        return [f"needs {g} GPUs on the retriever node; a node has {gpus}"]
    o.layout, o.retriever_gpus, o.shards = "retriever-node", list(range(g)), g
    o.train_gpus_per_node, o.train_nodes = gpus, nodes - 1
    return []


def _place_on_cpu(o: Option, gpus: int, nodes: int) -> None:
    """CPU indexes: the retriever on CPU beside the trainer, every GPU trains (no layout without GPUs)."""
    if gpus >= 1:
        o.layout = "local" if nodes == 1 else "per-node"
        o.retriever_gpus, o.train_gpus_per_node, o.train_nodes = [], gpus, nodes


def _commands(p: dict[str, Any], best: Option, db_dir: str | None, pq_m: int, pq_nbits: int,
              nlist: int) -> dict[str, Any]:
    """The shell commands that build ``best``'s index and render, check and dry-run its training job."""
    corpus, retriever = p["corpus"], p["retriever"]
    sample = corpus == "sample"
    db = [] if sample else ["--db-dir", shlex.quote(db_dir) if db_dir else '"$DB"']
    notes: list[str] = []
    if not sample and not db_dir:
        notes.append("DB is the folder of MedRAG's corpora (medret corpus download NAME --db-dir \"$DB\")")
    build = ["medret", "index", "build", "--corpus", shlex.quote(corpus), "--retriever", shlex.quote(retriever), *db]
    if p["dim"] is not None:
        build += ["--device", "cuda" if p["gpu_mem"] else "cpu"]
        if best.name.startswith("HNSW"):
            build += ["--index-type", "hnsw"]
        elif best.name.startswith("IVF"):
            build += ["--index-type", f"IVF{nlist},PQ{pq_m}x{pq_nbits}np"]
        else:
            build += ["--index-type", "flat"]
        if "fp32" in best.name:
            build.append("--fp32")
        if retriever.strip().lower() == "medcpt" and best.name.startswith(("flat", "sharded")):
            published = [s for s in p["rows"] if s in ("pubmed", "textbooks", "wikipedia")]
            if published:
                rest = [DISPLAY[s] for s in p["rows"] if s not in published]
                notes.append("MedRAG publishes MedCPT embeddings for " + ", ".join(DISPLAY[s] for s in published)
                             + ": with them in place (medret corpus download ... --embeddings MedCPT) the flat index "
                             "of those needs no encoding pass; "
                             + (f"build only {', '.join(rest)} with this command's --corpus {rest[0]}"
                                if rest else "skip this build") + " (the document stores are built on first use)")
    out: dict[str, Any] = {"index_build": " ".join(build), "render": None, "check": None, "dry_run": None,
                           "notes": notes}
    if best.layout is None:
        notes.append("no training job: the machine has no GPU to train on (--gpu-mem)")
        return out
    render = ["medret", "slurm", "render", "--layout", best.layout, "--nodes", str(p["nodes"]),
              "--gpus-per-node", str(p["gpus"]),
              "--retriever-gpus", ",".join(map(str, best.retriever_gpus)) or "none"]
    if best.shards > 1:
        render += ["--shards", str(best.shards)]
    render += ["--corpus", shlex.quote(corpus), "--retriever", shlex.quote(retriever), *db]
    world = best.train_gpus_per_node * best.train_nodes
    if p["recipe"] != "none":
        render += ["--recipe", p["recipe"]]
        values = {recipes.bare_key(k): v for k, v in recipes.recipe_keys(p["recipe"])}
        changes: dict[str, str] = {}
        errors, uneven = recipes.batch_problems(values, world)
        if errors or uneven:
            fit = recipes.fit_train_batch(values, world)
            if fit is not None and str(fit) != values[recipes.TRAIN_BATCH]:
                changes[recipes.TRAIN_BATCH] = str(fit)
        for key in recipes.PER_GPU_KEYS:
            if key in values and int(values[key]) < world:
                changes[key] = str(world)
        for key, value in changes.items():
            render += ["--override", f"{key}={value}"]
        if changes:
            notes.append(f"Search-R1's {p['recipe']} recipe on {world} training GPUs: "
                         + ", ".join(f"{k}={v} (recipe: {values[k]})" for k, v in changes.items())
                         + ", so that its batches split evenly over the GPUs (veRL)")
    render += ["-o", "job.sbatch"]
    notes.append(f"training GPUs: {best.train_gpus_per_node} per node on {best.train_nodes} node(s) ({world}); "
                 "add --model, --data-dir (or set MODEL, DATA_DIR when submitting), --partition, --time ...")
    out.update(render=" ".join(render), check="medret slurm check job.sbatch", dry_run="bash job.sbatch --dry-run")
    return out


def _fmt(b: int | None) -> str:
    if b is None:
        return "-"
    if b >= GiB:
        return f"{b / GiB:,.1f} GiB"
    return f"{b / (1 << 20):,.0f} MiB"


def _hours(s: float) -> str:
    return f"{s / 3600:.2f} h" if s >= 3600 else (f"{s / 60:.1f} min" if s >= 60 else f"{s:.0f} s")


def format_plan(p: dict[str, Any]) -> str:
    lines = [f"corpus {p['corpus']}: {p['n']:,} snippets ("
             + ", ".join(f"{DISPLAY[s]} {v:,}" for s, v in p["rows"].items()) + f"); retriever {p['retriever']}"
             + (f", {p['dim']}-d" if p["dim"] else ""),
             f"machine: {p['nodes']} node(s) of {p['gpus']} GPU(s) x {_fmt(p['gpu_mem'])}, RAM {_fmt(p['ram'])} "
             "(each option leaves GPUs to train on)", ""]
    head = f"{'option':44} {'GPU mem/GPU':>12} {'GPUs':>4} {'RAM':>11} {'disk':>11} {'build (est.)':>13}  fits"
    lines += [head, "-" * len(head)]
    for o in p["options"]:
        gpu = _fmt(o["gpu_bytes_per_gpu"]) if o["where"] == "gpu" or o["gpu_bytes_per_gpu"] else "-"
        fit = "yes" if o["fits"] else f"no ({o['why']})"
        lines.append(f"{o['name'][:44]:44} {gpu:>12} {o['gpus'] or '-':>4} {_fmt(o['ram_bytes']):>11} "
                     f"{_fmt(o['disk_bytes']):>11} {_hours(o['build_s']):>13}  {fit}")
    c = p.get("commands")
    if c:
        lines += ["", f"best: {p['best']}" + (f" (recipe {p['recipe']})" if p["recipe"] != "none" else ""),
                  "  " + c["index_build"]]
        if c["render"]:
            lines += ["  " + c["render"], "  " + c["check"], "  " + c["dry_run"]]
        lines += [f"  # {note}" for note in c["notes"]]
        idle, alt = p.get("idle_gpus"), p.get("alternative")
        if idle:
            total = p["gpus"] * p["nodes"]
            lines.append(f"  # {idle} of the job's {total} GPUs stay idle with this layout (veRL needs the same GPU "
                         "count on every trainer node, so the retriever node trains on none)")
        if alt:
            ac = alt["commands"]
            lines += ["", f"alternative without idle GPUs: {alt['name']}, layout {alt['layout']}, "
                      f"{alt['train_gpus']} training GPUs; cost: " + "; ".join(alt["cost"] or ["none"]),
                      "  " + ac["index_build"], "  " + ac["render"]]
            lines += [f"  # {note}" for note in ac["notes"] if note not in c["notes"]]
    elif p.get("options"):
        lines += ["", "no option fits: see the reasons above (more GPUs, GPU memory or RAM)"]
    r = p.get("reranker")
    if r:
        lines += ["", f"rerank stage: {r['reranker']}, {r['pairs_per_batch']:,} pairs per batch "
                  f"({r['queries_per_batch']} queries x depth {r['rerank_depth']}): {r['gpu_s_per_batch']:.2f} s on a "
                  "GPU "
                  f"(+{_fmt(r['gpu_bytes'])} on the retriever GPU), {r['cpu_s_per_batch']:.0f} s on "
                  f"{p['assumptions']['cpu_cores']} CPU cores (+{_fmt(r['ram_bytes'])} RAM); included in the table"]
    a = p["assumptions"]
    lines += ["", "Estimates, not measurements. Build time = encoding on one GPU (`medret index build` uses one "
              f"device) at {a['encode_snippets_per_s_per_gpu']:,} snippets/s (MedCPT, 256 tokens, one H200) plus "
              "index construction; CPU options encode queries on the CPU (or need the encoder's GPU memory); GPU "
              f"memory includes the query encoder ({_fmt(a['gpu_model_bytes'])}), the CUDA context "
              f"({_fmt(a['gpu_context_bytes'])}) and search scratch ({_fmt(a['gpu_search_temp_bytes'])}); RAM "
              f"includes {_fmt(a['process_ram_bytes'])} for the process and the store offsets (texts stay on disk)."]
    return "\n".join(lines)


def register(sub) -> None:
    p = sub.add_parser("plan", help="memory, disk and build time of each index option, what fits your nodes, and "
                       "the index build and slurm render commands of the best one")
    add_flags(p, EngineOptions, only=("corpus_name", "retriever_name", "db_dir", "reranker", "rerank_depth"),
              show_defaults=False,
              title="what to plan for (default MedCorp and MedCPT; --db-dir is written into the commands, "
              "default $DB)")
    p.add_argument("--dim", type=int, default=None, help="embedding dimension, for a retriever the planner does not "
                   "know (e.g. a local model folder)")
    p.add_argument("--gpu-mem", default="80G", help="memory per GPU with a unit: 80G (GiB), 141GB (10^9 bytes); "
                   "'none' for no GPU")
    p.add_argument("--gpus", type=int, default=8, help="GPUs per node (default 8); the plan leaves GPUs to train on")
    p.add_argument("--nodes", type=int, default=1, help="nodes of the training job (default 1)")
    p.add_argument("--ram", default="256G", help="host RAM per node with a unit, e.g. 256G (GiB) or 512GB")
    p.add_argument("--pq-m", type=int, default=96, help="IVF-PQ sub-quantizers (must divide the dimension)")
    p.add_argument("--pq-nbits", type=int, default=8, help="IVF-PQ bits per sub-quantizer")
    p.add_argument("--recipe", choices=["none", "ppo", "grpo"], default="none",
                   help="the training recipe of the printed `slurm render` command (Search-R1's ppo / grpo; their "
                   "batch sizes are fitted to the training GPUs)")
    p.add_argument("--queries-per-batch", type=int, default=512, help="queries in one retrieval batch: the rerank "
                   "stage's time is given per batch (default 512)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(func=cmd_plan, corpus_name="MedCorp", retriever_name="MedCPT")


def cmd_plan(args: argparse.Namespace) -> int:
    gpu = None if str(args.gpu_mem).strip().lower() in ("none", "0") else args.gpu_mem
    p = plan(args.corpus_name, args.retriever_name, gpu, args.ram, args.gpus, args.pq_m, args.pq_nbits, dim=args.dim,
             nodes=args.nodes, recipe=args.recipe, db_dir=args.db_dir, reranker=args.reranker,
             rerank_depth=args.rerank_depth if args.rerank_depth is not None else 10,
             queries_per_batch=args.queries_per_batch)
    print(json.dumps(p, indent=2) if args.json else format_plan(p))
    return 0
