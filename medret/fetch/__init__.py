"""Bounded, verified network I/O for every download medret makes (corpora, StatPearls, MedRAG's embeddings, models).

A low floor: it imports nothing of medret's above :mod:`medret.compat`, :mod:`medret.options` and
:mod:`medret.storage`, so :mod:`medret.corpus` and :mod:`medret.encoders` both build on it without depending on
each other.

* :mod:`medret.fetch.env`: where things are: the hub endpoint, offline mode, the Hugging Face and medret caches;
* :mod:`medret.fetch.settings`: :class:`FetchOptions`, the declared deadlines and size caps of every download;
* :mod:`medret.fetch.files`: remote file records, local state, checksums, disk space, progress bars;
* :mod:`medret.fetch.hub`: the hub's file listing (one bounded request per page);
* :mod:`medret.fetch.transfer`: resumable, verified, bounded streaming of one URL into a file;
* :mod:`medret.fetch.archive`: archives checked whole (gzip / bzip2 / xz checks, tar's end, zip CRCs) and
  unpacked member by member under a size cap.
"""
