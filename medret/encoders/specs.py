"""Encoder specifications: which model encodes queries and documents, and exactly how.

The four named retrievers reproduce the input formatting of the code that produced the published
indexes, so that queries encoded by medret land in the same space as MedRAG's precomputed embeddings
and Search-R1's e5 index:

========== =========================== ============================ ======= ===== ========= ===========
name       query model                 document model               pooling metric normalize max len q/d
========== =========================== ============================ ======= ===== ========= ===========
MedCPT     ncbi/MedCPT-Query-Encoder   ncbi/MedCPT-Article-Encoder  cls     ip    no        64 / 512
Contriever facebook/contriever         facebook/contriever          mean    ip    no        512 / 512
SPECTER    allenai/specter             allenai/specter              cls     l2    no        512 / 512
e5         intfloat/e5-base-v2         intfloat/e5-base-v2          mean    ip    yes       256 / 256
========== =========================== ============================ ======= ===== ========= ===========

Document text (``doc_format``), as MedRAG's ``embed`` builds it for its precomputed embeddings:

* ``pair`` (MedCPT): the tokenizer gets ``(title, content)`` as a sentence pair, truncated longest-first.
* ``contriever``: ``"<title>. <content>"`` with ``".."`` replaced by ``"."`` and ``"?."`` by ``"?"``.
* ``specter``: ``"<title>" + tokenizer.sep_token + "<content>"``.
* ``concat`` (MedRAG's default for other models, used for local models): title and content joined by
  ``" "`` when the title ends in ``.?!`` and by ``". "`` otherwise.
* ``searchr1`` (e5): Search-R1's ``contents`` convention ``'"<title>"\\n<content>'``, after the
  ``"passage: "`` prefix, as Search-R1's ``index_builder.py`` encodes its corpus.

MedRAG's sentence-transformers path strips each text; medret does the same for the MedRAG formats.
"""
from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

from medret.errors import ConfigError
from medret.validate import check_token_count

Pooling = Literal["cls", "mean"]
Metric = Literal["ip", "l2"]
DocFormat = Literal["pair", "contriever", "specter", "concat", "searchr1"]

POOLINGS: tuple[str, ...] = ("cls", "mean")
METRICS: tuple[str, ...] = ("ip", "l2")
DOC_FORMATS: tuple[str, ...] = ("pair", "contriever", "specter", "concat", "searchr1")


_PUBLISHED_SHAPE = ("model_type", "vocab_size")


@dataclass(frozen=True)
class EncoderSpec:
    """How one dense retriever turns queries and documents into vectors."""

    name: str
    query_model: str
    doc_model: str
    pooling: Pooling
    normalize: bool
    query_prefix: str
    doc_prefix: str
    query_max_len: int
    doc_max_len: int
    metric: Metric
    dim: int | None
    doc_format: DocFormat = "concat"
    # the published models' config.json besides their width (``dim`` = hidden_size): what a hand-copied folder is held
    # to (medret.encoders.recipe_check). Not part of the recipe recorded with an index (to_dict leaves them out).
    model_type: str | None = dataclasses.field(default=None, compare=False)
    vocab_size: int | None = dataclasses.field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ConfigError(f"pooling={self.pooling!r} is invalid: use one of {', '.join(POOLINGS)}")
        if self.metric not in METRICS:
            raise ConfigError(f"metric={self.metric!r} is invalid: use one of {', '.join(METRICS)}")
        if self.doc_format not in DOC_FORMATS:
            raise ConfigError(f"doc_format={self.doc_format!r} is invalid: use one of {', '.join(DOC_FORMATS)}")
        for field in ("query_max_len", "doc_max_len"):
            check_token_count(field, getattr(self, field))

    @property
    def doc_pair_input(self) -> bool:
        """True when documents go in as (title, text) pairs: ``doc_format == "pair"``, never set on its own."""
        return self.doc_format == "pair"

    @property
    def slug(self) -> str:
        """Lower-case name safe for a directory (the index folder name)."""
        return re.sub(r"[^a-z0-9._-]+", "-", self.name.lower()).strip("-") or "model"

    @property
    def shares_model(self) -> bool:
        """True when queries and documents go through the same weights."""
        return self.query_model == self.doc_model

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in _PUBLISHED_SHAPE}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "EncoderSpec":
        names = {f.name for f in dataclasses.fields(cls)} - set(_PUBLISHED_SHAPE)
        return cls(**{k: v for k, v in d.items() if k in names})

    def same_encoding(self, other: "EncoderSpec") -> bool:
        """True when documents encoded under ``other`` are valid for queries encoded under ``self``.

        Compares everything that changes the vectors (not the display name or the query length).
        """
        keys = ("doc_model", "pooling", "normalize", "doc_prefix", "doc_max_len", "doc_format", "metric")
        return all(getattr(self, k) == getattr(other, k) for k in keys)


