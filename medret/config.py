"""Every option of a retriever, each declared once (:func:`medret.options.option`), in four groups:

* :class:`EngineOptions`: what is searched and how (corpus, retriever, models, encoder recipe, devices, indexes,
  fusion); the in-process engine reads these, and so does every Ray actor and ``medret serve``;
* :class:`Limits`: the limits of one request (in-process calls and ``medret serve``);
* :class:`HttpOptions`: the HTTP transport's (url, address file, token, deadlines, retries, and the answer cap
  it shares with the limits: :class:`AnswerLimit`);
* :class:`RayOptions`: the Ray transport's (cluster, namespace, placement, GPUs, shards, job).

:class:`RetrieverConfig` is all of them plus ``backend``: one frozen, hashable value (the key of
``get_retriever``'s cache), built from keyword arguments, a hydra/omegaconf block or Search-R1's ``retriever``
block (:meth:`RetrieverConfig.from_mapping`), or command-line flags (:func:`medret.options.add_flags`). The
flags, the mapping keys, child-process argv, the Ray actor's identity and validation all come from these fields.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

from medret.encoders.specs import (
    DOC_FORMATS,
    MAX_RERANK_DEPTH,
    POOLINGS,
    RERANK_FORMATS,
    get_reranker_spec,
    known_names,
    known_rerankers,
)
from medret.errors import ConfigError
from medret.options import (
    Options,
    accepted_keys,
    check_kind,
    check_mapping,
    declarations,
    option,
    parse_bool,
    plain_dict,
    unknown_keys_error,
)
from medret.options import names as option_names
from medret.validate import (
    check_gpu_id,
    check_number,
    check_string,
    check_token_count,
    check_whole,
    check_yes_no,
)

DEFAULT_TOPK = 3  # passages per query when a request names none (Search-R1's default)
BACKENDS = ("local", "http", "ray")
RAY_PLACEMENTS = ("any", "per-node", "retriever-node")

RETRIEVER = "retriever"
DEVICE = "device"
MODELS = "models"
ENCODER = "dense encoder (default: the named retriever's recipe)"
INDEX = "index search and fusion"
RERANK = "rerank stage (cross-encoder)"
LIMITS_GROUP = "request limits"
HTTP = "HTTP backend"
RAY = "Ray backend"


def check_like(name: str, value: Any, tail: str = "") -> None:
    """A named retriever's recipe (case-insensitive)."""
    known = known_names()
    if not isinstance(value, str) or value.strip().lower() not in [n.lower() for n in known]:
        raise ConfigError(f"{name}={value!r} is invalid: choose one of {', '.join(known)} (case-insensitive)")


def check_reranker(name: str, value: Any) -> None:
    """None (no rerank stage), or a reranker name / folder / hub id."""
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise ConfigError(f"{name}={value!r} is invalid: give {' or '.join(known_rerankers())}, a local "
                          "cross-encoder folder, or None for no rerank stage")


def check_reranker_like(name: str, value: Any, tail: str = "") -> None:
    """A named reranker's recipe (case-insensitive)."""
    if not isinstance(value, str) or get_reranker_spec(value) is None:
        raise ConfigError(f"{name}={value!r} is invalid: choose one of {', '.join(known_rerankers())} "
                          "(case-insensitive)")


def _recipe(check: Any) -> Any:
    """An encoder option's check: None means the recipe's value."""
    def run(name: str, value: Any) -> None:
        if value is not None:
            check(name, value, "or None for the recipe's")
    return run


