"""Chunk NCBI's StatPearls archive (``statpearls_NBK430685.tar.gz``, one ``.nxml`` article per file) into snippets.

The rules follow MedRAG's StatPearls preparation so that ids, titles and texts agree with its published results:

* every ``<sec>`` of an article (nested ones too, each on its own, in document order) yields snippets titled
  ``Article -- Section`` or ``Article -- Section -- Subsection``, where a subsection starts at a paragraph that holds
  nothing but one ``<bold>`` element;
* one snippet per paragraph; a paragraph shorter than 200 characters is appended (with a space) to the snippet
  before it in the same run when both together stay under 1,000 characters;
* a ``<list>`` is joined into one snippet (appended to the one before when they fit under 1,000 characters) or, when
  it is 1,000 characters or longer, split into one snippet per item;
* a subsection heading followed directly by a list ends with that list;
* ids are ``<file stem>_<n>`` with ``n`` counting the article's snippets from 0; ``contents`` is the title and the
  text joined by ``". "`` (or ``" "`` when the title already ends with ``.``, ``?`` or ``!``);
* one ``chunk/<file stem>.jsonl`` per article with at least one snippet, lines joined by newlines.

The archive is read in place as one stream (nothing is extracted), each article at most ``MAX_ARTICLE_BYTES``, and
checked whole (gzip CRC, tar's end-of-archive block); the chunk folder is written under a temporary name and
renamed only when all of that holds.
"""
from __future__ import annotations

import json
import logging
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from medret.errors import CorpusError
from medret.fetch.archive import tar_members
from medret.storage.atomic import atomic_path

logger = logging.getLogger(__name__)

MERGE_BELOW = 200  # a paragraph shorter than this may join the snippet before it
MAX_CHARS = 1000  # ... when the two together stay below this
SEP = " -- "
#: an article's XML is read whole to parse it (NCBI's largest are a few MB); a larger member is refused
MAX_ARTICLE_BYTES = 64 * 1024 * 1024


def _ends_sentence(s: str) -> bool:
    return s.endswith((".", "?", "!"))


def join_title(title: str, content: str) -> str:
    """The ``contents`` field: title and text as one string, the way MedRAG's chunk files have it."""
    t = title.strip()
    return f"{t} {content.strip()}" if _ends_sentence(t) else f"{t}. {content.strip()}"


def element_text(el: ET.Element) -> str:
    """All text under ``el``: its own text, then each child's text and tail, single spaces between the pieces."""
    parts = [(el.text or "").strip()]
    out = parts[0]
    for child in el:
        inner = element_text(child)
        out = f"{out} {inner}" if out else inner
        tail = (child.tail or "").strip()
        if tail:
            out = f"{out} {tail}" if out else tail
    return out.strip()


def is_subheading(el: ET.Element) -> bool:
    """A paragraph made of exactly one ``<bold>`` child with nothing after it."""
    kids = list(el)
    return el.tag == "p" and len(kids) == 1 and kids[0].tag == "bold" and not (kids[0].tail or "").strip()


class _Article:
    """Accumulates the snippets of one article."""

    def __init__(self, stem: str) -> None:
        self.stem = stem
        self.snippets: list[dict[str, str]] = []

    def new(self, title: str, content: str) -> dict[str, str]:
        snip = {"id": f"{self.stem}_{len(self.snippets)}", "title": title, "content": content,
                "contents": join_title(title, content)}
        self.snippets.append(snip)
        return snip

    def extend_last(self, extra: list[str]) -> dict[str, str]:
        last = self.snippets[-1]
        content = " ".join([last["content"], *extra])
        last["content"] = content
        last["contents"] = join_title(last["title"], content)
        return last


def chunk_article(xml: bytes | str, stem: str) -> list[dict[str, str]]:
    """Snippets of one ``.nxml`` article (see the module docstring for the rules)."""
    root = ET.fromstring(xml)
    first_title = root.find(".//title")
    if first_title is None:
        return []
    article_title = first_title.text or element_text(first_title)
    art = _Article(stem)
    for sec in root.findall(".//sec"):
        heading = sec.find("./title")
        sec_title = (heading.text or element_text(heading)).strip() if heading is not None else ""
        prefix = SEP.join([article_title, sec_title])
        current: dict[str, str] | None = None  # the snippet short paragraphs may still join
        previous: ET.Element | None = None
        for child in sec:
            if is_subheading(child):
                current = None
                sub = element_text(child)
                prefix = SEP.join(prefix.split(SEP)[:2] + [sub])
            elif child.tag == "p":
                text = element_text(child)
                if current is not None and len(text) < MERGE_BELOW and len(current["content"] + text) < MAX_CHARS:
                    current = art.extend_last([text])
                else:
                    current = art.new(prefix, text)
            elif child.tag == "list":
                items = [element_text(item) for item in child]
                joined = " ".join(items)
                if current is not None and len(joined + current["content"]) < MAX_CHARS:
                    current = art.extend_last(items)
                elif len(joined) < MAX_CHARS:
                    current = art.new(prefix, joined)
                else:
                    current = None
                    for item in items:
                        art.new(prefix, item)
                if previous is not None and is_subheading(previous):
                    prefix = SEP.join([article_title, sec_title])
            previous = child
    return art.snippets


@dataclass
class ChunkStats:
    articles: int = 0  # .nxml files read
    files: int = 0  # chunk files written (articles with at least one snippet)
    snippets: int = 0
    skipped: int = 0  # files that are not well-formed XML


def chunk_archive(archive: str | os.PathLike[str], out_dir: str | os.PathLike[str], *, progress: bool = False,
                  max_member_bytes: int = MAX_ARTICLE_BYTES) -> ChunkStats:
    """Chunk every ``.nxml`` member of ``archive`` into ``out_dir/<stem>.jsonl``; ``out_dir`` is replaced atomically,
    and only once the archive has been read whole and found intact (:func:`medret.fetch.archive.tar_members`:
    :class:`medret.fetch.archive.ArchiveError` otherwise, and ``out_dir`` is left as it was)."""
    archive = Path(archive)
    stats = ChunkStats()
    seen: set[str] = set()
    bar: Any = tqdm(unit="article", desc="chunking StatPearls") if progress else None
    try:
        with atomic_path(out_dir) as tmp:
            tmp.mkdir(parents=True)
            for m, data in tar_members(archive, lambda m: m.isfile() and m.name.endswith(".nxml"), max_member_bytes):
                base = m.name.rsplit("/", 1)[-1]
                if base in seen:
                    logger.warning("%s: %s appears twice in the archive; keeping the first", archive, base)
                    continue
                seen.add(base)
                stem = base.replace(".nxml", "")
                stats.articles += 1
                try:
                    snippets = chunk_article(data, stem)
                except ET.ParseError as e:
                    logger.warning("%s: %s is not well-formed XML (%s); skipped", archive, base, e)
                    stats.skipped += 1
                    snippets = []
                if snippets:
                    text = "\n".join(json.dumps(s) for s in snippets)
                    (tmp / f"{stem}.jsonl").write_text(text, encoding="utf-8")
                    stats.files += 1
                    stats.snippets += len(snippets)
                if bar is not None:
                    bar.update(1)
            if not seen:
                raise CorpusError(f"{archive} holds no .nxml files: it is not NCBI's StatPearls archive "
                                  "(statpearls_NBK430685.tar.gz)")
    finally:
        if bar is not None:
            bar.close()
    logger.info("StatPearls: %d articles, %d snippets in %d files (%d skipped)", stats.articles, stats.snippets,
                stats.files, stats.skipped)
    return stats
