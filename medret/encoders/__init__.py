"""Dense encoders: retriever specs (specs), pooling, and the Hugging Face encoder (hf, imports torch when it loads a
model)."""
from __future__ import annotations

from medret.encoders.hf import Encoder
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