@dataclass(frozen=True)
class EngineOptions(Options):
    """What the engine searches and how: read in-process, by a Ray actor and by ``medret serve``."""

    RENAMED: ClassVar[dict[str, str]] = {"rerank": "refine_factor"}  # the IVF-PQ factor, not the cross-encoder

    corpus_name: str = option("sample", "PubMed, StatPearls, Textbooks, Wikipedia, MedText, MedCorp, sample, or a "
                              "folder / .jsonl file", flag="--corpus", keys=("corpus",), identity=True,
                              check=check_string, group=RETRIEVER)
    retriever_name: str = option("BM25", "BM25, MedCPT, Contriever, SPECTER, e5, RRF-2, RRF-4, 'A+B', or a local "
                                 "model folder", flag="--retriever", keys=("retriever",), identity=True,
                                 check=check_string, group=RETRIEVER)
    db_dir: str | None = option(None, "folder holding MedRAG's corpora (pubmed/chunk/*.jsonl, ...)", kind=str,
                                identity=True, group=RETRIEVER)
    # None: DB_DIR/<source>/medret/ (the sample corpus: $MEDRET_CACHE); see medret.corpus.registry.artifacts_in
    cache_dir: str | None = option(None, "build and look for stores and indexes in this folder instead of beside "
                                   "the chunk files (for a read-only --db-dir)", kind=str, group=RETRIEVER)
    # device: "cpu", "cuda", "cuda:N"; gpu_id: a physical GPU id (as nvidia-smi numbers it); medret.device
    device: str | None = option(None, "cpu, cuda or cuda:N (default: cuda if visible, else cpu)", kind=str,
                                identity=True, group=DEVICE)
    gpu_id: int | None = option(None, "physical GPU number (as nvidia-smi counts)", kind=int, check=check_gpu_id,
                                group=DEVICE)
    allow_cpu_fallback: bool = option(False, "run on CPU (with a warning) if CUDA is absent", group=DEVICE)
    batch_size: int = option(256, "encoder batch size", check=check_whole, group=DEVICE)
    fp16: bool | None = option(None, "encode and store in float16 (default: on CUDA only)", kind=bool, flag=False,
                               identity=True, check=check_yes_no, group=DEVICE)
    # encoders: local model paths override the hub names of the retriever's spec
    query_model: str | None = option(None, "a local copy of the retriever's query model (folder)", kind=str,
                                     identity=True, group=MODELS)
    doc_model: str | None = option(None, "a local copy of the retriever's document model (folder)", kind=str,
                                   identity=True, group=MODELS)
    models_dir: str | None = option(None, "folder of models saved by `medret models download` (DIR/<model id>); "
                                    "default $MEDRET_MODELS_DIR, else ~/.cache/medret/models", kind=str,
                                    metavar="DIR", group=MODELS)
    # how a dense retriever encodes: None = the named retriever's (or --like's) recipe
    like: str | None = option(None, "give a local model folder a named retriever's recipe: e5 (Search-R1), MedCPT, "
                              "Contriever or SPECTER (MedRAG): pooling, prefixes, normalisation, token limits, "
                              "document text format, metric", kind=str, identity=True, check=_recipe(check_like),
                              group=ENCODER)
    pooling: str | None = option(None, "pooling of a local model folder (without --like)", kind=str,
                                 choices=POOLINGS, identity=True, check=_recipe(check_string), group=ENCODER)
    query_prefix: str | None = option(None, "text put before every query (e5: 'query: ')", kind=str,
                                      identity=True, check=_recipe(check_string), group=ENCODER)
    doc_prefix: str | None = option(None, "text put before every document (e5: 'passage: ')", kind=str,
                                    identity=True, check=_recipe(check_string), group=ENCODER)
    normalize: bool | None = option(None, "L2-normalise query and document vectors (e5: on); --no-normalize turns "
                                    "it off", kind=bool, identity=True, check=_recipe(check_yes_no), group=ENCODER)
    max_length: int | None = option(None, "token limit of queries and documents (e5: 256; a local folder: 512)",
                                    kind=int, identity=True, check=_recipe(check_token_count), group=ENCODER)
    query_max_length: int | None = option(None, "token limit of queries (overrides --max-length; MedCPT: 64)",
                                          kind=int, identity=True, check=_recipe(check_token_count), group=ENCODER)
    doc_max_length: int | None = option(None, "token limit of documents (overrides --max-length; MedCPT: 512)",
                                        kind=int, identity=True, check=_recipe(check_token_count), group=ENCODER)
    doc_format: str | None = option(None, "how a document's title and text become the encoder's input: searchr1 "
                                    "(the quoted title, a newline, the text: e5), pair (MedCPT), contriever, specter, "
                                    "concat (MedRAG's default)", kind=str, choices=DOC_FORMATS, identity=True,
                                    check=_recipe(check_string), group=ENCODER)
    # approximate dense indexes (faiss): None = the index's own defaults (nprobe ~ nlist/16, efSearch 128, refine
    # factor 10)
    nprobe: int | None = option(None, "IVF lists probed per query (faiss IVF indexes)", kind=int, identity=True,
                                check=check_whole.optional("the index's default"), search_only=True, group=INDEX)
    ef_search: int | None = option(None, "HNSW search depth (faiss HNSW indexes)", kind=int, identity=True,
                                   check=check_whole.optional("the index's default"), search_only=True, group=INDEX)
    refine_factor: int | None = option(None, "lossy indexes (IVF-PQ): re-score k x REFINE_FACTOR candidates exactly "
                                       "from the stored vectors (faiss's refine factor; default 10, 0 = off)",
                                       kind=int, identity=True,
                                       check=check_whole.at_least(0).optional("the index's default"),
                                       search_only=True, group=INDEX)
    rrf_k: int = option(100, "RRF constant k (MedRAG uses 100)", identity=True, check=check_whole, search_only=True,
                        group=INDEX)
    fusion_depth: int | None = option(None, "candidates taken from each retriever before fusion (default: topk, "
                                      "as MedRAG)", kind=int, identity=True, check=check_whole.optional(),
                                      search_only=True, group=INDEX)
    # the rerank stage: a cross-encoder scores each query's own rerank_depth first-stage candidates
    reranker: str | None = option(None, "rerank each query's first-stage candidates with this cross-encoder: "
                                  "MedCPT-Cross-Encoder, ms-marco-MiniLM-L12-v2, or a local folder (a "
                                  "sequence-classification model with one label)", kind=str, identity=True,
                                  check=check_reranker, search_only=True, group=RERANK)
    rerank_depth: int = option(10, f"first-stage candidates per query the reranker scores (topk <= depth <= "
                               f"{MAX_RERANK_DEPTH})", identity=True,
                               check=check_whole.at_most(MAX_RERANK_DEPTH), search_only=True, group=RERANK)
    reranker_like: str | None = option(None, "give a local cross-encoder folder a named reranker's recipe "
                                       "(default MedCPT-Cross-Encoder's)", kind=str, identity=True,
                                       check=_recipe(check_reranker_like), search_only=True, group=RERANK)
    reranker_format: str | None = option(None, "the article side of a pair: concat (MedRAG's title/content join: "
                                         "MedCPT) or searchr1 ('(Title: \"title\") text': Search-R1's rerank "
                                         "server)", kind=str, choices=RERANK_FORMATS, identity=True,
                                         check=_recipe(check_string), search_only=True, group=RERANK)
    reranker_max_length: int | None = option(None, "token limit of a (query, article) pair (default 512)", kind=int,
                                             identity=True, check=_recipe(check_token_count), search_only=True,
                                             group=RERANK)
    # build what is missing (document store, BM25; dense indexes of small corpora) on first use
    auto_build: bool = option(True, "build a missing store, BM25 index or small dense index on first use",
                              flag=False, check=check_yes_no, group=INDEX)


