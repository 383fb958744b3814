"""Read snippets from MedRAG chunk files (and Search-R1-style jsonl)."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterator

import orjson

from medret.errors import CorpusError

LFS_MAGIC = b"version https://git-lfs"
_PROBE = 64 * 1024


def check_not_lfs_pointer(path: Path) -> None:
    with open(path, "rb") as f:
        head = f.read(len(LFS_MAGIC))
    if head == LFS_MAGIC:
        raise CorpusError(
            f"{path} is a git-lfs pointer file, not data: the corpus was cloned with git but its files were never "
            f"fetched. Run `git lfs pull` in that repository, or download it with `medret corpus download NAME "
            f"--db-dir DIR` (no git-lfs needed)")


def file_fingerprint(path: Path) -> list:
    """Cheap identity of a chunk file: name, size and a hash of its first and last 64 KiB."""
    size = path.stat().st_size
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(_PROBE))
        if size > _PROBE:
            f.seek(max(_PROBE, size - _PROBE))
            h.update(f.read(_PROBE))
    return [path.name, size, h.hexdigest()[:16]]


def sources_fingerprint(files: tuple[Path, ...] | list[Path]) -> str:
    h = hashlib.sha256()
    for p in files:
        h.update(orjson.dumps(file_fingerprint(p)))
    return h.hexdigest()


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


def iter_file(path: Path) -> Iterator[tuple[int, dict]]:
    check_not_lfs_pointer(path)
    with open(path, "rb") as f:
        lineno = 0
        for raw in f:
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