MEDCPT = EncoderSpec(
    name="MedCPT",
    query_model="ncbi/MedCPT-Query-Encoder",
    doc_model="ncbi/MedCPT-Article-Encoder",
    pooling="cls",
    normalize=False,
    query_prefix="",
    doc_prefix="",
    query_max_len=64,
    doc_max_len=512,
    metric="ip",
    dim=768,
    doc_format="pair",
    model_type="bert",
    vocab_size=30522,
)
CONTRIEVER = EncoderSpec(
    name="Contriever",
    query_model="facebook/contriever",
    doc_model="facebook/contriever",
    pooling="mean",
    normalize=False,
    query_prefix="",
    doc_prefix="",
    query_max_len=512,
    doc_max_len=512,
    metric="ip",
    dim=768,
    doc_format="contriever",
    model_type="bert",
    vocab_size=30522,
)
SPECTER = EncoderSpec(
    name="SPECTER",
    query_model="allenai/specter",
    doc_model="allenai/specter",
    pooling="cls",
    normalize=False,
    query_prefix="",
    doc_prefix="",
    query_max_len=512,
    doc_max_len=512,
    metric="l2",
    dim=768,
    doc_format="specter",
    model_type="bert",
    vocab_size=31116,  # SciBERT's vocabulary
)
E5 = EncoderSpec(
    name="e5",
    query_model="intfloat/e5-base-v2",
    doc_model="intfloat/e5-base-v2",
    pooling="mean",
    normalize=True,
    query_prefix="query: ",
    doc_prefix="passage: ",
    query_max_len=256,
    doc_max_len=256,
    metric="ip",
    dim=768,
    doc_format="searchr1",
    model_type="bert",
    vocab_size=30522,
)
MEDEMBED = EncoderSpec(  # a fine-tune of BAAI/bge-small-en-v1.5: BGE's [CLS] pooling, normalised (cosine)
    name="MedEmbed",
    query_model="abhinand/MedEmbed-small-v0.1",
    doc_model="abhinand/MedEmbed-small-v0.1",
    pooling="cls",
    normalize=True,
    query_prefix="",
    doc_prefix="",
    query_max_len=512,
    doc_max_len=512,
    metric="ip",
    dim=384,
    model_type="bert",
    vocab_size=30522,
)

REGISTRY: dict[str, EncoderSpec] = {s.name.lower(): s for s in (MEDCPT, CONTRIEVER, SPECTER, E5, MEDEMBED)}


def known_names() -> list[str]:
    return [s.name for s in REGISTRY.values()]


def like_choices(quote: str = "") -> str:
    """The named recipes as the ``like`` choices a message lists: ``MedCPT|Contriever|SPECTER|e5``."""
    return "|".join(f"{quote}{n}{quote}" for n in known_names())


def get_spec(name: str) -> EncoderSpec | None:
    """The registered spec for a retriever name or one of its model ids (case-insensitive), else None."""
    key = name.strip().lower()
    if key in REGISTRY:
        return REGISTRY[key]
    for spec in REGISTRY.values():
        if key in (spec.query_model.lower(), spec.doc_model.lower()):
            return spec
    return None


