"""Indexes: BM25 (bm25s), dense (faiss / exact), fusion (RRF), builds."""
