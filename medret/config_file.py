"""Settings files (YAML, or JSON by its suffix), read the one safe way every medret entry point uses.

PyYAML's ``safe_load`` applies YAML 1.1's implicit types, which turn what a user wrote into something else:
``time: 72:00:00`` is the sexagesimal number 259200, ``account: 0123`` the octal 83, ``partition: no`` the bool
False, ``retriever_gpus: [true]`` GPU 1. And anchors/aliases expand without bound (a few hundred bytes of nested
aliases become gigabytes). Here instead:

* every plain scalar stays the string it was written as (``null``, ``~`` and an empty value are None); the
  declared kind of the option that reads it turns it into a number or a bool (:func:`medret.options.coerce`),
  exactly as a hydra override or a flag is read, so ``.inf``, ``[true]`` or ``72:00:00`` for a number are refused
  by name there;
* anchors and aliases (``&name`` / ``*name`` / ``<<:``) are refused as soon as the parser meets the first one;
* explicit tags (``!!int``, ``!!python/...``, ``!custom``), duplicate keys, non-scalar keys, files over
  :data:`MAX_BYTES` and undecodable bytes are refused;
* a value that must be a scalar but is a list or mapping (:func:`require_scalars`) is refused.

Every error is a :class:`~medret.errors.ConfigError` naming the file, the key (or line) and the fix.
"""
from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any, Iterator, Mapping

import yaml

from medret.errors import ConfigError

MAX_BYTES = 4 * 1024 * 1024  # a settings file; anything larger is not one
_STR = "tag:yaml.org,2002:str"
_NULL = "tag:yaml.org,2002:null"
_SEQ = "tag:yaml.org,2002:seq"
_MAP = "tag:yaml.org,2002:map"
_KINDS: dict[type, str] = {list: "a list", dict: "a mapping"}


class _Refused(Exception):
    """Raised inside the loader; turned into a ConfigError naming the file."""


class _Loader(yaml.SafeLoader):
    """SafeLoader whose only implicit type is null, and which refuses anchors and aliases when it meets them."""

    yaml_implicit_resolvers: dict = {}

    def compose_node(self, parent: Any, index: Any) -> Any:
        path = getattr(self, "_medret_path", [])
        step = index.value if isinstance(index, yaml.ScalarNode) else f"[{index}]" if isinstance(index, int) else None
        here = _join(path + ([step] if step is not None else [])) or "the top level"
        event = self.peek_event()
        anchor = getattr(event, "anchor", None)
        refused = None if anchor is None else ("alias *" if isinstance(event, yaml.AliasEvent) else "anchor &") + anchor
        if refused:
            raise _Refused(f"{here} ({_where(event)}): {refused} is not accepted (medret settings files allow no "
                           "anchors or aliases: they can expand without bound); write the value out in full")
        self._medret_path = path + ([step] if step is not None else [])
        try:
            return super().compose_node(parent, index)
        finally:
            self._medret_path = path


def _join(steps: list[str]) -> str:
    out = ""
    for step in steps:
        out += step if step.startswith("[") or not out else "." + step
    return out


_Loader.add_implicit_resolver(_NULL, re.compile(r"^(?:~|null|Null|NULL|)$"), ["~", "n", "N", ""])


def _where(event_or_node: Any) -> str:
    mark = event_or_node.start_mark
    return f"line {mark.line + 1}, column {mark.column + 1}"


def load(path: str | os.PathLike[str]) -> Any:
    """The document in ``path``: strings as written, None, lists and dicts (JSON files: as JSON reads them,
    without NaN/Infinity). Raises :class:`ConfigError` naming the file and the fix."""
    p = Path(path).expanduser()
    name = str(p)
    try:
        size = p.stat().st_size
        if size > MAX_BYTES:
            raise ConfigError(f"{name}: {size} bytes is too large for a settings file (at most {MAX_BYTES}); "
                              "give the YAML file of settings, not a data file")
        raw = p.read_bytes()
    except OSError as e:
        raise ConfigError(f"{name} cannot be read ({e.strerror}); give the path of a YAML file") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{name} is not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    if p.suffix.lower() == ".json":
        return _load_json(name, text)
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_node(node, "")
        return loader.construct_document(node)
    except _Refused as e:
        raise ConfigError(f"{name}: {e}") from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        raise ConfigError(f"{name}: {where}not valid YAML ({e.problem or e.context}); fix the syntax there (a "
                          "value holding ': ' or starting with a special character needs quotes)") from None
    except (yaml.YAMLError, RecursionError) as e:
        raise ConfigError(f"{name}: not valid YAML ({type(e).__name__}: {e}); fix the file") from None
    finally:
        loader.dispose()


