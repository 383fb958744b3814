"""Each option is declared once, as a dataclass field made by :func:`option`; everything else is derived from it.

A declaration carries the option's name (the field), default, kind, help, command-line flag (and other accepted
spellings), its check, and whether it is part of a Ray actor's identity. From the declarations of an options
class (:class:`medret.config.RetrieverConfig` and its groups, :class:`medret.serve.app.ServeSettings`) come:

* validation (:meth:`Options.__post_init__` runs every field's check: ``name=value is invalid: ...``);
* command-line flags (:func:`add_flags`) and the values a user gave on the command line (:func:`given`);
* reading a mapping: keyword arguments, a hydra/omegaconf block, Search-R1's ``retriever`` block, a YAML file
  (:meth:`Options.from_mapping`: accepted spellings, strings from hydra or the environment turned into the
  declared kind, unknown keys refused with the list of valid ones);
* the argv of a child process that must get the same options (:func:`argv`);
* the identity of a Ray actor (:func:`identity`).

Adding an option is one field here (or in a group class) plus the code that uses it.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import numbers
import os
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterable, Mapping, TypeVar

from medret import optional
from medret.errors import ConfigError

Check = Callable[[str, Any], None]  # check(name, value): raise ConfigError naming both, and the fix
_KEY = "medret"
_BOOL_WORDS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False,
               "off": False}


@dataclass(frozen=True)
class Declaration:
    """What :func:`option` records about one field."""

    kind: type
    help: str
    flags: tuple[str, ...]           # (canonical, *other spellings); () = no command-line flag
    keys: tuple[str, ...]            # other keys accepted in a mapping (e.g. Search-R1's ``corpus``)
    check: Check | None
    identity: bool                   # part of a Ray actor's name (changes results, or where/how it runs)
    choices: tuple[str, ...] | None
    metavar: str | None
    group: str
    search_only: bool = False        # changes how an index is searched, not what `medret index build` builds
    request: bool = False            # a value of one request (topk), not of the retriever: ignored in its blocks
    digits: bool = False             # a str that may be all digits (a job id): a whole number is taken as its text
    default: Any = None              # filled in by declarations()

    @property
    def optional(self) -> bool:
        """None is a valid value only where it is the declared default ("not set: the recipe's / the index's")."""
        return self.default is None


def option(default: Any, help: str, *, kind: type | None = None, flag: str | None | bool = True,
           aliases: Iterable[str] = (), keys: Iterable[str] = (), check: Check | None = None,
           identity: bool = False, choices: Iterable[str] | None = None, metavar: str | None = None,
           group: str = "", search_only: bool = False, request: bool = False, digits: bool = False) -> Any:
    """A dataclass field declaring one option.

    ``kind`` is int, float, str or bool (taken from the default when it is not None). ``flag``: True for
    ``--name-with-dashes``, a string for another flag, False/None for none; ``aliases`` are further flags.
    ``keys`` are further names accepted by :meth:`Options.from_mapping`. ``check(name, value)`` raises
    :class:`ConfigError`; ``choices`` adds a check of its own. ``identity``: part of a Ray actor's name.
    ``search_only``: changes how an index is searched, not what is built (left out of build commands).
    ``request``: a value of one request (``topk``), accepted in a retriever block but not the retriever's.
    ``digits``: a string that may be all digits (a SLURM job id): a whole number (hydra and YAML read ``12345`` as
    one) is taken as its text.
    The declared kind is enforced at every entry (:func:`check_kind`); None only where the default is None.
    """
    if kind is None:
        if default is None:
            raise TypeError(f"option(None, {help!r}) needs kind=")
        kind = type(default)
    if kind not in (int, float, str, bool):
        raise TypeError(f"option kind {kind!r} is not one of int, float, str, bool")
    decl = Declaration(kind=kind, help=help, flags=(), keys=tuple(keys), check=check, identity=identity,
                       choices=tuple(choices) if choices is not None else None, metavar=metavar, group=group,
                       search_only=search_only, request=request, digits=digits)
    # the flag needs the field's name: filled in by _declarations()
    meta = {_KEY: decl, "flag": flag, "aliases": tuple(aliases)}
    return dataclasses.field(default=default, metadata=meta)


OptionsT = TypeVar("OptionsT", bound="Options")


class Options:
    """Base of the option classes: validation, reading mappings, picking out a group.

    Subclasses are frozen dataclasses whose fields are made by :func:`option`."""

    #: the options class of one request's values (``topk``) that a block of this class may carry; ignored by
    #: from_mapping (their values are still checked by kind)
    REQUEST: ClassVar[type | None] = None
    RENAMED: ClassVar[dict[str, str]] = {}  # old option name -> new one: the old key / flag is refused, naming it

    def __post_init__(self) -> None:
        for name, decl in declarations(type(self)).items():
            value = getattr(self, name)
            kept = check_value(name, decl, value)
            if kept is not value:
                object.__setattr__(self, name, kept)  # a path object as its string

    @classmethod
    def from_mapping(cls: type[OptionsT], block: Mapping[str, Any] | Any, **overrides: Any) -> OptionsT:
        """From a dict or a hydra/omegaconf block: accepted spellings, declared kinds, unknown keys refused."""
        return cls(**normalize(cls, plain_dict(block), overrides))

    @classmethod
    def from_args(cls: type[OptionsT], args: argparse.Namespace, base: Mapping[str, Any] | None = None,
                  **extra: Any) -> OptionsT:
        """From command-line flags (those given, over ``base``, e.g. a --config file) and ``extra`` values."""
        return cls.from_mapping({**(base or {}), **given(args, cls), **extra})

    @classmethod
    def of(cls: type[OptionsT], other: Any) -> OptionsT:
        """This group's options, taken from an object that has them (e.g. a RetrieverConfig)."""
        return cls(**{f.name: getattr(other, f.name) for f in dataclasses.fields(cls)})  # type: ignore[arg-type]

    def replace(self: OptionsT, **changes: Any) -> OptionsT:
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]


