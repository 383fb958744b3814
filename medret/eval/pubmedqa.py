"""PubMedQA (PQA-L, ``ori_pqal.json``) as a retrieval set: its 3,358 context snippets are the corpus,
its 1,000 questions the queries, and each question's own snippets the relevant ones."""
from __future__ import annotations

import os
from pathlib import Path

import orjson

from medret.errors import CorpusError
from medret.storage.atomic import atomic_write_bytes

#: where a user gets the file (MIT licence): PubMedQA's public repository
SOURCE = "https://github.com/pubmedqa/pubmedqa (file data/ori_pqal.json)"
FILE = "ori_pqal.json"


def locate(path: str | os.PathLike[str]) -> Path:
    """``ori_pqal.json`` given as the file, the folder that holds it, or a clone of PubMedQA's repository
    (``<clone>/data/ori_pqal.json``); CorpusError naming the path, what was looked for, and where to get it."""
    given = Path(path).expanduser()
    if given.is_dir():
        for cand in (given / FILE, given / "data" / FILE):
            if cand.is_file():
                return cand
        raise CorpusError(f"--pubmedqa {str(path)!r} is a folder without {FILE} (looked for {given / FILE} and "
                          f"{given / 'data' / FILE}): pass the path of {FILE} or its folder; get it from {SOURCE}")
    if not given.is_file():
        raise CorpusError(f"--pubmedqa {str(path)!r} not found: pass the path of PubMedQA's {FILE} (or its folder); "
                          f"get it from {SOURCE}")
    return given


def load(path: str | os.PathLike[str]) -> dict:
    """PubMedQA's ``ori_pqal.json`` ({PMID: {"QUESTION": str, "CONTEXTS": [str, ...], ...}}), checked."""
    file = locate(path)
    return parse(file.read_bytes(), file)


def parse(raw: bytes, file: Path) -> dict:
    """The content of ``file`` (``ori_pqal.json``), checked; see :func:`load`."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise CorpusError(f"--pubmedqa {str(file)!r} is not JSON ({e}): pass PubMedQA's {FILE} ({SOURCE})") from None
    if not isinstance(data, dict) or not data:
        raise CorpusError(f"--pubmedqa {str(file)!r} holds a JSON {type(data).__name__}, not PubMedQA's {FILE} (an "
                          f'object {{"<PMID>": {{"QUESTION": ..., "CONTEXTS": [...]}}}}); get it from {SOURCE}')
    for pmid, item in data.items():
        ok = isinstance(item, dict) and isinstance(item.get("QUESTION"), str) and isinstance(
            item.get("CONTEXTS"), list) and all(isinstance(c, str) for c in item["CONTEXTS"])
        if not ok:
            raise CorpusError(f"--pubmedqa {str(file)!r}: entry {str(pmid)[:40]!r} has no QUESTION string and "
                              f"CONTEXTS list of strings, so this is not PubMedQA's {FILE}; get it from {SOURCE}")
    return data


def snippets(data: dict) -> list[dict]:
    """Corpus rows {"id": "<PMID>_<i>", "title": "", "content": context} in file order."""
    return [{"id": f"{pmid}_{i}", "title": "", "content": ctx}
            for pmid, item in data.items() for i, ctx in enumerate(item["CONTEXTS"])]


def queries_and_qrels(data: dict) -> tuple[list[str], list[set[str]]]:
    qs = [item["QUESTION"] for item in data.values()]
    rel = [{f"{pmid}_{i}" for i in range(len(item["CONTEXTS"]))} for pmid, item in data.items()]
    return qs, rel


def write_corpus(data: dict, folder: str | os.PathLike[str]) -> Path:
    """Write the snippets as a MedRAG-layout corpus folder (``folder/chunk/pubmedqa.jsonl``)."""
    folder = Path(folder)
    lines = b"".join(orjson.dumps({**d, "contents": d["content"]}) + b"\n" for d in snippets(data))
    atomic_write_bytes(folder / "chunk" / "pubmedqa.jsonl", lines)
    return folder