@dataclass(frozen=True)
class AnswerLimit(Options):
    """The largest answer: a server refuses requests whose answer would pass it (by an estimate, before any
    work), and the HTTP client stops reading one that does (so a wrong or hostile server cannot exhaust memory)."""

    max_answer_bytes: int = option(256 * 1024 ** 2, "largest answer in bytes: a server refuses (413) requests whose "
                                   "estimated answer (queries x topk x the corpus's mean document size) is larger; "
                                   "the HTTP client stops reading an answer that grows past it",
                                   check=check_whole, metavar="N", group=LIMITS_GROUP)


@dataclass(frozen=True)
class Limits(AnswerLimit):
    """The limits of one request: in-process calls and `medret serve` (whose flags are made from these)."""

    max_topk: int = option(1000, "largest topk a request may ask for", check=check_whole, metavar="N",
                           group=LIMITS_GROUP)
    max_batch: int = option(16384, "most queries in one request", check=check_whole, metavar="N", group=LIMITS_GROUP)
    max_query_chars: int = option(8192, "longest query, in characters", check=check_whole, metavar="N",
                                  group=LIMITS_GROUP)
    max_answer_docs: int = option(524_288, "most documents one answer may hold (queries x topk); larger requests "
                                  "are refused (413)", check=check_whole, metavar="N", group=LIMITS_GROUP)


