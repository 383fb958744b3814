"""Core commands: `medret search`, `medret index build`, `medret corpus info` (and `corpus download`, from
medret.corpus.download_cli)."""
from __future__ import annotations

import argparse
import sys

import orjson

from medret.api import retriever_for
from medret.config import DEFAULT_TOPK, EngineOptions, RetrieverConfig
from medret.corpus.download_cli import register_corpus
from medret.index.build_all import build_all
from medret.index.inventory import corpus_info, format_info
from medret.options import add_flags


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="search a corpus and print the top-k passages")
    p.add_argument("queries", nargs="+", metavar="QUERY", help="one or more queries (quote each)")
    p.add_argument("--topk", type=int, default=DEFAULT_TOPK, help=f"passages per query (default {DEFAULT_TOPK})")
    p.add_argument("--json", action="store_true", help="print Search-R1's /retrieve JSON")
    add_flags(p, EngineOptions)
    add_flags(p, RetrieverConfig, only=("url", "address_file", "timeout", "retries", "total_timeout"),
              title="search through a running `medret serve` instead of in-process")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("index", help="build indexes")
    isub = p.add_subparsers(dest="index_command", metavar="SUBCOMMAND", required=True)
    b = isub.add_parser("build", help="build the document store and the index a retriever needs (resumable)")
    add_flags(b, EngineOptions)
    b.add_argument("--index-type", default=None, help="of a dense index: flat (exact; the default), hnsw, ivfpq, or a "
                   "faiss factory string such as IVF4096,PQ96np (refused for BM25, which has none)")
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
    add_flags(c, EngineOptions, only=("corpus_name", "db_dir", "cache_dir"))
    c.add_argument("--json", action="store_true", help="print the information as JSON")
    c.set_defaults(func=cmd_corpus_info)
    register_corpus(corpus_sub)


def cmd_search(args: argparse.Namespace) -> int:
    r = retriever_for(RetrieverConfig.from_args(args))
    if args.json:
        sys.stdout.buffer.write(orjson.dumps(r.retrieve(args.queries, args.topk, True)) + b"\n")
        return 0
    for q, hits in zip(args.queries, r.search(args.queries, args.topk)):
        print(f"query: {q}")
        for rank, h in enumerate(hits, 1):
            text = h.content if len(h.content) <= 300 else h.content[:297] + "..."
            print(f"  {rank}. [{h.score:.4f}] {h.id} | {h.title}\n     {text}")
    return 0


def cmd_index_build(args: argparse.Namespace) -> int:
    config = RetrieverConfig.from_args(args, fp16=False) if args.fp32 else RetrieverConfig.from_args(args)
    for line in build_all(config, index_type=args.index_type, rebuild=args.rebuild, progress=True,
                          adopt_legacy=args.adopt_legacy):
        print(line)
    return 0


def cmd_corpus_info(args: argparse.Namespace) -> int:
    opts = EngineOptions.from_args(args)
    info = corpus_info(opts.corpus_name, opts.db_dir, opts.cache_dir)
    if args.json:
        sys.stdout.buffer.write(orjson.dumps(info, option=orjson.OPT_INDENT_2) + b"\n")
    else:
        print(format_info(info))
    return 0