def plain_dict(block: Mapping[str, Any] | Any) -> dict[str, Any]:
    """A plain dict from a dict, an omegaconf DictConfig (resolved), any mapping, or None."""
    if block is None:
        return {}
    if isinstance(block, dict):
        return dict(block)
    omegaconf = optional.omegaconf()
    if omegaconf is not None and isinstance(block, omegaconf.DictConfig):
        return dict(omegaconf.OmegaConf.to_container(block, resolve=True))
    if hasattr(block, "items"):
        return dict(block.items())
    raise ConfigError(f"retriever={block!r} is invalid: the retriever config block must be a mapping")


def declarations(cls: type) -> dict[str, Declaration]:
    """``{field name: Declaration}`` of an options class, with each flag resolved, in field order."""
    cached = _CACHE.get(cls)
    if cached is None:
        cached = {}
        for f in dataclasses.fields(cls):
            decl = f.metadata.get(_KEY)
            if decl is None:
                continue
            flag = f.metadata["flag"]
            first = ("--" + f.name.replace("_", "-")) if flag is True else (flag or None)
            flags = ((first,) if first else ()) + f.metadata["aliases"]
            cached[f.name] = dataclasses.replace(decl, flags=flags, default=f.default)
        _CACHE[cls] = cached
    return cached


_CACHE: dict[type, dict[str, Declaration]] = {}


def defaults(cls: type) -> dict[str, Any]:
    return {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}


# ------------------------------------------------------------------------------------------------ kinds


_KIND_WORDS = {
    bool: "true or false (also yes/no, on/off, 1/0)",
    int: "a whole number (an int: not a bool, not a fraction)",
    float: "a number (an int or a float: not a bool, not NaN)",
    str: "a string (a path may be a str or os.PathLike, not bytes)",
}
_EXAMPLES = {bool: "true", int: "3", float: "2.5", str: "'...'"}


