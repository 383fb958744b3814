"""`medret bench`, `medret eval` and `medret plan`."""
from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

from medret.bench.harness import BenchConfig, format_table, require_bench_extra, run_bench, write_outputs
from medret.bench.synth import write_synthetic_corpus
from medret.config import EngineOptions
from medret.errors import ConfigError
from medret.eval import pubmedqa
from medret.eval.qrels import load_labelled, pubmedqa_set, write_beir_corpus
from medret.eval.runner import evaluate, format_results
from medret.fetch.env import default_cache_dir
from medret.options import add_flags, given
from medret.plan import register as register_plan
from medret.storage.atomic import atomic_write_text


def _ints(text: str) -> list[int]:
    try:
        vals = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of whole numbers, e.g. 1,8,64") from None
    if not vals or any(v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"{text!r}: give positive whole numbers, e.g. 1,8,64")
    return vals


def register(sub) -> None:
    p = sub.add_parser("bench", help="latency, throughput, start-up and memory of local / http / ray side by side")
    add_flags(p, EngineOptions)
    g = p.add_argument_group("benchmark")
    g.add_argument("--backends", default="local,http,ray", help="comma-separated: local, http, ray (default all; "
                   "those not installed are reported as skipped)")
    g.add_argument("--batch-sizes", type=_ints, default=[1, 8, 64, 512, 2560], help="default 1,8,64,512,2560")
    g.add_argument("--topk", type=int, default=5, help="passages per query (default 5)")
    g.add_argument("--dup-ratio", type=float, default=0.0,
                   help="fraction of repeated queries in a batch (GRPO groups of G sharing a query: 1-1/G)")
    g.add_argument("--repeats", type=int, default=5, help="timed runs per batch size (at most)")
    g.add_argument("--max-seconds", type=float, default=20.0, help="stop repeating a batch size after this long")
    g.add_argument("--queries", default=None, help="file of queries, one a line (default: word windows drawn from "
                   "the corpus; with --pubmedqa: its questions)")
    g.add_argument("--pubmedqa", default=None, metavar="PATH",
                   help="bench on PubMedQA's snippets (ori_pqal.json or its folder) with its questions as queries")
    g.add_argument("--synthetic", type=int, default=None, metavar="N",
                   help="bench on a synthetic MedRAG-layout corpus of N snippets (written under --work-dir)")
    g.add_argument("--work-dir", default=None, help="where generated corpora go (default: the medret cache)")
    g.add_argument("--no-startup", action="store_true", help="skip the child-process start-up measurement")
    g.add_argument("--out", default="bench-out", help="folder for bench.json, bench.md, bench.png")
    p.set_defaults(func=cmd_bench)

    e = sub.add_parser("eval", help="Recall@k, Hit@k, MRR, nDCG@10 on a labelled set, per retriever and fused")
    src = e.add_argument_group("labelled set (one of)")
    src.add_argument("--pubmedqa", default=None, metavar="PATH", help="PubMedQA ori_pqal.json (or its folder): "
                     "queries = questions, corpus = their contexts, relevant = each question's contexts")
    src.add_argument("--queries", default=None, help="BEIR queries.jsonl or a qid<TAB>text file (with --qrels)")
    src.add_argument("--qrels", default=None, help="TREC (qid 0 docid rel) or BEIR TSV qrels")
    src.add_argument("--beir-corpus", default=None, help="BEIR corpus.jsonl to search (converted under --work-dir)")
    e.add_argument("--corpus", default=None, help="corpus to search with --queries/--qrels (name or folder)")
    e.add_argument("--retriever", action="append", default=None,
                   help="retriever to evaluate; repeat for several (default BM25). Fused with RRF when 2+")
    e.add_argument("--k", type=_ints, default=[1, 5, 10, 20], help="cut-offs for Recall@k and Hit@k")
    e.add_argument("--depth", type=int, default=100, help="ranked list length (MRR, fusion input)")
    e.add_argument("--no-fusion", action="store_true", help="do not evaluate the RRF fusion of 2+ retrievers")
    add_flags(e, EngineOptions, exclude=EVAL_OWN)
    e.add_argument("--work-dir", default=None, help="where converted corpora go (default: the medret cache)")
    e.add_argument("--json", default=None, metavar="FILE", help="also write the results as JSON")
    e.set_defaults(func=cmd_eval)

    register_plan(sub)


