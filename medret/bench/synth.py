"""Synthetic MedRAG-layout corpora for scale runs.

Writes ``folder/chunk/<prefix>NNNN.jsonl`` with ``lines_per_file`` snippets each (MedRAG's PubMed files hold
~30,000), one JSON object a line ``{"id", "title", "content", "contents"}``, ids ``<file stem>_<line>`` like
MedRAG's. Word counts follow a log-normal law (median ``median_words``, spread ``sigma``; by default 90 % of
snippets have 60-250 words), words are drawn Zipf-like from a generated medical-sounding vocabulary, so BM25
statistics and snippet sizes resemble PubMed abstracts. Deterministic for a given seed.
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np
import orjson
from tqdm.auto import tqdm

from medret.errors import ConfigError
from medret.storage.atomic import atomic_path
from medret.validate import check_whole

log = logging.getLogger(__name__)

_ROOTS = ("cardi", "neur", "hepat", "nephr", "gastr", "pulmon", "derm", "oste", "hemat", "immun", "endocrin",
          "onc", "arthr", "my", "encephal", "angi", "cyt", "lymph", "thromb", "bronch", "col", "cyst", "path",
          "psych", "rhin", "ot", "ophthalm", "pancreat", "splen", "thyr", "adren", "glomerul", "vascul", "mening",
          "myel", "pneum", "laryng", "esophag", "enter", "chol")
_SUFFIXES = ("itis", "ology", "ectomy", "opathy", "emia", "oma", "osis", "algia", "ogenic", "oplasty", "ocyte",
             "ometry", "oscopy", "otomy", "ostomy", "al", "ic", "ia", "ase", "in")
_DRUG = ("mab", "nib", "pril", "sartan", "olol", "statin", "cillin", "mycin", "azole", "dipine", "tide", "prazole")
_COMMON = ("the", "of", "and", "in", "with", "to", "a", "for", "was", "were", "patients", "study", "results",
           "treatment", "clinical", "risk", "increased", "associated", "compared", "group", "significant",
           "therapy", "disease", "outcome", "mortality", "analysis", "after", "between", "we", "this", "these",
           "trial", "randomized", "cohort", "years", "months", "dose", "effect", "levels", "serum", "acute",
           "chronic", "severe", "children", "adults", "elderly", "women", "men", "cases", "control", "p", "ci",
           "ratio", "hazard", "odds", "mean", "median", "baseline", "follow-up", "diagnosis", "symptoms",
           "infection", "sepsis", "injury", "failure", "syndrome", "response", "expression", "receptor", "gene",
           "protein", "cell", "tissue", "blood", "pressure", "rate", "function", "imaging", "surgery", "care")


def vocabulary(seed: int = 0) -> list[str]:
    """~1,900 words: common clinical words, root+suffix terms and drug-like names."""
    rng = np.random.default_rng(seed)
    words = list(_COMMON) + [r + s for r in _ROOTS for s in _SUFFIXES]
    syll = ("ra", "lo", "ve", "ti", "ne", "za", "mo", "ce", "du", "pi", "xa", "be", "fe", "ko", "la", "ri")
    for _ in range(900):
        w = "".join(rng.choice(syll, size=int(rng.integers(2, 4)))) + str(rng.choice(_DRUG))
        words.append(w)
    return list(dict.fromkeys(words))


def _zipf_p(n: int, common: int) -> np.ndarray:
    p = 1.0 / np.arange(1, n + 1) ** 1.05
    p[:common] *= 3.0  # function words and clinical staples are frequent
    return p / p.sum()


def write_synthetic_corpus(folder: str | os.PathLike[str], n_snippets: int, lines_per_file: int = 30_000,
                           median_words: float = 120.0, sigma: float = 0.45, min_words: int = 15,
                           max_words: int = 600, seed: int = 0, prefix: str = "synth", with_contents: bool = True,
                           progress: bool = False) -> Path:
    """Write ``n_snippets`` snippets as MedRAG chunk files under ``folder/chunk``; existing complete files are kept.

    Each file is written to a temporary name and renamed when complete, so an interrupted run resumes.
    """
    for name, v in (("n_snippets", n_snippets), ("lines_per_file", lines_per_file)):
        check_whole(name, v)
    if not 1 <= min_words <= max_words:
        raise ConfigError(f"min_words={min_words}, max_words={max_words} is invalid: need 1 <= min <= max")
    if median_words <= 0 or sigma < 0:
        raise ConfigError(f"median_words={median_words}, sigma={sigma} is invalid: median > 0, sigma >= 0")
    folder = Path(folder)
    chunk = folder / "chunk"
    chunk.mkdir(parents=True, exist_ok=True)
    vocab = vocabulary(seed)
    vb = np.array([w.encode() + b" " for w in vocab], dtype=object)
    cap = np.array([(w[:1].upper() + w[1:]).encode() + b" " for w in vocab], dtype=object)
    p = _zipf_p(len(vocab), len(_COMMON))
    n_files = math.ceil(n_snippets / lines_per_file)
    digits = max(4, len(str(n_files)))
    bar = None
    if progress:
        bar = tqdm(total=n_files, desc="synthetic chunk files", unit="file")
    for fi in range(n_files):
        stem = f"{prefix}{fi + 1:0{digits}d}"
        path = chunk / f"{stem}.jsonl"
        rows = min(lines_per_file, n_snippets - fi * lines_per_file)
        if not path.exists():
            _write_file(path, stem, rows, np.random.default_rng([seed, fi]), vb, cap, p, median_words, sigma,
                        min_words, max_words, with_contents)
        if bar:
            bar.update(1)
    if bar:
        bar.close()
    log.info("synthetic corpus: %d snippets in %d chunk files under %s", n_snippets, n_files, chunk)
    return folder


def _write_file(path: Path, stem: str, rows: int, rng: np.random.Generator, vb: np.ndarray, cap: np.ndarray,
                p: np.ndarray, median_words: float, sigma: float, min_words: int, max_words: int,
                with_contents: bool) -> None:
    words = np.clip(np.round(rng.lognormal(math.log(median_words), sigma, rows)), min_words, max_words).astype(np.int64)
    twords = rng.integers(4, 15, rows)
    body = vb[rng.choice(len(vb), size=int(words.sum()), p=p)]
    title = cap[rng.choice(len(cap), size=int(twords.sum()), p=p)]
    bs = np.concatenate([[0], np.cumsum(words)])
    ts = np.concatenate([[0], np.cumsum(twords)])
    out = []
    for i in range(rows):
        t = b"".join(title[ts[i]:ts[i + 1]]).rstrip()
        c = b"".join(body[bs[i]:bs[i + 1]]).rstrip()
        c = c[:1].upper() + c[1:] + b"."
        doc = {"id": f"{stem}_{i}", "title": t.decode(), "content": c.decode()}
        if with_contents:
            doc["contents"] = f"{doc['title']}. {doc['content']}"
        out.append(orjson.dumps(doc))
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(b"\n".join(out) + b"\n")
