"""Declared kinds are enforced at every entry, for every option (issue 21 item 3, issue 24 item 24).

Generated from the declarations: every subclass of :class:`medret.options.Options` that medret defines (found by
importing every module of the package, not from a list) and every field of each. A value of the wrong kind is
refused by name, with the expected kind, at each entry: keyword arguments, ``from_mapping`` with the values hydra
gives (``OmegaConf.from_dotlist``), the Search-R1 block, the veRL tool config, and the command line. Good values
round-trip through ``options.argv`` and the flags ``add_flags`` makes.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import pkgutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

import medret
from medret import api, options
from medret.config import RetrieverConfig, validate_retriever_block
from medret.errors import ConfigError
from medret.options import Options, option


def _all_options_classes() -> list[type]:
    for info in pkgutil.walk_packages(medret.__path__, "medret."):
        if not info.name.endswith("__main__"):
            importlib.import_module(info.name)
    found: list[type] = []
    todo = list(Options.__subclasses__())
    while todo:
        cls = todo.pop()
        if cls not in found and cls.__module__.startswith("medret."):
            found.append(cls)
        todo.extend(cls.__subclasses__())
    return sorted(found, key=lambda c: (c.__module__, c.__qualname__))


CLASSES = _all_options_classes()
FIELDS = [(cls, name) for cls in CLASSES for name in options.declarations(cls)]
FLAGGED = [(cls, name) for cls, name in FIELDS if options.declarations(cls)[name].flags]

# wrong values of each kind as Python gives them (keyword arguments, a dict)
PY_BAD: dict[type, list[Any]] = {
    bool: ["no way", "flase", 2, 0.0, [True], b"yes"],
    int: [True, 2.5, "2.5", "abc", [1], b"1", float("nan")],
    float: [True, "abc", float("nan"), "nan", [1.0], b"1"],
    str: [5, ["a"], b"a", True, 2.5],
}
# wrong values as a hydra override writes them (`+retriever.NAME=TEXT`); OmegaConf types them as hydra does
HYDRA_BAD: dict[type, list[str]] = {
    bool: ["flase", "no way", "2", "[true]"],
    int: ["2.5", "abc", "true", "[1]"],
    float: ["abc", "nan", "true", "[1.0]"],
    str: ["5", "[a]", "true", "2.5"],
}
KIND_WORDS = {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}


def bad_values(decl: options.Declaration, table: dict) -> list[Any]:
    values = list(table[decl.kind])
    if decl.digits:  # a job id: a whole number is taken as its text
        values = [v for v in values if not (isinstance(v, int) and not isinstance(v, bool)) and v != "5"]
    if not decl.optional:
        values.append(None if table is PY_BAD else "null")
    return values


def assert_refused_by_name(e: pytest.ExceptionInfo, name: str, decl: options.Declaration) -> None:
    text = str(e.value)
    assert f"{name}=" in text and "is invalid: expected " + KIND_WORDS[decl.kind] in text, text


def test_every_options_class_is_found():
    """The generator sees the classes medret defines (a new one is picked up without editing this test)."""
    names = {c.__qualname__ for c in CLASSES}
    assert {"EngineOptions", "Limits", "HttpOptions", "RayOptions", "RetrieverConfig", "RequestOptions",
            "ServeSettings", "ToolOptions"} <= names
    assert len(FIELDS) > 60


@pytest.mark.parametrize("cls,name", FIELDS, ids=[f"{c.__name__}.{n}" for c, n in FIELDS])
def test_wrong_kind_refused_by_name_from_keyword_arguments_and_mappings(cls, name):
    decl = options.declarations(cls)[name]
    for bad in bad_values(decl, PY_BAD):
        with pytest.raises(ConfigError) as e:
            cls(**{name: bad})
        assert_refused_by_name(e, name, decl)
        with pytest.raises(ConfigError) as e:
            cls.from_mapping({name: bad})
        assert_refused_by_name(e, name, decl)


@pytest.mark.parametrize("cls,name", FIELDS, ids=[f"{c.__name__}.{n}" for c, n in FIELDS])
def test_wrong_kind_refused_by_name_from_hydra_overrides(cls, name):
    decl = options.declarations(cls)[name]
    for text in bad_values(decl, HYDRA_BAD):
        block = OmegaConf.from_dotlist([f"{name}={text}"])
        with pytest.raises(ConfigError) as e:
            cls.from_mapping(block)
        assert_refused_by_name(e, name, decl)


RETRIEVER_FIELDS = [n for c, n in FIELDS if c is RetrieverConfig]


@pytest.mark.parametrize("name", RETRIEVER_FIELDS)
def test_wrong_kind_refused_by_name_in_get_retriever_search_r1_block_and_verl_tool(name):
    from medret.integrations import searchr1_runtime
    from medret.integrations.verl_tool import ToolSettings

    decl = options.declarations(RetrieverConfig)[name]
    cached = dict(api._CACHE)
    for bad in bad_values(decl, PY_BAD):
        with pytest.raises(ConfigError) as e:
            api.get_retriever(**{name: bad})
        assert_refused_by_name(e, name, decl)
        assert api._CACHE == cached  # nothing was built or cached
    for text in bad_values(decl, HYDRA_BAD):
        block = OmegaConf.to_container(OmegaConf.from_dotlist(["url=http://127.0.0.1:8000/retrieve", "topk=3",
                                                               "backend=local", f"{name}={text}"]))
        for entry in (validate_retriever_block, searchr1_runtime.validate_block, searchr1_runtime.retriever_config,
                      lambda b: ToolSettings.from_config({"type": "native", **b})):
            if name in ("backend", "url") and entry is searchr1_runtime.retriever_config:
                continue  # the backend decides which reader runs, and url is http's: validate_block covers them
            with pytest.raises(ConfigError) as e:
                entry(block)
            assert_refused_by_name(e, name, decl)


def _good_value(cls: type, name: str) -> list[Any]:
    """Values other than the default that pass the option's own check (both bools; None for an optional bool)."""
    decl = options.declarations(cls)[name]
    default = decl.default
    if decl.kind is bool:
        return [v for v in (True, False) if v != default]
    if decl.choices:
        return [[c for c in decl.choices if c != default][-1]]
    special = {"like": "e5", "url": "http://h:1", "backend": "ray", "reranker_like": "ms-marco-MiniLM-L12-v2"}
    if name in special:
        return [special[name]]
    if decl.kind is int:
        return [(default or 1) + 1]
    if decl.kind is float:
        return [(default or 1.0) + 0.5]
    return ["-x=y z"]  # starts with '-' and holds '=' and a space: still one argv item


