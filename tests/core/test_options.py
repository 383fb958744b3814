"""Each option is declared once (medret.options / medret.config): the flags, the mapping keys, child-process argv,
the Ray actor identity and validation all come from that declaration, so they cannot disagree."""
from __future__ import annotations

import dataclasses

import pytest

from medret import cli, options
from medret.config import EngineOptions, HttpOptions, Limits, RayOptions, RetrieverConfig
from medret.errors import ConfigError
from medret.serve.settings import ServeSettings
from medret.transports.ray import actor_base_name

# a value other than the default for every option that has a flag (chosen by hand, valid for its check)
NON_DEFAULT = {
    "corpus_name": "MedCorp", "retriever_name": "RRF-2", "db_dir": "/data/medrag", "cache_dir": "/scratch/c",
    "device": "cuda:1", "gpu_id": 3, "allow_cpu_fallback": True, "batch_size": 64, "query_model": "/m/q",
    "doc_model": "/m/d", "models_dir": "/m", "like": "e5", "pooling": "mean", "query_prefix": "-q: ",
    "doc_prefix": "p: ", "normalize": False, "max_length": 128, "query_max_length": 64, "doc_max_length": 300,
    "doc_format": "pair", "nprobe": 8, "ef_search": 64, "refine_factor": 0, "rrf_k": 60, "fusion_depth": 20,
    "reranker": "/m/ce", "rerank_depth": 20, "reranker_like": "ms-marco-MiniLM-L12-v2", "reranker_format": "searchr1",
    "reranker_max_length": 256,
    "max_topk": 50, "max_batch": 99, "max_query_chars": 500, "max_answer_docs": 1000, "max_answer_bytes": 10**6,
    "timeout": 7.5, "url": "http://h:1", "address_file": "/tmp/a", "retries": 2, "total_timeout": 30.0,
    "ray_address": "h:6379", "ray_namespace": "ns", "ray_num_gpus": 1.0, "ray_placement": "retriever-node",
    "ray_shards": 2, "ray_job": "j7", "ray_max_restarts": 2, "backend": "ray",
}


def flagged(cls: type) -> list[str]:
    return [n for n, d in options.declarations(cls).items() if d.flags]


def test_every_flagged_option_has_a_non_default_value_here():
    assert sorted(flagged(RetrieverConfig)) == sorted(NON_DEFAULT)
    defaults = options.defaults(RetrieverConfig)
    assert all(NON_DEFAULT[n] != defaults[n] for n in NON_DEFAULT)


def test_argv_and_flags_round_trip_every_option():
    """A child process given ``argv(config)`` rebuilds the same config (the bench server, messages)."""
    import argparse

    want = RetrieverConfig(**NON_DEFAULT)
    parser = argparse.ArgumentParser()
    options.add_flags(parser, RetrieverConfig)
    args = parser.parse_args(options.argv(want))
    assert RetrieverConfig.from_args(args) == want
    assert options.argv(RetrieverConfig()) == []  # defaults are not repeated


@pytest.mark.parametrize("command", [["search", "q"], ["index", "build"], ["serve"], ["doctor"],
                                     ["rollout-smoke"], ["bench"], ["ray", "up"], ["ray", "down"], ["ray", "info"]])
def test_every_command_that_builds_a_retriever_takes_every_engine_option(command):
    engine = {n: NON_DEFAULT[n] for n in flagged(EngineOptions)}
    argv = command + options.argv(EngineOptions(**engine))
    args = cli.build_parser().parse_args(argv)
    assert {n: getattr(args, n) for n in engine} == engine


def test_ray_commands_share_the_identity_flags():
    """`ray up`, `ray info` and `ray down` given the same flags name the same actor (they once did not)."""
    flags = ["--corpus", "MedCorp", "--retriever", "MedCPT", "--device", "cuda", "--num-gpus", "1", "--job", "j",
             "--shards", "2", "--placement", "retriever-node", "--like", "e5"]
    names = set()
    for sub in ("up", "info", "down"):
        args = cli.build_parser().parse_args(["ray", sub, *flags])
        names.add(actor_base_name(RetrieverConfig.from_args(args, backend="ray")))
    assert len(names) == 1
    [name] = names
    assert name.startswith("medret:MedCorp:MedCPT:j:")


