"""Retriever names: which single retrievers a name stands for ('RRF-2' → BM25 + MedCPT; 'BM25+e5'; a model folder).

Every layer that needs the parts of a name (the engine, index builds, downloads, ``medret doctor``) asks here.
"""
from __future__ import annotations

from pathlib import Path

from medret.encoders.specs import REGISTRY, known_names
from medret.errors import ConfigError

FUSIONS = {"rrf-2": ("bm25", "medcpt"), "rrf-4": ("bm25", "contriever", "specter", "medcpt")}
DENSE = tuple(REGISTRY)  # the named dense retrievers (lower-case): encoders.specs.REGISTRY is their one table


def retriever_parts(name: str) -> tuple[str, ...]:
    """Split a retriever name into its single retrievers: 'RRF-2' → (bm25, medcpt); 'BM25+e5' → (bm25, e5)."""
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"retriever_name={name!r} is invalid: {valid_retrievers()}")
    key = name.strip().lower()
    if key in FUSIONS:
        return FUSIONS[key]
    parts = tuple(p.strip() for p in name.split("+")) if "+" in name else (name.strip(),)
    out = []
    for p in parts:
        if p.lower() == "bm25" or p.lower() in DENSE:
            out.append(p.lower())
        elif is_model_dir(p):
            out.append(p)
        else:
            raise ConfigError(f"retriever_name={name!r} is unknown: {valid_retrievers()}")
    return tuple(out)


def dense_parts(name: str) -> tuple[str, ...]:
    """The dense retrievers of a name (its parts but BM25)."""
    return tuple(p for p in retriever_parts(name) if p != "bm25")


def valid_retrievers() -> str:
    return (f"valid names are BM25, {', '.join(known_names())}, RRF-2 (BM25+MedCPT), "
            "RRF-4 (BM25+Contriever+SPECTER+MedCPT), any of them joined with '+', or a local model folder "
            "(with pooling='cls'|'mean')")


def retriever_choices() -> str:
    """The retriever names a message lists: ``BM25, MedCPT, Contriever, SPECTER, e5, RRF-2, RRF-4``."""
    return ", ".join(["BM25", *known_names(), *(f.upper() for f in FUSIONS)])


def is_model_dir(p: str) -> bool:
    return (Path(p).expanduser() / "config.json").is_file()
