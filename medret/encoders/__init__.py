"""Dense encoders: retriever specs (specs), pooling, and the Hugging Face encoder (hf, imports torch lazily)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from medret.encoders.specs import (
    REGISTRY,
    EncoderSpec,
    format_doc,
    format_docs,
    format_query,
    get_spec,
    known_names,
    resolve_spec,
)

if TYPE_CHECKING:  # pragma: no cover
    from medret.encoders.hf import Encoder

__all__ = [
    "REGISTRY",
    "Encoder",
    "EncoderSpec",
    "format_doc",
    "format_docs",
    "format_query",
    "get_spec",
    "known_names",
    "resolve_spec",
]


def __getattr__(name: str) -> Any:
    if name == "Encoder":
        return Encoder
    raise AttributeError(name)