# eval names its corpus and retrievers itself (several retrievers, fused); the other engine options are the usual
EVAL_OWN = ("corpus_name", "retriever_name")


def _work_dir(args) -> Path:
    return Path(args.work_dir).expanduser() if args.work_dir else default_cache_dir() / "bench"


def pubmedqa_corpus(path: str, work: Path) -> tuple[Path, dict]:
    file = pubmedqa.locate(path)
    raw = file.read_bytes()
    data = pubmedqa.parse(raw, file)
    # keyed by the file's content: another copy (or version) of ori_pqal.json gets its own corpus
    folder = work / f"pubmedqa-{hashlib.sha256(raw).hexdigest()[:12]}"
    if not (folder / "chunk" / "pubmedqa.jsonl").is_file():
        pubmedqa.write_corpus(data, folder)
    return folder, data


def read_queries_file(path: str) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--queries={path!r} not found: a file with one query a line")
    qs = [line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not qs:
        raise ConfigError(f"--queries={path!r} holds no query")
    return qs


def cmd_bench(args) -> int:
    require_bench_extra()
    opts = EngineOptions.from_args(args)
    corpus, db_dir, queries = opts.corpus_name, opts.db_dir, None
    work = _work_dir(args)
    if args.pubmedqa:
        folder, data = pubmedqa_corpus(args.pubmedqa, work)
        corpus, db_dir = str(folder), None
        queries = [item["QUESTION"] for item in data.values()]
    elif args.synthetic:
        folder = work / f"synthetic-{args.synthetic}"
        write_synthetic_corpus(folder, args.synthetic, progress=True)
        corpus, db_dir = str(folder), None
    if args.queries:
        queries = read_queries_file(args.queries)
    options = given(args, EngineOptions, exclude=("corpus_name", "retriever_name", "db_dir"))
    cfg = BenchConfig(corpus=corpus, retriever=opts.retriever_name, db_dir=db_dir,
                      backends=[b.strip() for b in args.backends.split(",") if b.strip()],
                      batch_sizes=args.batch_sizes, topk=args.topk, dup_ratio=args.dup_ratio, repeats=args.repeats,
                      max_seconds=args.max_seconds, queries=queries, measure_startup=not args.no_startup,
                      options=options)
    results = run_bench(cfg)
    paths = write_outputs(results, args.out)
    print(format_table(results))
    print("\nwrote " + ", ".join(str(p) for p in paths.values()))
    return 0 if all("error" not in b for b in results["backends"]) else 1


def cmd_eval(args) -> int:
    work = _work_dir(args)
    if args.pubmedqa:
        folder, data = pubmedqa_corpus(args.pubmedqa, work)
        labelled, corpus, db_dir = pubmedqa_set(data), str(folder), None
    elif args.queries and args.qrels:
        labelled = load_labelled(args.queries, args.qrels)
        corpus, db_dir = args.corpus, args.db_dir
        if args.beir_corpus:
            folder = work / ("beir-" + Path(args.beir_corpus).resolve().parent.name)
            if not (folder / "chunk").is_dir():
                write_beir_corpus(args.beir_corpus, folder)
            corpus, db_dir = str(folder), None
        if not corpus:
            raise ConfigError("--corpus is missing: with --queries/--qrels name the corpus to search "
                              "(or pass --beir-corpus corpus.jsonl)")
    else:
        raise ConfigError("no labelled set: pass --pubmedqa PATH, or --queries FILE --qrels FILE "
                          "(and --corpus NAME or --beir-corpus FILE)")
    options = given(args, EngineOptions, exclude=EVAL_OWN + ("db_dir", "rrf_k"))
    res = evaluate(labelled, corpus, args.retriever or ["BM25"], db_dir=db_dir, ks=args.k, depth=args.depth,
                   fusion=not args.no_fusion, rrf_k=args.rrf_k or EngineOptions().rrf_k, **options)
    print(format_results(res))
    if args.json:
        atomic_write_text(args.json, json.dumps(res, indent=2))
    return 0