def test_identity_is_exactly_the_declared_fields():
    base = RetrieverConfig(backend="ray", ray_job="j")
    ident = set(options.identity(base))
    assert {"corpus_name", "retriever_name", "device", "ray_num_gpus", "ray_shards", "like", "rrf_k"} <= ident
    assert not ident & {"timeout", "batch_size", "allow_cpu_fallback", "ray_address", "max_topk", "gpu_id"}
    values = {**NON_DEFAULT, "backend": "ray", "url": None}
    for name in options.names(RetrieverConfig):
        if name in ("backend", "ray_job", "url", "address_file", "token"):
            continue
        changed = base.replace(**{name: values[name] if name in values else not getattr(base, name)})
        assert (actor_base_name(changed) != actor_base_name(base)) == (name in ident), name


def test_search_r1_block_keys_and_hydra_strings():
    cfg = RetrieverConfig.from_mapping({"corpus": "MedCorp", "retriever": "MedCPT", "local": "true", "topk": 5,
                                        "gpu_id": "3", "batch_size": "64", "normalize": "false", "timeout": "2.5",
                                        "retrieval_topk": 3, "url": "http://x:8000/retrieve"})
    assert (cfg.corpus_name, cfg.retriever_name, cfg.backend, cfg.gpu_id, cfg.batch_size, cfg.normalize,
            cfg.timeout) == ("MedCorp", "MedCPT", "local", 3, 64, False, 2.5)
    assert RetrieverConfig.from_mapping({"local": False, "url": "http://x"}).backend == "http"
    with pytest.raises(ConfigError, match="unknown retriever option"):  # both spellings: one is unknown
        RetrieverConfig.from_mapping({"corpus": "A", "corpus_name": "B"})


def test_one_rule_for_the_local_alias():
    """`get_retriever(local=True, backend="ray")` once quietly used Ray while the Search-R1 block refused it."""
    from medret import get_retriever
    from medret.integrations import searchr1_runtime as rt

    with pytest.raises(ConfigError, match="local=True contradicts backend='ray'"):
        get_retriever(local=True, backend="ray")
    with pytest.raises(ConfigError, match="retriever.local=True contradicts retriever.backend='ray'"):
        rt.retriever_config({"local": True, "backend": "ray"})


@pytest.mark.parametrize("cls,name,bad", [(RetrieverConfig, "gpu_id", -1), (RetrieverConfig, "batch_size", 0),
                                          (RetrieverConfig, "retries", -1), (RetrieverConfig, "timeout", 0),
                                          (RetrieverConfig, "ray_num_gpus", -0.5), (Limits, "max_batch", True),
                                          (RayOptions, "ray_placement", "nowhere"), (HttpOptions, "url", 5),
                                          (ServeSettings, "max_wait_ms", 20_000.0),
                                          (ServeSettings, "default_topk", 0)])
def test_each_option_is_checked_by_its_declaration(cls, name, bad):
    with pytest.raises(ConfigError, match=f"{name}={bad!r} is invalid"):
        cls(**{name: bad})


def test_groups_are_taken_from_the_whole_config():
    cfg = RetrieverConfig(**NON_DEFAULT)
    http, ray = HttpOptions.of(cfg), RayOptions.of(cfg)
    assert (http.url, http.retries, http.timeout) == ("http://h:1", 2, 7.5)
    assert (ray.ray_address, ray.ray_shards, ray.timeout) == ("h:6379", 2, 7.5)
    assert {f.name for f in dataclasses.fields(RetrieverConfig)} == (
        set(options.names(EngineOptions)) | set(options.names(Limits)) | set(options.names(HttpOptions))
        | set(options.names(RayOptions)) | {"backend"})