def resolve_spec(
    name_or_path: str,
    pooling: str | None = None,
    *,
    doc_model: str | None = None,
    normalize: bool | None = None,
    metric: str | None = None,
    query_prefix: str | None = None,
    doc_prefix: str | None = None,
    query_max_len: int | None = None,
    doc_max_len: int | None = None,
    doc_pair_input: bool | None = None,
    doc_format: str | None = None,
    name: str | None = None,
    like: str | None = None,
) -> EncoderSpec:
    """Resolve a retriever name (``MedCPT``, ``contriever``, ...) or a model directory / id to a spec.

    Keyword arguments that are not None override the registered values. A model that is not registered
    (a local directory or any Hugging Face id) takes the recipe of ``like`` (a registered name: its pooling,
    normalisation, prefixes, token limits, document format and metric, with the given model for queries and
    documents), or else needs ``pooling``; its documents are then formatted with MedRAG's default ``concat``
    unless ``doc_pair_input``/``doc_format`` say otherwise.
    """
    if not isinstance(name_or_path, str) or not name_or_path.strip():
        raise ConfigError(
            f"retriever={name_or_path!r} is invalid: give one of {', '.join(known_names())} "
            "or a local model directory with pooling='cls' or 'mean'"
        )
    overrides: dict[str, Any] = {
        "doc_model": doc_model,
        "pooling": pooling.lower() if isinstance(pooling, str) else pooling,
        "normalize": normalize,
        "metric": metric.lower() if isinstance(metric, str) else metric,
        "query_prefix": query_prefix,
        "doc_prefix": doc_prefix,
        "query_max_len": query_max_len,
        "doc_max_len": doc_max_len,
        "name": name,
    }
    if doc_format is not None:
        overrides["doc_format"] = doc_format
    elif doc_pair_input is not None:
        overrides["doc_format"] = "pair" if doc_pair_input else "concat"
    overrides = {k: v for k, v in overrides.items() if v is not None}

    recipe = None
    if like is not None:
        recipe = REGISTRY.get(like.strip().lower()) if isinstance(like, str) else None
        if recipe is None:
            raise ConfigError(f"like={like!r} is invalid: give one of {', '.join(known_names())} (case-insensitive)")
    spec = get_spec(name_or_path)
    if spec is not None:
        if recipe is not None and recipe is not spec:
            raise ConfigError(
                f"like={like!r} is invalid with retriever={name_or_path!r}: like= gives a local model folder a named "
                f"retriever's recipe (e.g. retriever='/models/my-e5', like='e5'); {spec.name} already has its own"
            )
        return dataclasses.replace(spec, **overrides) if overrides else spec

    if recipe is not None:
        model = os.path.expanduser(name_or_path)
        base = {k: v for k, v in recipe.to_dict().items() if k not in ("name", "query_model", "doc_model", "dim")}
        base.update(name=name or _name_from_path(model), query_model=model, doc_model=model, dim=None)
        base.update(overrides)
        return EncoderSpec(**base)
    if pooling is None:
        hint = " (that directory exists)" if Path(name_or_path).is_dir() else ""
        raise ConfigError(
            f"retriever={name_or_path!r} is not a known dense retriever{hint}: use one of "
            f"{', '.join(known_names())} (case-insensitive), or give a local model directory / model id "
            f"together with like={like_choices(chr(39))} (a named retriever's recipe; CLI: --like) or "
            "pooling='cls'|'mean' (CLI: --pooling)"
        )
    model = os.path.expanduser(name_or_path)
    base = dict(
        name=name or _name_from_path(model),
        query_model=model,
        doc_model=model,
        pooling="mean",
        normalize=False,
        query_prefix="",
        doc_prefix="",
        query_max_len=512,
        doc_max_len=512,
        metric="ip",
        dim=None,
        doc_format="concat",
    )
    base.update(overrides)
    return EncoderSpec(**base)


