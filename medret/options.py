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


def option(default: Any, help: str, *, kind: type | None = None, flag: str | None | bool = True,
           aliases: Iterable[str] = (), keys: Iterable[str] = (), check: Check | None = None,
           identity: bool = False, choices: Iterable[str] | None = None, metavar: str | None = None,
           group: str = "") -> Any:
    """A dataclass field declaring one option.

    ``kind`` is int, float, str or bool (taken from the default when it is not None). ``flag``: True for
    ``--name-with-dashes``, a string for another flag, False/None for none; ``aliases`` are further flags.
    ``keys`` are further names accepted by :meth:`Options.from_mapping`. ``check(name, value)`` raises
    :class:`ConfigError`; ``choices`` adds a check of its own. ``identity``: part of a Ray actor's name.
    """
    if kind is None:
        if default is None:
            raise TypeError(f"option(None, {help!r}) needs kind=")
        kind = type(default)
    if kind not in (int, float, str, bool):
        raise TypeError(f"option kind {kind!r} is not one of int, float, str, bool")
    decl = Declaration(kind=kind, help=help, flags=(), keys=tuple(keys), check=check, identity=identity,
                       choices=tuple(choices) if choices is not None else None, metavar=metavar, group=group)
    # the flag needs the field's name: filled in by _declarations()
    meta = {_KEY: decl, "flag": flag, "aliases": tuple(aliases)}
    return dataclasses.field(default=default, metadata=meta)


OptionsT = TypeVar("OptionsT", bound="Options")


class Options:
    """Base of the option classes: validation, reading mappings, picking out a group.

    Subclasses are frozen dataclasses whose fields are made by :func:`option`."""

    REQUEST_KEYS: ClassVar[tuple[str, ...]] = ()  # per-request keys a block may carry; ignored by from_mapping
    RENAMED: ClassVar[dict[str, str]] = {}  # old option name -> new one: the old key / flag is refused, naming it

    def __post_init__(self) -> None:
        for name, decl in declarations(type(self)).items():
            value = getattr(self, name)
            if decl.choices is not None and value is not None and value not in decl.choices:
                raise ConfigError(f"{name}={value!r} is invalid: choose one of {', '.join(decl.choices)}")
            if decl.check is not None:
                decl.check(name, value)

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
            cached[f.name] = dataclasses.replace(decl, flags=flags)
        _CACHE[cls] = cached
    return cached


_CACHE: dict[type, dict[str, Declaration]] = {}


def defaults(cls: type) -> dict[str, Any]:
    return {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}


# ------------------------------------------------------------------------------------------------ mappings


def normalize(cls: type, data: dict[str, Any], overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The keyword arguments of ``cls`` a mapping describes: other spellings renamed, request keys dropped,
    strings turned into the declared kind (hydra and the environment give strings); unknown keys refused."""
    decls = declarations(cls)
    out: dict[str, Any] = {}
    renames = {key: name for name, d in decls.items() for key in d.keys}
    ignored = set(getattr(cls, "REQUEST_KEYS", ()))
    merged = {**data, **(overrides or {})}
    for old, new in getattr(cls, "RENAMED", {}).items():
        if old in merged and old not in decls:
            raise ConfigError(f"{old}={merged[old]!r} is no longer an option: it was renamed {new} "
                              f"(give {new}={merged[old]!r})")
    for key, value in merged.items():
        if key in ignored:
            continue
        name = renames.get(key, key) if key not in decls else key
        if name != key and name in merged:
            name = key  # both spellings given: the other one is reported as unknown
        out[name] = value
    valid = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(out) - valid)
    if unknown:
        raise ConfigError(f"unknown retriever option(s) {unknown}: valid options are {sorted(valid)}")
    for name, value in out.items():
        decl = decls.get(name)
        if decl is not None:
            out[name] = coerce(decl.kind, value)
    return out


def coerce(kind: type, value: Any) -> Any:
    """A string from hydra or the environment as the declared kind (``"256"`` → 256, ``"true"`` → True); a path
    object as its string. Anything else is left for the check to judge."""
    if hasattr(value, "__fspath__") and kind is str:
        return str(value.__fspath__())
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


def truthy(value: Any) -> bool:
    """Search-R1 / hydra truth: ``true``/``1``/``yes``/``on`` (any case) or a true value."""
    if isinstance(value, str):
        return _BOOL_WORDS.get(value.strip().lower(), False)
    return bool(value)


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
        if decl.kind is bool and dflt.get(name) is None:
            target.add_argument(*decl.flags, dest=dest, action=argparse.BooleanOptionalAction, default=None,
                                help=text)
        elif decl.kind is bool:
            target.add_argument(*decl.flags, dest=dest, action="store_const", const=not dflt.get(name),
                                default=None, help=text)
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
