"""`medret serve`: the retriever as a Search-R1/veRL-compatible HTTP service.

The request limits come from :data:`medret.config.LIMITS` and the server knobs from the fields of
:class:`medret.serve.settings.ServeSettings`: each is declared once there, with its help, and turned into a flag here.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys

from medret.commands import add_retriever_flags, config_from_args

_TYPES = {"int": int, "float": float}


def _settings_fields():
    from medret.serve.settings import ServeSettings

    return [f for f in dataclasses.fields(ServeSettings) if f.metadata.get("flag")]


def register(sub) -> None:
    from medret.config import LIMITS, RetrieverConfig

    p = sub.add_parser(
        "serve", help="serve POST /retrieve (Search-R1 / veRL wire format) over HTTP",
        description="Serve a retriever over HTTP. POST /retrieve takes Search-R1's request "
                    '{"queries": [...], "topk": 3, "return_scores": true}; GET /health is 503 until the index is '
                    "loaded, 200 after; GET / and GET /stats describe the service.")
    add_retriever_flags(p)
    g = p.add_argument_group("server")
    g.add_argument("--host", default="127.0.0.1",
                   help="interface to bind (default 127.0.0.1: this machine only; 0.0.0.0 for every interface, "
                        "then give a token)")
    g.add_argument("--port", type=int, default=0, help="TCP port (default 0: a free port; see --address-file)")
    g.add_argument("--address-file", default=None, metavar="PATH",
                   help="write host:port here once the index is loaded and the server accepts connections "
                        "(removed on shutdown): a job script waits for this file")
    g.add_argument("--token-file", default=None, metavar="PATH",
                   help="require 'Authorization: Bearer TOKEN' on every route but /health, TOKEN being this file's "
                        "content (default: the MEDRET_TOKEN environment variable, if set). Printable ASCII.")
    g.add_argument("--token", default=None, help=argparse.SUPPRESS)  # refused: visible to every user in `ps`
    defaults = {f.name: f.default for f in dataclasses.fields(RetrieverConfig)}
    lim = p.add_argument_group("request limits")
    for name, help_text in LIMITS.items():
        lim.add_argument("--" + name.replace("_", "-"), type=int, default=None, metavar="N",
                         help=f"{help_text} (default {defaults[name]})")
    for f in _settings_fields():
        kind = f.type if isinstance(f.type, str) else f.type.__name__
        shown = f.default if kind == "int" else f"{f.default:g}"
        g.add_argument(f.metadata["flag"], dest=f.name, type=_TYPES[kind], default=None,
                       metavar="N" if kind == "int" else "X", help=f"{f.metadata['help']} (default {shown})")
    g.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=cmd_serve)


def read_token(args: argparse.Namespace) -> str | None:
    """The token from --token-file, else $MEDRET_TOKEN, else None; never from the command line."""
    from medret.errors import ConfigError
    from medret.serve.app import TOKEN_ENV
    from medret.validate import check_token

    if args.token is not None:
        raise ConfigError("--token is not accepted: a token on the command line is visible to every user of the "
                          "machine (ps, /proc); put it in a file readable only by you and pass --token-file FILE, "
                          f"or set the environment variable {TOKEN_ENV}")
    if args.token_file:
        try:
            with open(os.path.expanduser(args.token_file), encoding="utf-8") as fh:
                token = fh.read().strip()
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"--token-file={args.token_file!r} cannot be read ({e}): give a file holding the "
                              "token on one line") from None
        return check_token(token, f"the token in --token-file={args.token_file!r}")
    env = os.environ.get(TOKEN_ENV)
    return check_token(env, f"${TOKEN_ENV}") if env else None


def cmd_serve(args: argparse.Namespace) -> int:
    from medret.config import LIMITS
    from medret.errors import ConfigError
    from medret.serve.app import ServeSettings
    from medret.serve.server import run_server

    _setup_logging(args.log_level)
    limits = {name: getattr(args, name) for name in LIMITS if getattr(args, name) is not None}
    config = config_from_args(args, **limits)
    token = read_token(args)
    knobs = {f.name: getattr(args, f.name) for f in _settings_fields() if getattr(args, f.name) is not None}
    topk = knobs.get("default_topk")
    if topk is not None and not 1 <= topk <= config.max_topk:
        raise ConfigError(f"--topk={topk} is invalid: the default topk must be from 1 to --max-topk "
                          f"({config.max_topk})")
    settings = ServeSettings(token=token, **knobs)

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
