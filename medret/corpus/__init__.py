"""Corpora: names → sources on disk, MedRAG chunk reader, memory-mapped document store."""
