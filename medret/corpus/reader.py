"""Read snippets from MedRAG chunk files (and Search-R1-style jsonl)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import orjson

from medret.errors import CorpusError
from medret.fetch.files import LFS_MAGIC


def check_not_lfs_pointer(path: Path) -> None:
    with open(path, "rb") as f:
        head = f.read(len(LFS_MAGIC))
    if head == LFS_MAGIC:
        raise CorpusError(
            f"{path} is a git-lfs pointer file, not data: the corpus was cloned with git but its files were never "
            f"fetched. Run `git lfs pull` in that repository, or download it with `medret corpus download NAME "
            f"--db-dir DIR` (no git-lfs needed)")


def parse_line(raw: bytes, path: Path, lineno: int) -> dict:
    """One snippet as {"id", "title", "content"}; MedRAG ids are kept, else ``<chunkfile>_<line>``."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise CorpusError(f"{path}:{lineno + 1} is not valid JSON ({e}); each line must be one snippet "
                          f'{{"id", "title", "content", "contents"}}. Re-download the file') from None
    if not isinstance(obj, dict):
        raise CorpusError(f"{path}:{lineno + 1} is a JSON {type(obj).__name__}, expected an object with "
                          f'"content" (MedRAG) or "contents" (Search-R1)')
    doc_id = obj.get("id")
    doc_id = f"{path.stem}_{lineno}" if doc_id is None else str(doc_id)
    if "content" in obj:
        title, content = obj.get("title") or "", obj["content"]
    elif "contents" in obj:
        title, _, content = str(obj["contents"]).partition("\n")
        title = title.strip().strip('"')
        if not content:  # no title line: the whole text is the content
            title, content = obj.get("title") or "", title
    else:
        raise CorpusError(f'{path}:{lineno + 1} has neither "content" nor "contents": fields are '
                          f'{sorted(obj)}; a snippet needs "content" (MedRAG) or "contents" (Search-R1)')
    if not isinstance(content, str) or not isinstance(title, str):
        raise CorpusError(f'{path}:{lineno + 1}: "title" and "content" must be strings')
    return {"id": doc_id, "title": title, "content": content}


def iter_file(path: Path, digest: Any = None) -> Iterator[tuple[int, dict]]:
    """(line number, snippet) of each non-blank line; ``digest`` (a hashlib object), if given, is updated with
    every byte of the file as it is read."""
    check_not_lfs_pointer(path)
    with open(path, "rb") as f:
        lineno = 0
        for raw in f:
            if digest is not None:
                digest.update(raw)
            if raw.strip():
                yield lineno, parse_line(raw, path, lineno)
            lineno += 1


def count_lines(path: Path) -> int:
    n = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            n += block.count(b"\n")
        if f.tell() and _last_byte(f) != b"\n":
            n += 1
    return n


def _last_byte(f) -> bytes:
    f.seek(-1, 2)
    return f.read(1)
