"""Cross-encoders: one logit per (query, article) pair, the score of the rerank stage.

A cross-encoder is a sequence-classification model with one label (``BertForSequenceClassification(num_labels=1)``:
MedCPT-Cross-Encoder, Search-R1's ms-marco reranker). As MedCPT's model card uses it, the tokenizer gets the pair
``[query, article]``, truncated longest-first to ``max_length`` tokens, and the score is the single logit. Pairs are
tokenized once, sorted by length and batched (:func:`medret.encoders.hf.batches`), so a request's pairs share few
padded positions; the scores come back in the pairs' order.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from medret import optional
from medret.encoders.hf import _load, padded_batches
from medret.encoders.locate import is_local, model_location
from medret.encoders.specs import RerankerSpec
from medret.errors import ConfigError

logger = logging.getLogger(__name__)

HEAD = "AutoModelForSequenceClassification"


def cross_encoder_problem(config: dict[str, Any]) -> str | None:
    """What keeps a model's ``config.json`` (as a dict) from being a cross-encoder, or None: it must name a
    ``...ForSequenceClassification`` architecture with one label (the score)."""
    archs = config.get("architectures") or []
    if not any(isinstance(a, str) and a.endswith("ForSequenceClassification") for a in archs):
        return (f"its config.json names architectures={archs!r}, not a sequence-classification model (a "
                "cross-encoder is saved as e.g. BertForSequenceClassification)")
    # save_pretrained leaves out id2label when it is the default (two labels)
    labels = len(config["id2label"]) if config.get("id2label") else config.get("num_labels", 2)
    if labels != 1:
        return f"it has {labels} labels; a cross-encoder gives one score per pair (num_labels=1)"
    return None


def folder_problem(folder: str | os.PathLike[str]) -> str | None:
    """:func:`cross_encoder_problem` of a local model folder (None when it is one)."""
    path = Path(folder).expanduser() / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        return f"its config.json cannot be read ({type(e).__name__}: {e})"
    return cross_encoder_problem(config if isinstance(config, dict) else {})


def _refuse(spec: RerankerSpec, location: str, problem: str) -> ConfigError:
    return ConfigError(f"reranker={spec.model!r} is invalid: {location} is not a cross-encoder: {problem}. Fix: give "
                       "MedCPT-Cross-Encoder, or a folder saved from a sequence-classification model with one label "
                       "(AutoModelForSequenceClassification.from_pretrained(..., num_labels=1).save_pretrained(DIR))")


class CrossEncoder:
    """Scores (query, document) pairs as ``spec`` prescribes, on ``device`` (fp16 by default on CUDA)."""

    def __init__(self, spec: RerankerSpec, device: str = "cpu", fp16: bool | None = None,
                 models_dir: str | os.PathLike[str] | None = None, batch_size: int = 64):
        torch = optional.torch
        self.spec = spec
        self.device = str(device)
        self.fp16 = self.device.startswith("cuda") if fp16 is None else bool(fp16)
        self.batch_size = batch_size
        self.location = model_location(spec.model, None, models_dir)
        if is_local(self.location):
            problem = folder_problem(self.location)
            if problem is not None:
                raise _refuse(spec, self.location, problem)
        dtype = torch.float16 if self.fp16 else torch.float32
        self.tokenizer, self.model = _load(spec.model, self.location, "reranker", spec.name, dtype, models_dir,
                                           head=HEAD)
        problem = cross_encoder_problem(self.model.config.to_dict())
        if problem is not None:
            raise _refuse(spec, self.location, problem)
        self.model.to(self.device)
        self.model.eval()
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.wants_token_types = int(getattr(self.model.config, "type_vocab_size", 0) or 0) >= 2
        logger.info("loaded cross-encoder %s from %s on %s (%s)", spec.name, self.location, self.device, dtype)

    def score(self, queries: Sequence[str], articles: Sequence[str]) -> np.ndarray:
        """The logit of each pair ``(queries[i], articles[i])``, float32, in the pairs' order."""
        torch = optional.torch
        n = len(queries)
        if n != len(articles):
            raise ValueError(f"{n} queries for {len(articles)} articles")
        if n == 0:
            return np.zeros(0, dtype=np.float32)
        kw: dict[str, Any] = dict(truncation=True, max_length=self.spec.max_length, padding=False,
                                  return_attention_mask=False)
        if self.wants_token_types:
            kw["return_token_type_ids"] = True
        enc = self.tokenizer(list(queries), list(articles), **kw)
        out = np.empty(n, dtype=np.float32)
        with torch.inference_mode():
            for idx, batch in padded_batches(enc["input_ids"], enc.get("token_type_ids"), self.pad_id,
                                             self.batch_size, self.device):
                logits = self.model(**batch, return_dict=True).logits
                out[idx] = logits[:, 0].float().cpu().numpy()
        return out
