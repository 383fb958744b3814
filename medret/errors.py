"""Exceptions raised by medret.

Every message says what is wrong, which value caused it, and what to do about it.
"""
from __future__ import annotations


class MedretError(Exception):
    """Base class of every error medret raises on purpose."""


class ConfigError(MedretError, ValueError):
    """A configuration value or an argument is invalid."""


class QueryError(ConfigError):
    """The queries, topk or another request field is invalid."""


class AnswerTooLargeError(QueryError):
    """One request would produce a larger answer than the limits allow (HTTP 413 from the server)."""


class CorpusError(MedretError):
    """A corpus is missing, unknown or malformed."""


class StoreError(MedretError):
    """The document store is missing, stale or damaged."""


class IndexBuildError(MedretError):
    """An index is missing, stale, incomplete, or could not be built."""


class StorageError(MedretError):
    """A store or index cannot be written where it belongs: the disk is full, or the folder is read-only."""


class DeviceError(MedretError):
    """The requested device is not usable."""


class TransportError(MedretError):
    """A remote backend (HTTP server, Ray actor) could not answer."""


class ModelNotFoundError(MedretError):
    """An encoder model could not be loaded."""


class MissingDependencyError(MedretError, ImportError):
    """An optional dependency is not installed (the message names the extra that installs it)."""
