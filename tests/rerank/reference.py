"""The reference of the rerank-stage tests: MedCPT-Cross-Encoder's published usage (its model card), written here
without medret: the tokenizer gets the pairs ``[query, article]`` (article = title and content joined as MedRAG joins
them), padded, truncated to 512 tokens; ``AutoModelForSequenceClassification`` gives one logit per pair; numpy sorts.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

QUERIES = ["sepsis mortality in elderly patients", "acute kidney injury creatinine",
           "anticoagulation for atrial fibrillation", "insulin for diabetic ketoacidosis",
           "heart failure congestion diuretics"]


def save_cross_encoder(folder: Path, make_tiny_bert, seed: int = 1, num_labels: int = 1) -> Path:
    """A random-weight ``BertForSequenceClassification(num_labels)`` with the tiny BERT's tokenizer, saved with
    save_pretrained (tokenizer included). The head's weights are drawn wide (std 1) so that logits of different
    pairs differ by far more than float rounding: the order under test is the model's, not noise."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    make_tiny_bert(folder, seed=seed)
    # as MedCPT's BertTokenizer does, the tokenizer gives segment ids (a pair's article is segment 1)
    config_file = folder / "tokenizer_config.json"
    tok_config = json.loads(config_file.read_text())
    tok_config["model_input_names"] = ["input_ids", "token_type_ids", "attention_mask"]
    config_file.write_text(json.dumps(tok_config))
    assert "token_type_ids" in AutoTokenizer.from_pretrained(folder)(["a"], ["b"])
    cfg = BertConfig.from_pretrained(folder)
    cfg.num_labels = num_labels
    torch.manual_seed(seed)
    model = BertForSequenceClassification(cfg).eval()
    with torch.no_grad():
        model.bert.pooler.dense.weight.normal_(0, 0.5)
        model.classifier.weight.normal_(0, 1.0)
    model.save_pretrained(folder)
    return folder


def medrag_join(title: str, content: str) -> str:
    """MedRAG's title/content join (as MedCPT-Cross-Encoder's card feeds title + abstract)."""
    t, c = title.strip(), content.strip()
    return f"{t} {c}" if t.endswith((".", "?", "!")) else f"{t}. {c}"


class Reference:
    """MedCPT's published cross-encoder usage over a saved folder."""

    def __init__(self, folder: Path):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModelForSequenceClassification.from_pretrained(folder).eval()

    def logits(self, query: str, docs: list[dict]) -> np.ndarray:
        """One logit per Search-R1 document ({"id", "title", "contents"}) paired with ``query``."""
        import torch

        articles = [medrag_join(d["title"], d["contents"].partition("\n")[2]) for d in docs]
        with torch.no_grad():
            enc = self.tokenizer([[query, a] for a in articles], truncation=True, padding=True, return_tensors="pt",
                                 max_length=512)
            return self.model(**enc).logits.squeeze(dim=1).numpy()

    def rerank(self, queries: list[str], first_stage: list[list[dict]], k: int) -> list[list[dict]]:
        """Per query: its own candidates, sorted by logit (numpy, stable), the k best as Search-R1 scored items."""
        out = []
        for q, docs in zip(queries, first_stage):
            s = self.logits(q, docs)
            out.append([{"document": docs[j], "score": float(s[j])} for j in np.argsort(-s, kind="stable")[:k]])
        return out

    def cross_paired(self, queries: list[str], first_stage: list[list[dict]], k: int) -> list[list[dict]]:
        """What Search-R1's rerank server answers: every query paired with every query's candidates."""
        everything = [d for docs in first_stage for d in docs]
        return self.rerank(queries, [everything] * len(queries), k)


def assert_same(got: dict, expected: list[list[dict]]) -> None:
    """Search-R1 JSON ``got`` equals ``expected``: the same documents in the same order, scores to 1e-3."""
    rows = got["result"]
    assert len(rows) == len(expected)
    for i, (g, e) in enumerate(zip(rows, expected)):
        assert [h["document"] for h in g] == [h["document"] for h in e], i
        np.testing.assert_allclose([h["score"] for h in g], [h["score"] for h in e], atol=1e-3, rtol=0)
