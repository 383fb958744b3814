"""`medret serve`: the retriever as a Search-R1/veRL-compatible HTTP service.

Its flags come from the declarations: the retriever's (:class:`medret.config.EngineOptions`), the request limits
(:class:`medret.config.Limits`) and the server knobs (:class:`medret.serve.app.ServeSettings`).
The server itself (starlette, uvicorn: the ``serve`` extra) is imported only when the command runs.
"""
from __future__ import annotations

import argparse
import logging
import os
import shlex
import stat
import sys

from medret.config import EngineOptions, Limits, RetrieverConfig
from medret.errors import ConfigError
from medret.options import add_flags, given
from medret.serve.settings import TOKEN_ENV, ServeSettings, env_token
from medret.validate import check_token

log = logging.getLogger(__name__)

def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve", help="serve POST /retrieve (Search-R1 / veRL wire format) over HTTP",
        description="Serve a retriever over HTTP. POST /retrieve takes Search-R1's request "
                    '{"queries": [...], "topk": 3, "return_scores": true}; GET /health is 503 until the index is '
                    "loaded, 200 after; GET / and GET /stats describe the service.")
    add_flags(p, EngineOptions)
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
    add_flags(p, Limits)
    add_flags(p, ServeSettings)
    g.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                   help="server log level (default info)")
    p.set_defaults(func=cmd_serve)


def read_token(args: argparse.Namespace) -> str | None:
    """The token from --token-file, else $MEDRET_TOKEN, else None; never from the command line."""
    if args.token is not None:
        raise ConfigError("--token is not accepted: a token on the command line is visible to every user of the "
                          "machine (ps, /proc); put it in a file readable only by you and pass --token-file FILE, "
                          f"or set the environment variable {TOKEN_ENV}")
    if args.token_file:
        try:
            with open(os.path.expanduser(args.token_file), encoding="utf-8") as fh:
                text = fh.read().strip()
                mode = os.fstat(fh.fileno()).st_mode
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"--token-file={args.token_file!r} cannot be read ({e}): give a file holding the "
                              "token on one line") from None
        token = check_token(text, f"the token in --token-file={args.token_file!r}")
        if mode & 0o077:  # as ssh does for a private key: a secret others can read (or replace) is no secret
            log.warning("--token-file=%r is accessible by other users (mode %s): anyone on this machine who can read "
                        "it can search; chmod 600 %s", args.token_file, oct(stat.S_IMODE(mode)),
                        shlex.quote(args.token_file))
        return token
    return env_token()


def cmd_serve(args: argparse.Namespace) -> int:
    from medret.serve.server import run_server  # noqa: PLC0415 - the server needs the serve extra

    _setup_logging(args.log_level)
    config = RetrieverConfig.from_args(args)
    token = read_token(args)
    knobs = given(args, ServeSettings)
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
