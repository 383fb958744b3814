"""PubMedQA (PQA-L, ``ori_pqal.json``) as a retrieval set: its 3,358 context snippets are the corpus,
its 1,000 questions the queries, and each question's own snippets the relevant ones."""
from __future__ import annotations

import os
from pathlib import Path

import orjson

from medret.errors import CorpusError
from medret.storage.atomic import atomic_write_bytes


def load(path: str | os.PathLike[str]) -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / "ori_pqal.json"
    if not path.is_file():
        raise CorpusError(f"PubMedQA file {str(path)!r} not found: pass the path of ori_pqal.json")
    return orjson.loads(path.read_bytes())


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
