"""`medret serve`: the retriever as a Search-R1/veRL-compatible HTTP service."""
from __future__ import annotations

import argparse
import logging
import os
import sys

from medret.commands import add_retriever_flags, config_from_args


def register(sub) -> None:
    p = sub.add_parser(
        "serve", help="serve POST /retrieve (Search-R1 / veRL wire format) over HTTP",
        description="Serve a retriever over HTTP. POST /retrieve takes Search-R1's request "
                    '{"queries": [...], "topk": 3, "return_scores": true}; GET /health is 503 until the index is '
                    "loaded, 200 after; GET / and GET /stats describe the service.")
    add_retriever_flags(p)
    g = p.add_argument_group("server")
    g.add_argument("--host", default="127.0.0.1",
                   help="interface to bind (default 127.0.0.1: this machine only; 0.0.0.0 for every interface)")
    g.add_argument("--port", type=int, default=0, help="TCP port (default 0: a free port; see --address-file)")
    g.add_argument("--address-file", default=None, metavar="PATH",
                   help="write host:port here once the index is loaded and the server accepts connections "
                        "(removed on shutdown): a job script waits for this file")
    g.add_argument("--token", default=None,
                   help="require 'Authorization: Bearer TOKEN' on every route but /health "
                        "(default: the MEDRET_TOKEN environment variable, if set)")
    g.add_argument("--topk", type=int, default=3, help="topk when a request has none (Search-R1's default: 3)")
    g.add_argument("--max-topk", type=int, default=1000, help="largest topk a request may ask for")
    g.add_argument("--max-batch", type=int, default=16384, help="most queries in one request")
    g.add_argument("--max-query-chars", type=int, default=8192, help="longest query text, in characters")
    g.add_argument("--max-batch-queries", type=int, default=4096,
                   help="most queries merged from concurrent requests into one engine call")
    g.add_argument("--max-wait-ms", type=float, default=0.0,
                   help="wait this long for more requests before a batch (default 0: take what is queued)")
    g.add_argument("--max-body-bytes", type=int, default=32 * 1024 * 1024, help="largest request body")
    g.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    from medret.errors import ConfigError
    from medret.serve.app import TOKEN_ENV, ServeSettings
    from medret.serve.server import run_server

    _setup_logging(args.log_level)
    config = config_from_args(args, max_topk=args.max_topk, max_batch=args.max_batch,
                              max_query_chars=args.max_query_chars)
    token = args.token if args.token is not None else (os.environ.get(TOKEN_ENV) or None)
    if args.topk is not None and not 1 <= args.topk <= config.max_topk:
        raise ConfigError(f"--topk={args.topk} is invalid: the default topk must be from 1 to --max-topk "
                          f"({config.max_topk})")
    settings = ServeSettings(default_topk=args.topk, max_batch_queries=args.max_batch_queries,
                             max_wait_ms=args.max_wait_ms, max_body_bytes=args.max_body_bytes, token=token)

    def on_address(address: str) -> None:
        print(f"medret serve: listening on http://{address} (corpus {config.corpus_name}, retriever "
              f"{config.retriever_name}); GET /health turns 200 when the index is loaded", file=sys.stderr,
              flush=True)

    return run_server(config, settings, host=args.host, port=args.port, address_file=args.address_file,
                      log_level=args.log_level, on_address=on_address)


def _setup_logging(level: str) -> None:
    lvl = getattr(logging, level.upper())
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in ("medret", "uvicorn", "uvicorn.error"):
        logging.getLogger(name).setLevel(lvl)
    for h in root.handlers:
        h.setLevel(min(h.level or lvl, lvl))
    root.setLevel(min(root.level, lvl))