@pytest.mark.parametrize("cls,name", FLAGGED, ids=[f"{c.__name__}.{n}" for c, n in FLAGGED])
def test_every_flagged_option_round_trips_through_argv(cls, name):
    for value in _good_value(cls, name):
        companion = {"backend": "http"} if (cls, name) == (RetrieverConfig, "url") else {}  # a url means http
        obj = cls(**{name: value, **companion})
        words = options.argv(obj)
        parser = argparse.ArgumentParser()
        options.add_flags(parser, cls)
        back = cls.from_args(parser.parse_args(words))
        assert back == obj, (words, back)
        assert getattr(back, name) == value and type(getattr(back, name)) is type(value)


@pytest.mark.parametrize("cls,name", FLAGGED, ids=[f"{c.__name__}.{n}" for c, n in FLAGGED])
def test_wrong_kind_on_the_command_line_is_refused_by_flag(cls, name, capsys):
    decl = options.declarations(cls)[name]
    flag = decl.flags[0]
    parser = argparse.ArgumentParser(prog="medret")
    options.add_flags(parser, cls)
    word = {bool: "flase", int: "2.5", float: "abc", str: None}[decl.kind]
    if word is None:
        return  # every word is a string
    with pytest.raises(SystemExit):
        parser.parse_args([f"{flag}={word}"])
    assert flag in capsys.readouterr().err
    if decl.kind is float:  # argparse reads nan as a float: the declaration refuses it
        with pytest.raises(ConfigError) as e:
            cls.from_args(parser.parse_args([f"{flag}=nan"]))
        assert_refused_by_name(e, name, decl)


@dataclass(frozen=True)
class _Switches(Options):
    on_by_default: bool = option(True, "a switch that is on unless turned off")
    off_by_default: bool = option(False, "a switch that is off unless turned on")
    unset: bool | None = option(None, "a switch with no default", kind=bool)


@pytest.mark.parametrize("values", [dict(on_by_default=False), dict(off_by_default=True),
                                    dict(on_by_default=False, off_by_default=True, unset=False), dict(unset=True)])
def test_a_default_true_bool_round_trips_as_no_flag(values):
    """argv() wrote --no-on-by-default for a default-True bool, and no parser defined it."""
    obj = _Switches(**values)
    words = options.argv(obj)
    if values.get("on_by_default") is False:
        assert "--no-on-by-default" in words
    parser = argparse.ArgumentParser()
    options.add_flags(parser, _Switches)
    assert _Switches.from_args(parser.parse_args(words)) == obj


def test_path_objects_are_taken_as_their_text():
    cfg = RetrieverConfig(db_dir=Path("/data/medrag"), cache_dir=Path("/scratch"))
    assert (cfg.db_dir, cfg.cache_dir) == ("/data/medrag", "/scratch") and type(cfg.db_dir) is str
    assert RetrieverConfig.from_mapping({"db_dir": Path("/d")}).db_dir == "/d"
    with pytest.raises(ConfigError, match=r"db_dir=PosixPath\(|db_dir=b'/d' is invalid"):
        RetrieverConfig(db_dir=b"/d")


