"""Labelled retrieval sets from files: TREC / BEIR qrels, BEIR queries and corpora, and PubMedQA.

* qrels: TREC ``qid 0 docid rel`` (whitespace separated, 4 columns) or BEIR ``query-id<TAB>corpus-id<TAB>score``
  (3 columns, optional header). A document is relevant when its grade is > 0.
* queries: BEIR ``queries.jsonl`` (``{"_id", "text"}``), or a TSV ``qid<TAB>text`` (TREC topics as TSV).
* corpus: BEIR ``corpus.jsonl`` (``{"_id", "title", "text"}``), converted to a MedRAG-layout folder medret opens.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import orjson

from medret.errors import CorpusError
from medret.eval.pubmedqa import queries_and_qrels
from medret.storage.atomic import atomic_path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LabelledSet:
    """Queries (in order), their ids, and for each the set of relevant document ids."""

    name: str
    qids: tuple[str, ...]
    queries: tuple[str, ...]
    relevant: tuple[frozenset[str], ...]

    def __len__(self) -> int:
        return len(self.queries)


def load_qrels(path: str | os.PathLike[str]) -> dict[str, dict[str, int]]:
    """``{qid: {docid: grade}}`` from a TREC or BEIR qrels file."""
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"qrels={str(path)!r} not found: pass a TREC (qid 0 docid rel) or BEIR (TSV) qrels file")
    out: dict[str, dict[str, int]] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split("\t") if "\t" in line else line.split()
            if len(parts) == 4:
                qid, _, doc, grade = parts
            elif len(parts) == 3:
                qid, doc, grade = parts
            else:
                raise CorpusError(f"{path}:{lineno}: {len(parts)} columns in {line[:80]!r}; a qrels line is "
                                  f"'qid 0 docid relevance' (TREC) or 'query-id<TAB>corpus-id<TAB>score' (BEIR)")
            try:
                g = int(float(grade))
            except ValueError:
                if lineno == 1 and not out:  # BEIR header: query-id corpus-id score
                    continue
                raise CorpusError(f"{path}:{lineno}: relevance={grade!r} is not a number; the last column of a "
                                  f"qrels line is the relevance grade (0 = not relevant)") from None
            out.setdefault(qid.strip(), {})[doc.strip()] = g
    if not out:
        raise CorpusError(f"qrels={str(path)!r} holds no judgements")
    return out


def load_queries(path: str | os.PathLike[str]) -> dict[str, str]:
    """``{qid: text}`` in file order from BEIR ``queries.jsonl`` or a ``qid<TAB>text`` file."""
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"queries={str(path)!r} not found: pass a BEIR queries.jsonl or a qid<TAB>text file")
    out: dict[str, str] = {}
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            if raw.lstrip().startswith(b"{"):
                try:
                    obj = orjson.loads(raw)
                except orjson.JSONDecodeError as e:
                    raise CorpusError(f"{path}:{lineno} is not valid JSON ({e})") from None
                qid = obj.get("_id", obj.get("id"))
                text = obj.get("text", obj.get("query"))
                if qid is None or not isinstance(text, str):
                    raise CorpusError(f'{path}:{lineno}: a query line needs "_id" (or "id") and "text" (or "query"); '
                                      f"found fields {sorted(obj)}")
                out[str(qid)] = text
            else:
                line = raw.decode("utf-8").rstrip("\n")
                qid, sep, text = line.partition("\t")
                if not sep or not text.strip():
                    raise CorpusError(f"{path}:{lineno}: {line[:80]!r} is not 'qid<TAB>query text'")
                out[qid.strip()] = text.strip()
    return out


def labelled_set(queries: dict[str, str], qrels: dict[str, dict[str, int]], name: str = "qrels") -> LabelledSet:
    """Pair queries with their relevant ids; queries without a relevant document are left out (and logged)."""
    qids, texts, rel = [], [], []
    skipped = 0
    for qid, text in queries.items():
        r = frozenset(d for d, g in qrels.get(qid, {}).items() if g > 0)
        if not r:
            skipped += 1
            continue
        qids.append(qid)
        texts.append(text)
        rel.append(r)
    if skipped:
        log.info("%d queries have no relevant document in the qrels and are left out", skipped)
    missing = set(qrels) - set(queries)
    if missing:
        log.warning("%d qrels query ids have no query text (e.g. %s)", len(missing), sorted(missing)[:3])
    if not qids:
        raise CorpusError("no query of the queries file has a relevant document in the qrels: check that the ids "
                          "match (BEIR '_id' against qrels 'query-id')")
    return LabelledSet(name, tuple(qids), tuple(texts), tuple(rel))


def load_labelled(queries_path: str | os.PathLike[str], qrels_path: str | os.PathLike[str]) -> LabelledSet:
    return labelled_set(load_queries(queries_path), load_qrels(qrels_path), Path(qrels_path).stem)


def pubmedqa_set(data: dict) -> LabelledSet:
    """PubMedQA PQA-L: each question, relevant = that question's own context snippets."""
    qs, rel = queries_and_qrels(data)
    return LabelledSet("pubmedqa", tuple(data.keys()), tuple(qs), tuple(frozenset(r) for r in rel))


def write_beir_corpus(corpus_jsonl: str | os.PathLike[str], folder: str | os.PathLike[str]) -> Path:
    """Write a BEIR ``corpus.jsonl`` as a MedRAG-layout folder (``folder/chunk/<stem>.jsonl``), atomically."""
    src = Path(corpus_jsonl)
    if not src.is_file():
        raise CorpusError(f"corpus={str(src)!r} not found: pass a BEIR corpus.jsonl")
    folder = Path(folder)
    target = folder / "chunk" / f"{src.stem}.jsonl"
    with atomic_path(target) as tmp, open(src, "rb") as f, open(tmp, "wb") as out:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                obj = orjson.loads(raw)
            except orjson.JSONDecodeError as e:
                raise CorpusError(f"{src}:{lineno} is not valid JSON ({e})") from None
            if "_id" not in obj or "text" not in obj:
                raise CorpusError(f'{src}:{lineno}: a BEIR corpus line needs "_id" and "text"; found {sorted(obj)}')
            title, text = obj.get("title") or "", obj["text"]
            out.write(orjson.dumps({"id": str(obj["_id"]), "title": title, "content": text,
                                    "contents": f"{title}. {text}" if title else text}) + b"\n")
    return folder