@dataclass(frozen=True)
class TransportOptions(Options):
    """What every remote transport (HTTP, Ray) has: how long one call may take."""

    timeout: float = option(60.0, "seconds one call may take as a whole (HTTP: each attempt: connect, send, the "
                            "whole answer; Ray: each call, and the wait for a new actor)",
                            check=check_number.positive(), metavar="S", group="backend")


@dataclass(frozen=True)
class HttpOptions(TransportOptions, AnswerLimit):
    """The HTTP transport's options (:class:`medret.transports.http.HttpTransport`); ``max_answer_bytes`` is the
    same setting as the server's (:class:`AnswerLimit`)."""

    url: str | None = option(None, "search through a running `medret serve` (http://host:port)", kind=str,
                             check=check_string, group=HTTP)
    address_file: str | None = option(None, "address file written by `medret serve --address-file`", kind=str,
                                      check=check_string, group=HTTP)
    token: str | None = option(None, "bearer token of the server (never a flag: visible in `ps`)", kind=str,
                               flag=False, group=HTTP)
    retries: int = option(5, "retries of a failed call (connection errors, timeouts, 5xx)",
                          check=check_whole.at_least(0), group=HTTP)
    total_timeout: float | None = option(None, "seconds across every attempt and backoff (default: no cap beyond "
                                         "timeout x attempts)", kind=float,
                                         check=check_number.positive().optional("no overall deadline"),
                                         metavar="S", group=HTTP)


@dataclass(frozen=True)
class RayOptions(TransportOptions):
    """The Ray transport's options (:class:`medret.transports.ray.RayTransport`)."""

    ray_address: str | None = option(None, "Ray cluster address (default: $RAY_ADDRESS, else a local cluster)",
                                     kind=str, aliases=("--address",), check=check_string, group=RAY)
    ray_namespace: str = option("medret", "Ray namespace of the retriever actors", aliases=("--namespace",),
                                check=check_string, group=RAY)
    ray_num_gpus: float = option(0.0, "Ray GPUs the retriever actor requests", aliases=("--num-gpus",),
                                 identity=True, check=check_number.at_least(0), group=RAY)
    ray_placement: str = option("any", "where the actor runs: any (Ray decides), per-node (one per node), "
                                "retriever-node (the node offering the medret_retriever resource)",
                                aliases=("--placement",), choices=RAY_PLACEMENTS, group=RAY)
    ray_shards: int = option(1, "split each exact dense index by rows over this many shard actors (GPUs)",
                             aliases=("--shards",), identity=True, check=check_whole, group=RAY)
    # workers that do not inherit the driver's environment (veRL tool workers) can pass it explicitly
    ray_job: str | None = option(None, "job id in the actor's name (default: $MEDRET_RAY_JOB, else $SLURM_JOB_ID)",
                                 kind=str, aliases=("--job",), check=check_string, digits=True, group=RAY)
    ray_max_restarts: int = option(0, "times Ray restarts the retriever actor after its process dies (an out-of-memory "
                                   "kill, a lost node); -1: always", check=check_whole.at_least(-1), group=RAY)


@dataclass(frozen=True)
class RequestOptions(Options):
    """What one request carries besides its queries. A retriever block may hold it (Search-R1's ``retriever.topk``):
    it is checked there by its declaration, and is not part of the retriever."""

    topk: int = option(DEFAULT_TOPK, "passages per query", keys=("retrieval_topk",), flag=False, check=check_whole,
                       request=True)


