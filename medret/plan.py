"""`medret plan`: what each index option needs (GPU memory, RAM, disk, build time) and which fit a machine.

Every number is arithmetic on the corpus size (MedRAG's snippet counts, :data:`medret.corpus.registry.KNOWN_ROWS`)
and the constants in :data:`ASSUMPTIONS`; nothing is measured. Sizes are bytes; "G" in flags is GiB (2**30),
"GB" is 10**9.
"""
from __future__ import annotations

import argparse
import json
import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from medret.config import EngineOptions
from medret.corpus.registry import DISPLAY, KNOWN_ROWS, SOURCES
from medret.errors import ConfigError
from medret.options import add_flags

GiB = 1 << 30

# Model dimensions of the named dense retrievers (all BERT-base sized).
DIMS = {"medcpt": 768, "contriever": 768, "specter": 768, "e5": 768}

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
    "bm25_terms_per_snippet": {"pubmed": 110, "wikipedia": 75, "textbooks": 85, "statpearls": 80},
    "bm25_bytes_per_nnz": 8,
    "bm25_tokenize_per_s": 25_000,
    # document store: JSON bytes per snippet (id, title, content), + 8-byte offset
    "store_bytes_per_snippet": {"pubmed": 1_300, "wikipedia": 700, "textbooks": 950, "statpearls": 900},
    "store_build_per_s": 150_000,
}


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


def parse_size(text: str | int | None, name: str) -> int | None:
    """'80G' / '80GiB' → 80·2**30; '80GB' → 80·10**9; plain numbers are bytes."""
    if text is None or isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(I?B?)\s*", str(text).upper())
    if not m:
        raise ConfigError(f"{name}={text!r} is invalid: give a size such as 80G (GiB), 80GB (10^9 bytes) or 256G")
    num, unit, b = float(m.group(1)), m.group(2), m.group(3)
    power = "KMGT".index(unit) + 1 if unit else 0
    base = 1000 if b == "B" and unit else 1024
    return int(num * base ** power)


def corpus_rows(corpus: str) -> dict[str, int]:
    key = corpus.strip().lower()
    if key not in SOURCES:
        raise ConfigError(f"corpus={corpus!r} is unknown to the planner: use one of "
                          f"{', '.join(DISPLAY[k] for k in SOURCES)}")
    return {s: KNOWN_ROWS[s] for s in SOURCES[key]}