def test_a_job_id_may_be_a_number():
    """hydra and YAML read `ray_job=12345` (a SLURM job id) as a number: it is the job id's text."""
    assert RetrieverConfig.from_mapping(OmegaConf.from_dotlist(["ray_job=12345"])).ray_job == "12345"
    with pytest.raises(ConfigError, match="ray_job=True is invalid"):
        RetrieverConfig(ray_job=True)


@pytest.mark.parametrize("kwargs, named", [
    (dict(allow_cpu_fallback="flase"), "allow_cpu_fallback='flase'"),
    (dict(allow_cpu_fallback="no way"), "allow_cpu_fallback='no way'"),
    (dict(db_dir=["a"]), "db_dir=['a']"), (dict(db_dir=b"/data"), "db_dir=b'/data'"), (dict(db_dir=5), "db_dir=5"),
    (dict(cache_dir=["a"]), "cache_dir=['a']"), (dict(cache_dir=b"/c"), "cache_dir=b'/c'"),
])
def test_issue_24_item_24_examples(kwargs, named):
    """`allow_cpu_fallback='flase'` counted as true; a list or bytes for db_dir/cache_dir gave a raw TypeError."""
    with pytest.raises(ConfigError) as e:
        api.get_retriever(**kwargs)
    assert named + " is invalid: expected" in str(e.value)
    words = {"true": True, "yes": True, "On": True, "0": False, "off": False, 1: True, 0: False}
    for word, value in words.items():
        assert RetrieverConfig.from_mapping({"allow_cpu_fallback": word}).allow_cpu_fallback is value
    for text, value in (("1", True), ("0", False), ("yes", True), ("false", False)):  # as hydra types them
        block = OmegaConf.from_dotlist([f"allow_cpu_fallback={text}"])
        assert RetrieverConfig.from_mapping(block).allow_cpu_fallback is value


def test_request_keys_are_declared_and_checked():
    """topk in a retriever block is the request's (RequestOptions, declared request=True): accepted, not part
    of the retriever, and checked by kind (it was ignored whatever it held)."""
    assert options.request_keys(RetrieverConfig) == {"topk": "topk", "retrieval_topk": "topk"}
    assert RetrieverConfig.from_mapping({"topk": "5", "retrieval_topk": 2}) == RetrieverConfig()
    for key, bad in (("topk", "abc"), ("topk", 2.5), ("retrieval_topk", True), ("topk", 0)):
        with pytest.raises(ConfigError, match=f"{key}="):
            RetrieverConfig.from_mapping({key: bad})


def test_build_commands_leave_out_exactly_the_search_only_options():
    """SEARCH_ONLY is the options declared search_only=True: how an index is searched, not what is built."""
    from medret.index import hints

    search_only = {"nprobe", "ef_search", "refine_factor", "rrf_k", "fusion_depth",  # what changes a search only
                   "reranker", "rerank_depth", "reranker_like", "reranker_format", "reranker_max_length"}
    assert set(hints.SEARCH_ONLY) == search_only
    cfg = RetrieverConfig(nprobe=9, ef_search=33, refine_factor=4, rrf_k=61, fusion_depth=12, batch_size=17,
                          doc_prefix="p: ", db_dir="/d", reranker="/m/ce", rerank_depth=20)
    command = hints.build_command(cfg)
    for flag in ("--nprobe", "--ef-search", "--refine-factor", "--rrf-k", "--fusion-depth", "--rerank"):
        assert flag not in command
    for word in ("--batch-size=17", "--db-dir=/d", "'--doc-prefix=p: '"):
        assert word in command


def test_unknown_key_names_the_closest_valid_one():
    with pytest.raises(ConfigError) as e:
        RetrieverConfig.from_mapping({"corpus_nme": "sample", "allow_cpu_fallbak": True})
    assert "'allow_cpu_fallbak' -> 'allow_cpu_fallback'" in str(e.value)
    assert "'corpus_nme' -> 'corpus_name'" in str(e.value)
    with pytest.raises(ConfigError, match=r"'topK' -> 'topk'"):
        validate_retriever_block({"url": "http://x", "topK": 3})
    validate_retriever_block({"url": "http://x", "topk": 3, "local": "true", "corpus": "sample"})


def test_model_option_names_are_derived_from_the_groups():
    from medret.config import MODEL_OPTION_NAMES

    assert MODEL_OPTION_NAMES[:3] == ("query_model", "doc_model", "models_dir")
    assert {"like", "pooling", "query_prefix", "doc_prefix", "normalize", "max_length", "doc_format"} \
        <= set(MODEL_OPTION_NAMES)
    assert not {"corpus_name", "nprobe", "device", "batch_size"} & set(MODEL_OPTION_NAMES)


def test_fields_are_declared():
    """Every field of an options class is a declared option (a plain field would escape every check here)."""
    for cls in CLASSES:
        assert {f.name for f in dataclasses.fields(cls)} == set(options.declarations(cls)), cls
