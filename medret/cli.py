"""The `medret` command line. Thin: each command lives beside the code it drives."""
from __future__ import annotations

import argparse
import logging
import os
import sys

from medret import commands
from medret.bench import cli as bench_cli
from medret.doctor import cli as doctor_cli
from medret.encoders import models_cli
from medret.errors import MedretError
from medret.integrations import cli as integrations_cli
from medret.launch import cli as launch_cli
from medret.recipes.kare import cli as kare_cli
from medret.serve import cli as serve_cli
from medret.version import __version__

# Each module defines register(subparsers); its handlers take the parsed args and return an exit code.
COMMANDS = (
    commands,  # search, index build, corpus info / download
    models_cli,
    launch_cli,  # slurm, ray
    doctor_cli,
    kare_cli,
    bench_cli,  # bench, eval, plan
    serve_cli,
    integrations_cli,  # searchr1, rollout-smoke
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medret",
                                     description="Fast in-process medical retrieval for RL search agents.")
    parser.add_argument("--version", action="version", version=f"medret {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-v info, -vv debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; its exit code. Output cut short by the reader (``medret ... | head``) ends quietly."""
    try:
        try:
            return _main(argv)
        finally:
            # flush here, inside the handler: a failed flush at interpreter exit would print a traceback
            sys.stdout.flush()
    except BrokenPipeError:
        _discard_stdout()
        return 141  # 128 + SIGPIPE, what a tool killed by SIGPIPE reports to the shell


def _discard_stdout() -> None:
    """The reader of stdout went away: send what is still buffered (and the final flush) to /dev/null."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # stdout without a file descriptor (captured in tests)
        pass


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except BrokenPipeError:  # --help / --version into a closed pipe: exit 0, as argparse gives it on Python >= 3.10
        _discard_stdout()
        return 0
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:  # libraries that set their own logger to DEBUG (bm25s) stay quiet
        handler.setLevel(level)
    # huggingface_hub prints through its own handler and also passes each record up to ours: each warning twice
    logging.getLogger("huggingface_hub").propagate = False
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except MedretError as e:
        print(f"medret: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("medret: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