def describe_kind(decl: Declaration) -> str:
    """The declared kind in words, as messages give it."""
    return _KIND_WORDS[decl.kind] + (", or None (not set)" if decl.optional else "")


def kind_error(name: str, decl: Declaration, value: Any) -> ConfigError:
    """``name=value is invalid``: the expected kind, what was given, and the fix (an example, or the default)."""
    default = decl.default
    shown = str(default).lower() if isinstance(default, bool) else repr(default)
    fix = (f"give e.g. {name}={_EXAMPLES[decl.kind]}" if default is None
           else f"give e.g. {name}={shown} (the default, which leaving the key out also gives)")
    return ConfigError(f"{name}={_short(value)} is invalid: expected {describe_kind(decl)}, got "
                       f"{type(value).__name__}; {fix}")


def check_kind(name: str, decl: Declaration, value: Any) -> Any:
    """``value`` if it is of the declared kind (a path object as its string, an integer type as int), else
    :class:`ConfigError` naming the option, the value and the expected kind. None only where it is the default."""
    if value is None:
        if decl.optional:
            return None
    elif decl.kind is bool:
        if isinstance(value, bool):
            return value
    elif decl.kind is int:
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return value if isinstance(value, int) else int(value)  # a numpy integer as an int
    elif decl.kind is float:
        if isinstance(value, numbers.Real) and not isinstance(value, bool) and not math.isnan(value):
            return value if isinstance(value, (int, float)) else float(value)
    elif isinstance(value, str):
        return value
    elif decl.digits and isinstance(value, numbers.Integral) and not isinstance(value, bool) and int(value) >= 0:
        return str(int(value))
    elif isinstance(value, os.PathLike):
        path = os.fspath(value)
        if isinstance(path, str):
            return path
    raise kind_error(name, decl, value)


def check_value(name: str, decl: Declaration, value: Any) -> Any:
    """The value as stored: of the declared kind, then its choices and its check."""
    value = check_kind(name, decl, value)
    if decl.choices is not None and value is not None and value not in decl.choices:
        raise ConfigError(f"{name}={value!r} is invalid: choose one of {', '.join(decl.choices)}")
    if decl.check is not None:
        decl.check(name, value)
    return value


def parse_value(cls: type, name: str, value: Any, label: str | None = None) -> Any:
    """One option of ``cls`` read from a mapping (a hydra string becomes the declared kind) and checked as its
    declaration says; ``label`` names it in messages (e.g. ``retriever.timeout``)."""
    decl = declarations(cls)[name]
    return check_value(label or name, decl, coerce(decl.kind, value))


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:80] + "…"


# ------------------------------------------------------------------------------------------------ mappings


def request_keys(cls: type) -> dict[str, str]:
    """``{key: option name}`` of the per-request options (``topk``) a block of ``cls`` may carry (cls.REQUEST)."""
    request = getattr(cls, "REQUEST", None)
    if request is None:
        return {}
    return {key: name for name, d in declarations(request).items() if d.request for key in (name, *d.keys)}


def accepted_keys(cls: type) -> set[str]:
    """Every key a mapping of ``cls`` may hold: field names, their other spellings, the request keys."""
    decls = declarations(cls)
    return ({f.name for f in dataclasses.fields(cls)} | {k for d in decls.values() for k in d.keys}
            | set(request_keys(cls)))


def unknown_keys_error(cls: type, unknown: Iterable[str], label: str = "retriever option",
                       extra: Iterable[str] = ()) -> ConfigError:
    """Unknown keys, each with the closest valid one (difflib), then the valid ones."""
    valid = sorted(accepted_keys(cls) | set(extra))
    keys = sorted(unknown, key=str)
    renamed = {k: getattr(cls, "RENAMED", {})[k] for k in keys if k in getattr(cls, "RENAMED", {})}
    if renamed:
        return ConfigError(f"{label}(s) {sorted(renamed)} no longer exist: " + ", ".join(
            f"{k!r} was renamed {v!r}" for k, v in renamed.items()) + f"; give {', '.join(renamed.values())}")
    hints = []
    for key in keys:
        close = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.6)
        if close:
            hints.append(f"{key!r} -> {close[0]!r}")
    hint = f"did you mean {', '.join(hints)}? " if hints else ""
    return ConfigError(f"unknown {label}(s) {keys}: {hint}fix the spelling; valid options are {valid}")