def spec_for(part: str, config: Any) -> EncoderSpec:
    """The spec of one dense retriever ``part`` under a :class:`medret.config.RetrieverConfig`'s encoder options
    (``like``, ``pooling``, prefixes, ``normalize``, token limits, ``doc_format``)."""
    q_len = config.query_max_length if config.query_max_length is not None else config.max_length
    d_len = config.doc_max_length if config.doc_max_length is not None else config.max_length
    return resolve_spec(part, pooling=config.pooling, like=config.like, query_prefix=config.query_prefix,
                        doc_prefix=config.doc_prefix, normalize=config.normalize, query_max_len=q_len,
                        doc_max_len=d_len, doc_format=config.doc_format)


def _name_from_path(model: str) -> str:
    p = Path(model.rstrip("/\\"))
    return p.name or model


# --------------------------------------------------------------------------------------------------
# Input formatting


def _ends_with_sentence_punctuation(s: str) -> bool:
    return s.endswith((".", "?", "!"))


def medrag_concat(title: str, content: str) -> str:
    """MedRAG's default title/content join: ``"T. C"`` or ``"T C"`` when T already ends a sentence."""
    t, c = title.strip(), content.strip()
    return f"{t} {c}" if _ends_with_sentence_punctuation(t) else f"{t}. {c}"


def searchr1_contents(title: str, content: str) -> str:
    """Search-R1's ``contents`` field: the title in double quotes, a newline, the text."""
    return f'"{title}"\n{content}'


def format_query(spec: EncoderSpec, query: str) -> str:
    return spec.query_prefix + query


def format_doc(
    spec: EncoderSpec, title: str, content: str, sep_token: str | None = None
) -> str | tuple[str, str]:
    """The encoder input for one document: a string, or a ``(title, content)`` pair for pair-input specs.

    ``sep_token`` is the tokenizer's separator (``[SEP]`` for BERT); it is needed for ``specter``.
    """
    title = "" if title is None else str(title)
    content = "" if content is None else str(content)
    fmt = spec.doc_format
    if fmt == "pair":
        return (spec.doc_prefix + title.strip(), content.strip())
    if fmt == "contriever":
        text = ". ".join([title, content]).replace("..", ".").replace("?.", "?")
        return spec.doc_prefix + text.strip()
    if fmt == "specter":
        if not sep_token:
            raise ConfigError(
                f"sep_token={sep_token!r} is invalid for doc_format='specter': pass the tokenizer's sep_token"
            )
        return spec.doc_prefix + (title + sep_token + content).strip()
    if fmt == "searchr1":
        return spec.doc_prefix + searchr1_contents(title, content)
    return spec.doc_prefix + medrag_concat(title, content)


def format_docs(
    spec: EncoderSpec, docs: Sequence[Mapping[str, Any]], sep_token: str | None = None
) -> list[str] | list[tuple[str, str]]:
    """Format documents (dicts with ``title`` and ``content``) for ``spec``'s document encoder."""
    out = []
    for i, d in enumerate(docs):
        try:
            title, content = d.get("title", ""), d["content"]
        except (KeyError, AttributeError, TypeError):
            raise ConfigError(
                f"docs[{i}]={d!r} is invalid: each document must be a dict with 'title' and 'content'"
            ) from None
        out.append(format_doc(spec, title, content, sep_token))
    return out  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------------
# Cross-encoders (the rerank stage): which model scores (query, document) pairs, and how it sees a document

RERANK_FORMATS: tuple[str, ...] = ("concat", "searchr1")
MAX_RERANK_DEPTH = 1000  # candidates per query a cross-encoder may score (each one is a forward pass of a pair)


