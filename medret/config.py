"""RetrieverConfig: every setting of a retriever in one frozen, hashable dataclass.

Built from keyword arguments, a hydra/omegaconf block (Search-R1's ``retriever`` config) or CLI flags.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, fields
from typing import Any, Mapping

from medret.errors import ConfigError

BACKENDS = ("local", "http", "ray")
# The request limits above, each declared once: `medret serve --max-topk ...` and the docs come from here.
LIMITS = {
    "max_topk": "largest topk a request may ask for",
    "max_batch": "most queries in one request",
    "max_query_chars": "longest query, in characters",
    "max_answer_docs": "most documents one answer may hold (queries x topk); larger requests are refused (413)",
    "max_answer_bytes": "largest estimated answer in bytes (queries x topk x the corpus's mean document size); "
                        "larger requests are refused (413)",
}
RAY_PLACEMENTS = ("any", "per-node", "retriever-node")


@dataclass(frozen=True)
class Option:
    """One encoder option: the RetrieverConfig field, its CLI flag (``--`` + name with ``-``), type and help."""

    name: str
    type: type
    help: str
    choices: tuple[str, ...] | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


# How a dense retriever encodes: declared here once; `medret` flags (medret.commands.add_encoder_flags), the
# bench server's flags, Ray actor names and `medret doctor` are derived from this table. None = the recipe's value.
ENCODER_OPTIONS: tuple[Option, ...] = (
    Option("like", str, "give a local model folder a named retriever's recipe: e5 (Search-R1), MedCPT, Contriever "
           "or SPECTER (MedRAG): pooling, prefixes, normalisation, token limits, document text format, metric"),
    Option("pooling", str, "pooling of a local model folder (without --like)", ("cls", "mean")),
    Option("query_prefix", str, "text put before every query (e5: 'query: ')"),
    Option("doc_prefix", str, "text put before every document (e5: 'passage: ')"),
    Option("normalize", bool, "L2-normalise query and document vectors (e5: on); --no-normalize turns it off"),
    Option("max_length", int, "token limit of queries and documents (e5: 256; a local folder: 512)"),
    Option("query_max_length", int, "token limit of queries (overrides --max-length; MedCPT: 64)"),
    Option("doc_max_length", int, "token limit of documents (overrides --max-length; MedCPT: 512)"),
    Option("doc_format", str, "how a document's title and text become the encoder's input: searchr1 (the quoted "
           "title, a newline, the text: e5), pair (MedCPT), contriever, specter, concat (MedRAG's default)",
           ("searchr1", "pair", "contriever", "specter", "concat")),
)
ENCODER_OPTION_NAMES = tuple(o.name for o in ENCODER_OPTIONS)


def encoder_argv(values: Mapping[str, Any]) -> list[str]:
    """The ``medret`` flags that give ``values``' encoder options (those not None), e.g. for a child ``medret serve``
    or a command printed in a message (``--query-prefix=query: `` as one item: a value may start with ``-``)."""
    out: list[str] = []
    for o in ENCODER_OPTIONS:
        v = values.get(o.name)
        if v is None:
            continue
        out.append((o.flag if v else "--no-" + o.flag[2:]) if o.type is bool else f"{o.flag}={v}")
    return out


@dataclass(frozen=True)
class RetrieverConfig:
    corpus_name: str = "sample"
    retriever_name: str = "BM25"
    db_dir: str | None = None
    # build and look for document stores and indexes here instead of beside the chunk files (a read-only db_dir);
    # None: DB_DIR/<source>/medret/ (the sample corpus: $MEDRET_CACHE). See medret.corpus.registry.artifacts_in
    cache_dir: str | None = None
    # device: "cpu", "cuda", "cuda:N"; gpu_id: a physical GPU id (as nvidia-smi numbers it)
    device: str | None = None
    gpu_id: int | None = None
    allow_cpu_fallback: bool = False
    backend: str = "local"
    # http backend
    url: str | None = None
    address_file: str | None = None
    token: str | None = None
    timeout: float = 60.0          # seconds: a total deadline for each attempt (connect, send, whole answer)
    retries: int = 5
    total_timeout: float | None = None  # seconds across every attempt and backoff; None: no cap beyond those
    # encoders: local model paths override the hub names of the retriever's spec
    query_model: str | None = None
    doc_model: str | None = None
    # folder of downloaded models, <models_dir>/<model id> (`medret models download`); None: $MEDRET_MODELS_DIR,
    # else $MEDRET_CACHE/models. Read when a model is loaded; see medret.encoders.locate
    models_dir: str | None = None
    # how a dense retriever encodes (ENCODER_OPTIONS): None = the named retriever's (or --like's) recipe
    like: str | None = None
    pooling: str | None = None
    query_prefix: str | None = None
    doc_prefix: str | None = None
    normalize: bool | None = None
    max_length: int | None = None
    query_max_length: int | None = None
    doc_max_length: int | None = None
    doc_format: str | None = None
    batch_size: int = 256
    fp16: bool | None = None
    # approximate dense indexes (faiss): IVF lists probed, HNSW search depth, exact re-rank factor of lossy
    # indexes (0 = off); None = the index's own defaults (nprobe ~ nlist/16, efSearch 128, rerank 10)
    nprobe: int | None = None
    ef_search: int | None = None
    rerank: int | None = None
    # fusion
    rrf_k: int = 100
    fusion_depth: int | None = None
    # ---- limits of one request: in-process calls and `medret serve` (whose flags are made from LIMITS)
    max_topk: int = 1000
    max_batch: int = 16384
    max_query_chars: int = 8192
    max_answer_docs: int = 524_288            # queries x topk of one request
    max_answer_bytes: int = 256 * 1024 ** 2   # estimated size of one answer's JSON
    # build what is missing (document store, BM25; dense indexes of small corpora) on first use
    auto_build: bool = True
    # ray backend
    ray_address: str | None = None
    ray_namespace: str = "medret"
    ray_num_gpus: float = 0.0
    ray_placement: str = "any"
    ray_shards: int = 1
    # names the job's actors; default $MEDRET_RAY_JOB, else $SLURM_JOB_ID (workers that do not inherit the
    # driver's environment, such as veRL tool workers, can pass it explicitly)
    ray_job: str | None = None

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(f"backend={self.backend!r} is invalid: choose one of {', '.join(BACKENDS)}")
        if self.backend == "http" and not (self.url or self.address_file):
            raise ConfigError("backend='http' needs url='http://host:port' (or address_file=PATH written by "
                              "`medret serve --address-file`)")
        for name in ("rrf_k", "batch_size", "retries", "ray_shards", *LIMITS):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < (0 if name == "retries" else 1):
                raise ConfigError(f"{name}={v!r} is invalid: it must be a positive whole number")
        for name in ("timeout", "total_timeout"):
            v = getattr(self, name)
            if (v is not None or name == "timeout") and (isinstance(v, bool) or not isinstance(v, (int, float))
                                                          or not 0 < v < float("inf")):
                raise ConfigError(f"{name}={v!r} is invalid: a number of seconds > 0"
                                  + (" or None (no overall deadline)" if name == "total_timeout" else ""))
        for name in ("nprobe", "ef_search", "rerank"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < (0 if name == "rerank" else 1)):
                raise ConfigError(f"{name}={v!r} is invalid: a {'non-negative' if name == 'rerank' else 'positive'} "
                                  "whole number, or None for the index's default")
        if self.fusion_depth is not None and (not isinstance(self.fusion_depth, int) or self.fusion_depth < 1):
            raise ConfigError(f"fusion_depth={self.fusion_depth!r} is invalid: a positive whole number or None")
        if self.gpu_id is not None and (not isinstance(self.gpu_id, int) or isinstance(self.gpu_id, bool)
                                        or self.gpu_id < 0):
            raise ConfigError(f"gpu_id={self.gpu_id!r} is invalid: a GPU number such as 0 or 3")
        if self.ray_placement not in RAY_PLACEMENTS:
            raise ConfigError(f"ray_placement={self.ray_placement!r} is invalid: choose one of "
                              f"{', '.join(RAY_PLACEMENTS)}")
        self._check_encoder_options()

    def _check_encoder_options(self) -> None:
        from medret.encoders.specs import known_names

        for o in ENCODER_OPTIONS:
            v = getattr(self, o.name)
            if v is None:
                continue
            if o.type is int and (not isinstance(v, int) or isinstance(v, bool) or v < 2):
                raise ConfigError(f"{o.name}={v!r} is invalid: a token count >= 2 (e.g. 256), or None for the "
                                  "recipe's")
            if o.type is bool and not isinstance(v, bool):
                raise ConfigError(f"{o.name}={v!r} is invalid: true or false, or None for the recipe's")
            if o.type is str and not isinstance(v, str):
                raise ConfigError(f"{o.name}={v!r} is invalid: a string, or None for the recipe's")
            if o.choices and v not in o.choices:
                raise ConfigError(f"{o.name}={v!r} is invalid: choose one of {', '.join(o.choices)}")
        if self.like is not None and self.like.strip().lower() not in [n.lower() for n in known_names()]:
            raise ConfigError(f"like={self.like!r} is invalid: choose one of {', '.join(known_names())} "
                              "(case-insensitive)")

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> "RetrieverConfig":
        return cls.from_mapping(kwargs)

    @classmethod
    def from_mapping(cls, block: Mapping[str, Any] | Any) -> "RetrieverConfig":
        """From a dict or an omegaconf/hydra block. Accepts Search-R1's keys (``local: true``, ``topk``)."""
        if hasattr(block, "items") and not isinstance(block, dict):
            try:
                from omegaconf import OmegaConf

                block = OmegaConf.to_container(block, resolve=True)
            except ImportError:
                block = dict(block.items())
        data = {k: v for k, v in dict(block).items()}
        local = data.pop("local", None)
        if local is not None and "backend" not in data:
            data["backend"] = "local" if _truthy(local) else "http"
        for ignored in ("topk", "retrieval_topk"):  # per-request, not part of the retriever
            data.pop(ignored, None)
        if "corpus" in data and "corpus_name" not in data:
            data["corpus_name"] = data.pop("corpus")
        if "retriever" in data and "retriever_name" not in data:
            data["retriever_name"] = data.pop("retriever")
        if data.get("url") and "backend" not in data:
            data["backend"] = "http"
        valid = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - valid)
        if unknown:
            raise ConfigError(f"unknown retriever option(s) {unknown}: valid options are {sorted(valid)}")
        for key in ("db_dir", "models_dir", "cache_dir"):
            if data.get(key) is not None:
                data[key] = os.fspath(data[key])
        if data.get("gpu_id") is not None and isinstance(data["gpu_id"], str) and data["gpu_id"].isdigit():
            data["gpu_id"] = int(data["gpu_id"])
        for o in ENCODER_OPTIONS:  # hydra/env strings: "256", "true"
            v = data.get(o.name)
            if isinstance(v, str) and o.type is int and v.strip().isdigit():
                data[o.name] = int(v)
            elif isinstance(v, str) and o.type is bool and v.strip().lower() in ("1", "0", "true", "false", "yes",
                                                                                "no", "on", "off"):
                data[o.name] = _truthy(v)
        return cls(**data)

    def replace(self, **changes: Any) -> "RetrieverConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _truthy(v: Any) -> bool:
    if isinstance(v, str):
        return v.strip().lower() in ("1", "true", "yes", "on")
    return bool(v)