def normalize(cls: type, data: dict[str, Any], overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The keyword arguments of ``cls`` a mapping describes: other spellings renamed, request keys checked and
    dropped, strings turned into the declared kind (hydra and the environment give strings); unknown keys refused
    naming the closest valid key. Values are then checked by kind when ``cls`` is built."""
    decls = declarations(cls)
    out: dict[str, Any] = {}
    renames = {key: name for name, d in decls.items() for key in d.keys}
    ignored = request_keys(cls)
    merged = {**data, **(overrides or {})}
    for old, new in getattr(cls, "RENAMED", {}).items():
        if old in merged and old not in decls:
            raise ConfigError(f"{old}={merged[old]!r} is no longer an option: it was renamed {new} "
                              f"(give {new}={merged[old]!r})")
    for key, value in merged.items():
        if key in ignored:
            parse_value(cls.REQUEST, ignored[key], value, label=key)  # type: ignore[attr-defined]
            continue
        name = renames.get(key, key) if key not in decls else key
        if name != key and name in merged:
            name = key  # both spellings given: the other one is reported as unknown
        out[name] = value
    valid = {f.name for f in dataclasses.fields(cls)}
    unknown = set(out) - valid
    if unknown:
        raise unknown_keys_error(cls, unknown)
    for name, value in out.items():
        decl = decls.get(name)
        if decl is not None:
            out[name] = coerce(decl.kind, value)
    return out


def check_mapping(cls: type, data: Mapping[str, Any]) -> dict[str, Any]:
    """Each value of a mapping of ``cls``'s options checked on its own (kind, choices, check), without building
    ``cls`` (other values may still come from flags): unknown keys refused as :func:`normalize` does."""
    decls = declarations(cls)
    out = normalize(cls, dict(data))
    for name, value in out.items():
        if name in decls:
            out[name] = check_value(name, decls[name], value)
    return out


def coerce(kind: type, value: Any) -> Any:
    """A string from hydra or the environment as the declared kind (``"256"`` → 256, ``"true"`` → True); a path
    object as its string. Anything else is left for :func:`check_kind` to judge."""
    if isinstance(value, os.PathLike) and kind is str:
        path = os.fspath(value)
        return path if isinstance(path, str) else value
    if kind is bool and type(value) is int and value in (0, 1):
        return bool(value)  # hydra reads `=1` / `=0` as numbers: the words 1 and 0
    if not isinstance(value, str):
        return value
    text = value.strip()
    if kind is int and text.lstrip("+-").isdigit():
        return int(text)
    if kind is float:
        try:
            return float(text)
        except ValueError:
            return value
    if kind is bool and text.lower() in _BOOL_WORDS:
        return _BOOL_WORDS[text.lower()]
    return value


def parse_bool(name: str, value: Any) -> bool:
    """A bool, or one of the accepted words (``true``/``1``/``yes``/``on``, ``false``/``0``/``no``/``off``, any
    case); anything else (``"flase"``, ``"no way"``, 2) is a ConfigError naming ``name``."""
    decl = Declaration(kind=bool, help="", flags=(), keys=(), check=None, identity=False, choices=None,
                       metavar=None, group="", default=False)
    return bool(check_kind(name, decl, coerce(bool, value)))


# ------------------------------------------------------------------------------------------------ command line


def add_flags(parser: argparse.ArgumentParser | Any, cls: type, *, only: Iterable[str] | None = None,
              exclude: Iterable[str] = (), title: str | None = None, show_defaults: bool = True,
              dests: Mapping[str, str] | None = None) -> None:
    """Add the flags of ``cls``'s options (those with a flag; ``only`` / ``exclude`` by field name) to ``parser``.

    Every flag defaults to None, so :func:`given` sees exactly what the user gave and the declared default
    applies otherwise (a command that wants another default uses ``parser.set_defaults``; one whose defaults come
    from elsewhere passes ``show_defaults=False``). ``dests`` stores some options under other names (for a command
    that hands them to another options class, such as a job spec)."""
    decls = declarations(cls)
    dflt = defaults(cls)
    names = [n for n in (only if only is not None else decls) if n not in set(exclude)]
    groups: dict[str, Any] = {}
    for old, new in getattr(cls, "RENAMED", {}).items():
        if new in names and decls[new].flags and old not in decls:
            parser.add_argument("--" + old.replace("_", "-"), nargs="?", help=argparse.SUPPRESS,
                                action=_renamed(decls[new].flags[0]))
    for name in names:
        decl = decls[name]
        dest = (dests or {}).get(name, name)
        if not decl.flags:
            continue
        title_ = title or decl.group or None
        target = parser
        if title_:
            if title_ not in groups:
                groups[title_] = parser.add_argument_group(title_)
            target = groups[title_]
        shown = dflt.get(name)
        text = decl.help + (f" (default {shown})" if show_defaults and shown not in (None, False, "") else "")
        if decl.kind is bool:  # --x and --no-x whatever the default, so that argv() round-trips
            target.add_argument(*decl.flags, dest=dest, action=argparse.BooleanOptionalAction, default=None,
                                help=text)
        else:
            metavar = decl.metavar or (None if decl.choices else decl.flags[0][2:].upper().replace("-", "_"))
            target.add_argument(*decl.flags, dest=dest, type=decl.kind, choices=decl.choices, default=None,
                                metavar=metavar, help=text)


def _renamed(flag: str) -> type[argparse.Action]:
    """An action that refuses a renamed flag, naming the new one."""
    class Renamed(argparse.Action):
        def __call__(self, parser: Any, namespace: Any, values: Any, option_string: str | None = None) -> None:
            value = f" {values}" if values is not None else ""
            parser.error(f"{option_string} is no longer an option: it was renamed {flag} (give {flag}{value})")
    return Renamed


def given(args: argparse.Namespace, cls: type, *, exclude: Iterable[str] = ()) -> dict[str, Any]:
    """The options of ``cls`` given on the command line (flags left out are not included)."""
    skip = set(exclude)
    out = {}
    for name, decl in declarations(cls).items():
        if decl.flags and name not in skip and getattr(args, name, None) is not None:
            out[name] = getattr(args, name)
    return out


def argv(obj: Any, *, only: Iterable[str] | None = None, exclude: Iterable[str] = ()) -> list[str]:
    """The flags that give ``obj``'s options that differ from their defaults (e.g. for a child ``medret serve``,
    or a command shown in a message). A value goes in the same item (``--query-prefix=query: ``): it may start
    with ``-``."""
    cls = type(obj)
    decls = declarations(cls)
    dflt = defaults(cls)
    skip = set(exclude)
    out: list[str] = []
    for name in (only if only is not None else decls):
        decl = decls[name]
        value = getattr(obj, name)
        if name in skip or not decl.flags or value is None or value == dflt.get(name):
            continue
        flag = decl.flags[0]
        if decl.kind is bool:
            out.append(flag if value else "--no-" + flag[2:])
        else:
            out.append(f"{flag}={value}")
    return out


def identity(obj: Any) -> dict[str, Any]:
    """The options of ``obj`` declared ``identity=True``: what names a Ray actor."""
    return {name: getattr(obj, name) for name, d in declarations(type(obj)).items() if d.identity}


def names(cls: type, group: str | None = None) -> tuple[str, ...]:
    """Field names of ``cls`` (declared options only), optionally of one help group."""
    return tuple(n for n, d in declarations(cls).items() if group is None or d.group == group)