def plan(corpus: str = "MedCorp", retriever: str = "MedCPT", gpu_mem: int | str | None = "80G",
         ram: int | str | None = "256G", gpus: int = 1, pq_m: int = 96, pq_nbits: int = 8,
         dim: int | None = None) -> dict[str, Any]:
    """Requirements of every index option for ``corpus`` and ``retriever``, and which fit the machine."""
    rows = corpus_rows(corpus)
    n = sum(rows.values())
    gpu_b = parse_size(gpu_mem, "gpu_mem")
    ram_b = parse_size(ram, "ram")
    if not isinstance(gpus, int) or gpus < 1:
        raise ConfigError(f"gpus={gpus!r} is invalid: the number of GPUs, at least 1")
    r = retriever.strip().lower()
    dense = r != "bm25"
    if dim is None:
        if dense and r not in DIMS:
            raise ConfigError(f"retriever={retriever!r} is unknown to the planner: use BM25, "
                              f"{', '.join(['MedCPT', 'Contriever', 'SPECTER', 'e5'])} or pass dim=")
        dim = DIMS.get(r, 768)
    if dim % pq_m:
        raise ConfigError(f"pq_m={pq_m} is invalid: it must divide the dimension {dim} (e.g. 96, 48, 192)")
    if not 1 <= pq_nbits <= 16:
        raise ConfigError(f"pq_nbits={pq_nbits} is invalid: 4 to 16 bits per sub-quantizer (8 is usual)")
    a = ASSUMPTIONS
    model = a["gpu_model_bytes"] + a["gpu_context_bytes"]
    temp = a["gpu_search_temp_bytes"]
    proc = a["process_ram_bytes"]
    store_disk = sum(rows[s] * (a["store_bytes_per_snippet"][s] + 8) for s in rows)
    store_ram = 8 * n  # offsets, if every page of them is touched; the texts stay on disk (read by row)
    encode_s = n / a["encode_snippets_per_s_per_gpu"]
    opts: list[Option] = []
    if dense:
        fp32, fp16 = n * dim * 4, n * dim * 2
        opts.append(Option("flat fp32 (GPU, exact)", "gpu", fp32 + model + temp, 1, proc + store_ram, fp32 + store_disk,
                           encode_s / gpus, "exact"))
        opts.append(Option("flat fp16 (GPU, exact)", "gpu", fp16 + model + temp, 1, proc + store_ram, fp16 + store_disk,
                           encode_s / gpus, "≥0.99 vs fp32"))
        if gpu_b:
            usable = gpu_b - model - temp
            g = max(2, math.ceil(fp16 / usable)) if usable > 0 else 0
        else:
            g = max(2, gpus)
        if g:
            opts.append(Option(f"sharded flat fp16 over {g} GPU(s)", "gpu", math.ceil(fp16 / g) + model + temp, g,
                               proc + store_ram, fp16 + store_disk, encode_s / max(g, gpus),
                               "≥0.99 vs fp32", notes=[f"{g} GPU(s) of {_fmt(gpu_b)} each" if gpu_b else ""]))
        opts.append(Option("flat fp32 (CPU, faiss IndexFlatIP in RAM)", "cpu", 0, 0, proc + store_ram + fp32,
                           fp32 + store_disk, encode_s / gpus, "exact"))
        hnsw = n * (dim * 4 + a["hnsw_link_bytes_per_vector"])
        hnsw_s = encode_s / gpus + n / (a["hnsw_add_per_s_per_core"] * a["cpu_cores"])
        opts.append(Option(f"HNSW{a['hnsw_m']},Flat (CPU, faiss)", "cpu", 0, 0, proc + store_ram + hnsw,
                           hnsw + store_disk, hnsw_s, "approximate (≈0.95-0.99 at efSearch 128)"))
        code = math.ceil(pq_m * pq_nbits / 8)
        nlist = 2 ** max(0, round(math.log2(max(1.0, 4 * math.sqrt(n)))))
        ivf = n * (code + 8) + nlist * dim * 4 + (2 ** pq_nbits) * dim * 4
        ivf_s = encode_s / gpus + n / a["ivfpq_add_per_s"]
        # the fp16 vectors stay on disk (memory-mapped): the re-rank reads k x rerank rows of them per query
        opts.append(Option(f"IVF{nlist},PQ{pq_m}x{pq_nbits} (CPU, re-ranked)", "cpu", 0, 0, proc + store_ram + ivf,
                           ivf + fp16 + store_disk, ivf_s, "approximate; candidates re-scored exactly (fp16)"))
    else:
        nnz = sum(rows[s] * a["bm25_terms_per_snippet"][s] for s in rows)
        bm = nnz * a["bm25_bytes_per_nnz"] + 8 * (n + 1)
        opts.append(Option("BM25 (bm25s sparse, memory-mapped)", "cpu", 0, 0, proc + store_ram + bm, bm + store_disk,
                           n / a["bm25_tokenize_per_s"], "exact BM25"))
    opts.append(Option("document store (on disk, read by row)", "cpu", 0, 0, store_ram, store_disk,
                       n / a["store_build_per_s"], "-", notes=["needed by every option; included in their RAM/disk"]))
    for o in opts:
        o.notes = [x for x in o.notes if x]
        fit_gpu = True
        why = []
        if o.where == "gpu":
            if gpu_b is None:
                fit_gpu = False
                why.append("no GPU")
            elif o.gpus > gpus:
                fit_gpu = False
                why.append(f"needs {o.gpus} GPUs with {_fmt(o.gpu_bytes_per_gpu)} each")
            elif o.gpu_bytes_per_gpu > gpu_b:
                fit_gpu = False
                why.append(f"GPU memory {_fmt(o.gpu_bytes_per_gpu)} > {_fmt(gpu_b)}")
        fit_ram = ram_b is None or o.ram_bytes <= ram_b
        if not fit_ram:
            why.append(f"RAM {_fmt(o.ram_bytes)} > {_fmt(ram_b)}")
        o.fits = fit_gpu and fit_ram
        o.why = "; ".join(why)
    return {"corpus": DISPLAY.get(corpus.strip().lower(), corpus), "retriever": retriever, "rows": rows,
            "n": n, "dim": dim if dense else None, "gpu_mem": gpu_b, "ram": ram_b, "gpus": gpus,
            "options": [asdict(o) for o in opts], "assumptions": a}


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
             f"machine: {p['gpus']} GPU(s) x {_fmt(p['gpu_mem'])}, RAM {_fmt(p['ram'])}", ""]
    head = f"{'option':44} {'GPU mem/GPU':>12} {'GPUs':>4} {'RAM':>11} {'disk':>11} {'build (est.)':>13}  fits"
    lines += [head, "-" * len(head)]
    for o in p["options"]:
        gpu = _fmt(o["gpu_bytes_per_gpu"]) if o["where"] == "gpu" or o["gpu_bytes_per_gpu"] else "-"
        fit = "yes" if o["fits"] else f"no ({o['why']})"
        lines.append(f"{o['name'][:44]:44} {gpu:>12} {o['gpus'] or '-':>4} {_fmt(o['ram_bytes']):>11} "
                     f"{_fmt(o['disk_bytes']):>11} {_hours(o['build_s']):>13}  {fit}")
    a = p["assumptions"]
    lines += ["", "Estimates, not measurements. Build time = encoding at "
              f"{a['encode_snippets_per_s_per_gpu']:,} snippets/s per GPU (MedCPT, 256 tokens, one H200) plus index "
              "construction; CPU options encode queries on the CPU (or need the encoder's GPU memory); GPU memory "
              f"includes the query encoder ({_fmt(a['gpu_model_bytes'])}), the CUDA context "
              f"({_fmt(a['gpu_context_bytes'])}) and search scratch ({_fmt(a['gpu_search_temp_bytes'])}); RAM includes "
              f"{_fmt(a['process_ram_bytes'])} for the process and the store offsets (texts stay on disk)."]
    return "\n".join(lines)


