"""Retrieval quality: labelled sets and metrics."""
