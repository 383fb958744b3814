"""Core commands: `medret search`, `medret index build`, `medret corpus info` (and `corpus download`, from
medret.corpus.download_cli)."""
from __future__ import annotations

import argparse
import sys

import orjson

def add_retriever_flags(p: argparse.ArgumentParser) -> None:
    """The flags that configure a retriever, shared by every command that builds one."""
    g = p.add_argument_group("retriever")
    g.add_argument("--corpus", default="sample", help="PubMed, StatPearls, Textbooks, Wikipedia, MedText, MedCorp, "
                   "sample, or a folder / .jsonl file (default: sample)")
    g.add_argument("--retriever", default="BM25", help="BM25, MedCPT, Contriever, SPECTER, e5, RRF-2, RRF-4, "
                   "'A+B', or a local model folder (default: BM25)")
    g.add_argument("--db-dir", default=None, help="folder holding MedRAG's corpora (pubmed/chunk/*.jsonl, ...)")
    g.add_argument("--cache-dir", default=None, help="build and look for stores and indexes in this folder instead "
                   "of beside the chunk files (for a read-only --db-dir)")
    g.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if visible, else cpu)")
    g.add_argument("--gpu-id", type=int, default=None, help="physical GPU number (as nvidia-smi counts)")
    g.add_argument("--allow-cpu-fallback", action="store_true", help="run on CPU (with a warning) if CUDA is absent")
    g.add_argument("--query-model", default=None, help="a local copy of the retriever's query model (folder)")
    g.add_argument("--doc-model", default=None, help="a local copy of the retriever's document model (folder)")
    g.add_argument("--models-dir", default=None, metavar="DIR",
                   help="folder of models saved by `medret models download` (DIR/<model id>); "
                        "default $MEDRET_MODELS_DIR, else ~/.cache/medret/models")
    g.add_argument("--batch-size", type=int, default=256, help="encoder batch size")
    g.add_argument("--rrf-k", type=int, default=100, help="RRF constant k (MedRAG uses 100)")
    g.add_argument("--nprobe", type=int, default=None, help="IVF lists probed per query (faiss IVF indexes)")
    g.add_argument("--ef-search", type=int, default=None, help="HNSW search depth (faiss HNSW indexes)")
    g.add_argument("--rerank", type=int, default=None,
                   help="lossy indexes (IVF-PQ): re-score k x RERANK candidates exactly (default 10; 0 = off)")
    add_encoder_flags(p)


def add_encoder_flags(p: argparse.ArgumentParser) -> None:
    """The flags of medret.config.ENCODER_OPTIONS (how a dense retriever encodes), each default None (the recipe's)."""
    from medret.config import ENCODER_OPTIONS

    g = p.add_argument_group("dense encoder (default: the named retriever's recipe)")
    for o in ENCODER_OPTIONS:
        if o.type is bool:
            g.add_argument(o.flag, dest=o.name, action=argparse.BooleanOptionalAction, default=None, help=o.help)
        else:
            g.add_argument(o.flag, dest=o.name, type=o.type, choices=o.choices, default=None, help=o.help)


def encoder_options(args: argparse.Namespace) -> dict:
    """The encoder options given on the command line (those left unset are not included)."""
    from medret.config import ENCODER_OPTION_NAMES

    return {k: getattr(args, k) for k in ENCODER_OPTION_NAMES if getattr(args, k, None) is not None}


def config_from_args(args: argparse.Namespace, **extra):
    from medret.config import RetrieverConfig

    return RetrieverConfig.from_mapping(dict(
        corpus_name=args.corpus, retriever_name=args.retriever, db_dir=args.db_dir, cache_dir=args.cache_dir,
        device=args.device, gpu_id=args.gpu_id, allow_cpu_fallback=args.allow_cpu_fallback,
        query_model=args.query_model, doc_model=args.doc_model, models_dir=args.models_dir,
        batch_size=args.batch_size, rrf_k=args.rrf_k, nprobe=args.nprobe, ef_search=args.ef_search,
        rerank=args.rerank, **encoder_options(args), **extra))


def register(sub) -> None:
    from medret.corpus.download_cli import register_corpus

    p = sub.add_parser("search", help="search a corpus and print the top-k passages")
    p.add_argument("queries", nargs="+", metavar="QUERY")
    p.add_argument("--topk", type=int, default=3)
    p.add_argument("--json", action="store_true", help="print Search-R1's /retrieve JSON")
    p.add_argument("--url", default=None, help="search through a running `medret serve` instead of in-process")
    add_retriever_flags(p)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("index", help="build indexes")
    isub = p.add_subparsers(dest="index_command", metavar="SUBCOMMAND", required=True)
    b = isub.add_parser("build", help="build the document store and the index a retriever needs (resumable)")
    add_retriever_flags(b)
    b.add_argument("--index-type", default="flat", help="flat, hnsw, ivfpq, or a faiss factory string")
    b.add_argument("--rebuild", action="store_true", help="rebuild even if a matching index exists")
    b.add_argument("--adopt-legacy", action="store_true",
                   help="move a dense index of medret's first layout (<source>/medret/index/<retriever name>/, which "
                   "did not record the model's weights) into the new one, recording the encoder configured now, "
                   "instead of re-encoding: only if you know it was built with that encoder")
    b.add_argument("--fp32", action="store_true", help="encode and store embeddings in float32 (default: fp16 on "
                   "CUDA, float32 on CPU)")
    b.set_defaults(func=cmd_index_build)

    p = sub.add_parser("corpus", help="corpus information and downloads")
    corpus_sub = p.add_subparsers(dest="corpus_command", metavar="SUBCOMMAND", required=True)
    c = corpus_sub.add_parser("info", help="sizes, which indexes exist, memory each would take")
    c.add_argument("--corpus", default="sample")
    c.add_argument("--db-dir", default=None)
    c.add_argument("--cache-dir", default=None, help="where the stores and indexes were built, if not beside the data")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_corpus_info)
    register_corpus(corpus_sub)


def cmd_search(args) -> int:
    from medret.api import retriever_for

    extra = {"url": args.url} if args.url else {}
    r = retriever_for(config_from_args(args, **extra))
    if args.json:
        sys.stdout.buffer.write(orjson.dumps(r.retrieve(args.queries, args.topk, True)) + b"\n")
        return 0
    for q, hits in zip(args.queries, r.search(args.queries, args.topk)):
        print(f"query: {q}")
        for rank, h in enumerate(hits, 1):
            text = h.content if len(h.content) <= 300 else h.content[:297] + "..."
            print(f"  {rank}. [{h.score:.4f}] {h.id} | {h.title}\n     {text}")
    return 0


def cmd_index_build(args) -> int:
    from medret.index.builder import build_all

    config = config_from_args(args, **({"fp16": False} if args.fp32 else {}))
    for line in build_all(config, index_type=args.index_type, rebuild=args.rebuild, progress=True,
                          adopt_legacy=args.adopt_legacy):
        print(line)
    return 0


def cmd_corpus_info(args) -> int:
    from medret.corpus.info import corpus_info, format_info

    info = corpus_info(args.corpus, args.db_dir, args.cache_dir)
    if args.json:
        sys.stdout.buffer.write(orjson.dumps(info, option=orjson.OPT_INDENT_2) + b"\n")
    else:
        print(format_info(info))
    return 0