def register(sub) -> None:
    p = sub.add_parser("plan", help="memory, disk and build time of each index option, and what fits a machine")
    add_flags(p, EngineOptions, only=("corpus_name", "retriever_name"), show_defaults=False,
              title="what to plan for (default MedCorp and MedCPT; MedRAG's named corpora, named retrievers)")
    p.add_argument("--gpu-mem", default="80G", help="memory per GPU, e.g. 80G (GiB) or 141GB; 'none' for no GPU")
    p.add_argument("--gpus", type=int, default=1, help="number of GPUs")
    p.add_argument("--ram", default="256G", help="host RAM, e.g. 256G")
    p.add_argument("--pq-m", type=int, default=96, help="IVF-PQ sub-quantizers (must divide the dimension)")
    p.add_argument("--pq-nbits", type=int, default=8, help="IVF-PQ bits per sub-quantizer")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_plan, corpus_name="MedCorp", retriever_name="MedCPT")


def cmd_plan(args: argparse.Namespace) -> int:
    gpu = None if str(args.gpu_mem).lower() in ("none", "0") else args.gpu_mem
    p = plan(args.corpus_name, args.retriever_name, gpu, args.ram, args.gpus, args.pq_m, args.pq_nbits)
    print(json.dumps(p, indent=2) if args.json else format_plan(p))
    return 0
