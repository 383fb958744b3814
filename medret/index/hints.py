"""The `medret index build` command a message tells the user to run: built from the configuration in use, so that,
pasted, it builds (or rebuilds) exactly the index the message is about."""
from __future__ import annotations

import shlex
from typing import Iterable

from medret import options
from medret.config import EngineOptions

#: engine options that change how an index is searched, not what `medret index build` builds: left out (declared
#: ``search_only=True``)
SEARCH_ONLY = tuple(n for n, d in options.declarations(EngineOptions).items() if d.search_only)


def build_command(config: EngineOptions, index_type: str | None = None, *, rebuild: bool = False,
                  extra: Iterable[str] = ()) -> str:
    """``medret index build`` with the corpus and retriever as the user gave them (a folder stays a folder) and
    every other build option set in ``config`` (folders, device, model paths, models dir, encoder recipe: --like,
    --pooling, prefixes, normalisation, token limits, document format), ``--fp32`` when fp16 is off, ``--index-type``
    when it is not flat, then ``extra`` and ``--rebuild``; each word shell-quoted."""
    own = [n for n in options.names(EngineOptions) if n not in ("corpus_name", "retriever_name", *SEARCH_ONLY)]
    words = ["medret", "index", "build", "--corpus", str(config.corpus_name), "--retriever",
             str(config.retriever_name), *options.argv(EngineOptions.of(config), only=own)]
    if config.fp16 is False:
        words.append("--fp32")
    if index_type and index_type.strip().lower() != "flat":
        words += ["--index-type", index_type]
    words += list(extra)
    if rebuild:
        words.append("--rebuild")
    return shlex.join(words)
