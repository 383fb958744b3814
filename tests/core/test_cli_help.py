"""Every flag and argument of every `medret` command says what it does (issue 14: several had no help text)."""
from __future__ import annotations

import argparse

from medret.cli import build_parser


def _parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ("medret",)):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                if sub is not parser:
                    yield from _parsers(sub, path + (name,))


def test_every_flag_of_every_command_has_help_text():
    seen = set()
    missing = []
    commands = 0
    for path, parser in _parsers(build_parser()):
        if id(parser) in seen:  # an alias of a command already walked
            continue
        seen.add(id(parser))
        commands += 1
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            if action.help == argparse.SUPPRESS:  # hidden on purpose (serve --token: refused, visible in `ps`)
                continue
            if not (action.help or "").strip():
                missing.append(f"{' '.join(path)} {'/'.join(action.option_strings) or action.dest}")
    assert commands > 20  # the walk reached the subcommands (search, index build, slurm render, ray up, ...)
    assert not missing, "no help text: " + "; ".join(missing)


def test_every_subcommand_has_help_text():
    missing = []
    for path, parser in _parsers(build_parser()):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                helped = {c.dest for c in action._choices_actions if (c.help or "").strip()}
                missing += [f"{' '.join(path)} {name}" for name in action.choices if name not in helped]
    assert not missing, "subcommands without help: " + ", ".join(missing)