@dataclass(frozen=True)
class RetrieverConfig(RayOptions, HttpOptions, Limits, EngineOptions):
    """Every setting of a retriever: the engine's options, the request limits, and the transport's options."""

    REQUEST: ClassVar[type | None] = RequestOptions  # per request (topk), accepted in a block, not the retriever's

    backend: str = option("local", "how searches travel: local (in this process), http (a `medret serve`), ray (a "
                          "Ray actor)", choices=BACKENDS, group="backend")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.backend == "http" and not (self.url or self.address_file):
            raise ConfigError("backend='http' needs url='http://host:port' (or address_file=PATH written by "
                              "`medret serve --address-file`)")

    @classmethod
    def from_mapping(cls, block: Mapping[str, Any] | Any, **overrides: Any) -> RetrieverConfig:
        """From a dict or a hydra/omegaconf block; Search-R1's keys are accepted (``local: true``, ``topk``,
        ``corpus``, ``retriever``). The backend is :func:`backend_of` the block (default ``local``)."""
        data = {**plain_dict(block), **overrides}
        data["backend"] = backend_of(data, default="http" if data.get("url") else "local")
        data.pop("local", None)
        return super().from_mapping(data)


def backend_of(block: Mapping[str, Any], default: str = "local", prefix: str = "") -> str:
    """The backend a block asks for, by the one rule for Search-R1's alias: ``backend`` if given (any case);
    ``local: true`` is ``backend: local`` and ``local: false`` is ``backend: http``; a ``local`` that
    contradicts ``backend`` is an error; neither: ``default``. ``prefix`` names the block in messages."""
    backend = block.get("backend")
    if "backend" in block:  # given: of the declared kind (not None, not 5)
        backend = check_kind(f"{prefix}backend", declarations(RetrieverConfig)["backend"], backend)
    local = block.get("local")
    if local is not None:
        local = parse_bool(f"{prefix}local", local)
    if backend is None:
        return default if local is None else ("local" if local else "http")
    backend = backend.strip().lower()
    if local and backend != "local":
        raise ConfigError(f"{prefix}local={local!r} contradicts {prefix}backend={backend!r}: drop {prefix}local (it "
                          f"is an alias for backend=local) or set {prefix}backend=local")
    return backend


ENCODER_OPTION_NAMES = option_names(EngineOptions, ENCODER)  # like, pooling, prefixes, lengths, doc_format
RERANK_OPTION_NAMES = option_names(EngineOptions, RERANK)  # reranker, rerank_depth, its recipe
#: the model folders and the encoder recipe (query_model, doc_model, models_dir, like, pooling, ...): what a job has
#: passed on to each retriever process (launch's RETRIEVER_OPTION_NAMES, derived here from the groups)
MODEL_OPTION_NAMES = option_names(EngineOptions, MODELS) + ENCODER_OPTION_NAMES


def validate_retriever_block(block: Mapping[str, Any] | Any, *, label: str = "retriever",
                             keys_only: bool = False) -> None:
    """Raise :class:`ConfigError` for a retriever block (Search-R1's ``retriever:`` with its ``+retriever.*``
    keys, a veRL tool's, a job's, a --config file's) holding a key no declaration accepts (naming the closest valid
    key) or, unless ``keys_only`` (a job script whose values are shell variables), a value that is not of its
    declared kind or fails its own check (each value on its own: settings that need each other, such as
    backend=http and a url, are checked when the retriever is built). ``label`` names the block in messages."""
    data = plain_dict(block)
    unknown = set(data) - accepted_keys(RetrieverConfig) - {"local"}
    if unknown:
        e = unknown_keys_error(RetrieverConfig, unknown, label=f"{label} key", extra=("local",))
        raise ConfigError(f"{label} block: {e} (hydra: +{label}.KEY=VALUE)")
    if keys_only:
        return
    try:
        backend_of(data, prefix=f"{label}.")
        check_mapping(RetrieverConfig, {k: v for k, v in data.items() if k != "local"})
    except ConfigError as e:
        raise ConfigError(f"{label} block: {e}") from None