def _check_node(node: Any, key: str) -> None:
    """Refuse explicit tags, duplicate or non-scalar keys; ``key`` is the node's place (``a.b[0]``)."""
    here = key or "the top level"
    if isinstance(node, yaml.ScalarNode):
        if node.tag not in (_STR, _NULL):
            raise _Refused(f"{here} ({_where(node)}): the tag {node.tag.replace('tag:yaml.org,2002:', '!!')} is not "
                           "accepted; write the plain value (the option's declared kind reads it)")
        return
    if isinstance(node, yaml.SequenceNode):
        if node.tag != _SEQ:
            raise _Refused(f"{here} ({_where(node)}): the tag {node.tag} is not accepted; write a plain list")
        for i, item in enumerate(node.value):
            _check_node(item, f"{key}[{i}]")
        return
    if node.tag != _MAP:
        raise _Refused(f"{here} ({_where(node)}): the tag {node.tag} is not accepted; write a plain mapping")
    seen: set[str] = set()
    for k, v in node.value:
        if not isinstance(k, yaml.ScalarNode) or k.tag != _STR:
            raise _Refused(f"{here} ({_where(k)}): a key must be plain text, not a list, mapping or null")
        child = f"{key}.{k.value}" if key else k.value
        if k.value in seen:
            raise _Refused(f"{child} ({_where(k)}) is given twice; keep one")
        seen.add(k.value)
        _check_node(v, child)


def _load_json(name: str, text: str) -> Any:
    def constant(word: str) -> Any:
        raise ConfigError(f"{name}: {word} is not accepted in a settings file; give a finite number")

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in items:
            if k in out:
                raise ConfigError(f"{name}: key {k!r} is given twice; keep one")
            out[k] = v
        return out

    try:
        return json.loads(text, parse_constant=constant, object_pairs_hook=pairs)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{name}: line {e.lineno}, column {e.colno}: not valid JSON ({e.msg}); fix the syntax "
                          "there") from None
    except RecursionError:
        raise ConfigError(f"{name}: nested too deeply to be a settings file") from None


def load_mapping(path: str | os.PathLike[str], what: str) -> dict[str, Any]:
    """The mapping in ``path`` (an empty file is an empty mapping); ``what`` says what it should hold, for the
    message when it holds something else (``"job options (layout: ..., nodes: ...)"``)."""
    data = load(path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{Path(path).expanduser()}: the file holds {_kind(data)}; it must hold a mapping of "
                          f"{what}, one `key: value` per line")
    return data


def require_scalars(data: Mapping[str, Any], path: str | os.PathLike[str], *, containers: Mapping[str, type] = {},
                    prefix: str = "") -> None:
    """Refuse a value that is a list or mapping where a single value is wanted: every key of ``data`` but those in
    ``containers`` (``{key: list or dict}``), which hold that container of single values (a list's key may also
    hold one single value)."""
    name = str(Path(path).expanduser())
    for key, value in data.items():
        want = containers.get(key)
        label = f"{prefix}{key}"
        if want is None:
            if isinstance(value, (list, dict)):
                raise ConfigError(f"{name}: {label} holds {_kind(value)}; it takes a single value: write "
                                  f"`{key}: VALUE`")
            continue
        if value is not None and not isinstance(value, want) and (want is dict or isinstance(value, dict)):
            raise ConfigError(f"{name}: {label}={value!r} is {_kind(value)}; it takes {_KINDS[want]} of single "
                              f"values")
        for inner, item in _items(value):
            if isinstance(item, (list, dict)):
                raise ConfigError(f"{name}: {label}{inner} holds {_kind(item)}; each entry of {label} is a single "
                                  "value")


def _items(value: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        return ((f".{k}", v) for k, v in value.items())
    if isinstance(value, list):
        return ((f"[{i}]", v) for i, v in enumerate(value))
    return iter(())


def _kind(value: Any) -> str:
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, float) and not math.isfinite(value):
        return "a non-finite number"
    return f"a single value ({type(value).__name__})"


def naming(path: str | os.PathLike[str], error: ConfigError) -> ConfigError:
    """``error`` with the settings file it came from in front (a value read from the file was refused)."""
    return ConfigError(f"{Path(path).expanduser()}: {error}")