@dataclass(frozen=True)
class RerankerSpec:
    """How one cross-encoder scores a (query, document) pair: the tokenizer gets ``[query, article]`` (truncated
    longest-first to ``max_length`` tokens) and the model's single logit is the score.

    ``doc_format``: ``concat`` (MedCPT-Cross-Encoder's model card: title and content joined as MedRAG joins them,
    :func:`medrag_concat`) or ``searchr1`` (Search-R1's rerank server: ``(Title: "<title>") <content>``, its
    ``contents`` title line in parentheses)."""

    name: str
    model: str
    doc_format: str = "concat"
    max_length: int = 512

    def __post_init__(self) -> None:
        if self.doc_format not in RERANK_FORMATS:
            raise ConfigError(f"reranker_format={self.doc_format!r} is invalid: use one of {', '.join(RERANK_FORMATS)}")
        check_token_count("reranker_max_length", self.max_length)


MEDCPT_CROSS = RerankerSpec(name="MedCPT-Cross-Encoder", model="ncbi/MedCPT-Cross-Encoder", doc_format="concat",
                            max_length=512)
# Search-R1's default reranker (search_r1/search/rerank_server.py)
MSMARCO_CROSS = RerankerSpec(name="ms-marco-MiniLM-L12-v2", model="cross-encoder/ms-marco-MiniLM-L12-v2",
                             doc_format="searchr1", max_length=512)
RERANKERS: dict[str, RerankerSpec] = {s.name.lower(): s for s in (MEDCPT_CROSS, MSMARCO_CROSS)}


def known_rerankers() -> list[str]:
    return [s.name for s in RERANKERS.values()]


def get_reranker_spec(name: str) -> RerankerSpec | None:
    """The registered cross-encoder for a name or its model id (case-insensitive), else None."""
    key = name.strip().lower() if isinstance(name, str) else ""
    return RERANKERS.get(key) or next((s for s in RERANKERS.values() if s.model.lower() == key), None)


def resolve_reranker(name_or_path: str, like: str | None = None, doc_format: str | None = None,
                     max_length: int | None = None) -> RerankerSpec:
    """A registered cross-encoder's spec, or a local folder's / hub id's with the recipe of ``like`` (a registered
    name; default MedCPT-Cross-Encoder's), each field overridden by the arguments that are not None."""
    if not isinstance(name_or_path, str) or not name_or_path.strip():
        raise ConfigError(f"reranker={name_or_path!r} is invalid: give {' or '.join(known_rerankers())}, or a local "
                          "cross-encoder folder (a sequence-classification model with one label)")
    recipe = MEDCPT_CROSS
    if like is not None:
        found = get_reranker_spec(like)
        if found is None:
            raise ConfigError(f"reranker_like={like!r} is invalid: choose one of {', '.join(known_rerankers())} "
                              "(case-insensitive)")
        recipe = found
    spec = get_reranker_spec(name_or_path)
    if spec is not None:
        if like is not None and recipe is not spec:
            raise ConfigError(f"reranker_like={like!r} is invalid with reranker={name_or_path!r}: reranker_like "
                              f"gives a local cross-encoder folder a named recipe; {spec.name} has its own")
    else:
        model = os.path.expanduser(name_or_path)
        spec = dataclasses.replace(recipe, name=_name_from_path(model), model=model)
    if doc_format is not None:
        spec = dataclasses.replace(spec, doc_format=doc_format)
    return dataclasses.replace(spec, max_length=max_length) if max_length is not None else spec


def reranker_for(config: Any) -> RerankerSpec | None:
    """The cross-encoder a :class:`medret.config.EngineOptions` asks for, or None (no rerank stage)."""
    if config.reranker is None:
        return None
    return resolve_reranker(config.reranker, like=config.reranker_like, doc_format=config.reranker_format,
                            max_length=config.reranker_max_length)


def format_rerank_doc(spec: RerankerSpec, title: str, content: str) -> str:
    """The article side of a cross-encoder pair for one document (see :class:`RerankerSpec`)."""
    title = "" if title is None else str(title)
    content = "" if content is None else str(content)
    if spec.doc_format == "searchr1":  # the first line of Search-R1's contents (a title's newlines folded)
        line = searchr1_contents(" ".join(title.split()) if "\n" in title else title, content).partition("\n")[0]
        return f"(Title: {line}) {content}"
    return medrag_concat(title, content)
