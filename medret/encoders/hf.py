"""Hugging Face transformer encoders for queries and documents.

Models are loaded with ``AutoTokenizer.from_pretrained`` / ``AutoModel.from_pretrained`` from a local directory
or the Hugging Face cache; where a model is looked for, and how a hub that cannot be reached is detected in one
request, is :mod:`medret.encoders.locate`.

Within one call texts are tokenized once, sorted by token length and batched so padding is minimal;
the output rows are returned in the input order.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from medret import compat, optional
from medret.encoders.locate import (
    MODELS_DIR_ENV,
    hub_problem,
    is_local,
    is_model_id,
    model_location,
    offline_fix,
    search_dirs,
)
from medret.encoders.pooling import l2_normalize, pool
from medret.encoders.recipe_check import require_recipe_model, width_problem
from medret.encoders.specs import EncoderSpec, format_docs, format_query
from medret.errors import ConfigError, ModelNotFoundError
from medret.fetch.env import hf_cache_dir, hf_offline
from medret.validate import check_text, check_whole

logger = logging.getLogger(__name__)
_ROLE = {"doc": "document"}

class _Part:
    """One tokenizer + model pair (queries or documents)."""

    def __init__(self, model: str, location: str, role: str, spec_name: str, device: str, fp16: bool,
                 models_dir: str | os.PathLike[str] | None = None):
        torch = optional.torch
        self.model_id = model
        self.location = location
        dtype = torch.float16 if fp16 else torch.float32
        self.tokenizer, self.model = _load(model, location, role, spec_name, dtype, models_dir)
        self.model.to(device)
        self.model.eval()
        self.device = device
        self.dtype = dtype
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.dim = int(getattr(self.model.config, "hidden_size", 0) or 0)
        self.max_tokens = position_limit(self.model.config)
        # Segment ids matter for sentence pairs (MedCPT's [title, content]); some saved tokenizers do not
        # list them in model_input_names, so ask for them whenever the model has segment embeddings.
        self.wants_token_types = int(getattr(self.model.config, "type_vocab_size", 0) or 0) >= 2
        logger.info("loaded %s encoder %s from %s on %s (%s)", role, model, location, device, dtype)


# models whose position ids start after the padding index (fairseq's convention): 2 of their positions are not usable
_OFFSET_POSITIONS = {"roberta": 2, "xlm-roberta": 2, "camembert": 2, "mpnet": 2, "xlm-roberta-xl": 2}


def position_limit(config: Any) -> int | None:
    """The most tokens one input may have (``max_position_embeddings``, less the positions a model reserves), or
    None when the config does not say."""
    n = getattr(config, "max_position_embeddings", None)
    if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
        return None
    return n - _OFFSET_POSITIONS.get(str(getattr(config, "model_type", "")), 0)


def _from_pretrained(location: str, dtype: Any, local_only: bool = False, head: str = "AutoModel") -> tuple[Any, Any]:
    """``from_pretrained`` of a folder, or of a hub id with the Hugging Face cache as the environment names it now
    (the hub library reads HF_HOME / HF_HUB_CACHE once, at import) and, with ``local_only``, no network at all.
    ``head``: the transformers auto class of the model (a cross-encoder's: AutoModelForSequenceClassification)."""
    transformers = optional.transformers
    AutoModel, AutoTokenizer = getattr(transformers, head), transformers.AutoTokenizer
    kw: dict[str, Any] = {}
    if not is_local(location):
        kw["cache_dir"] = str(hf_cache_dir())
        if local_only:
            kw["local_files_only"] = True
    return (AutoTokenizer.from_pretrained(location, **kw),
            AutoModel.from_pretrained(location, **compat.dtype_kwargs(dtype), **kw))


def _load(model: str, location: str, role: str, spec_name: str, dtype: Any,
          models_dir: str | os.PathLike[str] | None = None, head: str = "AutoModel") -> tuple[Any, Any]:
    """Tokenizer and model from a folder, from the Hugging Face cache without network, or from the hub, in that
    order; a hub that cannot be reached is found with one request and reported at once (no retry storm)."""
    if is_local(location) or hf_offline():  # nothing here asks the network
        try:
            return _from_pretrained(location, dtype, local_only=True, head=head)
        except (OSError, ValueError, EnvironmentError) as e:
            raise ModelNotFoundError(_not_found_message(model, location, role, spec_name, e, None, models_dir)) from e
    if not is_model_id(location):  # a path that does not exist: nothing to ask the hub
        raise ModelNotFoundError(_not_found_message(model, location, role, spec_name,
                                                    FileNotFoundError("no such folder"), None, models_dir))
    try:
        # the whole model is in the Hugging Face cache
        return _from_pretrained(location, dtype, local_only=True, head=head)
    except Exception as e:  # noqa: BLE001 - any failure here only means "not (all) cached"
        logger.debug("%s is not (completely) in the Hugging Face cache: %s", location, e)
    problem = hub_problem(location)
    if problem is not None:
        raise ModelNotFoundError(_not_found_message(model, location, role, spec_name, None, problem, models_dir))
    try:
        return _from_pretrained(location, dtype, local_only=False, head=head)
    except (OSError, ValueError, EnvironmentError) as e:
        raise ModelNotFoundError(_not_found_message(model, location, role, spec_name, e, None, models_dir)) from e


def _not_found_message(model: str, location: str, role: str, spec_name: str, err: BaseException | None,
                       hub: str | None = None, models_dir: str | os.PathLike[str] | None = None) -> str:
    where = f"{location!r}" if location == model else f"{location!r} (for {model!r})"
    if err is not None:
        text = str(err).strip()
        first = text.splitlines()[0] if text else type(err).__name__
    else:
        first = f"it is not in the Hugging Face cache and the hub is unreachable: {hub}"
    if is_local(location) or not is_model_id(location):
        return (f"cannot load the {_ROLE.get(role, role)} model of retriever {spec_name!r} from {where}: {first}. "
                "Fix: give a local model directory saved with save_pretrained (config.json, weights, tokenizer files), "
                f"or download {model} with `medret models download {spec_name}` and leave the path unset")
    hf_home = os.environ.get("HF_HOME", "~/.cache/huggingface (default)")
    offline = os.environ.get("HF_HUB_OFFLINE", "unset")
    looked = ", ".join(str(d / model) for d in search_dirs(models_dir))
    return (f"cannot load the {_ROLE.get(role, role)} model of retriever {spec_name!r} from {where}: {first}. "
            f"medret looked in {looked} (--models-dir / {MODELS_DIR_ENV}) and the Hugging Face cache "
            f"(HF_HOME={hf_home}, HF_HUB_OFFLINE={offline}). Fix: {offline_fix(spec_name)}")


class Encoder:
    """Encode queries and documents as ``spec`` prescribes.

    The query model is loaded when the encoder is created (so a missing model fails early); the document
    model is loaded on the first :meth:`encode_docs` call unless it is the same model. ``fp16`` defaults to
    True on CUDA and False on CPU.
    """

    def __init__(
        self,
        spec: EncoderSpec,
        device: str = "cpu",
        fp16: bool | None = None,
        query_model_path: str | os.PathLike[str] | None = None,
        doc_model_path: str | os.PathLike[str] | None = None,
        *,
        load_query: bool = True,
        models_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.spec = spec
        self.device = str(device)
        self.fp16 = self.device.startswith("cuda") if fp16 is None else bool(fp16)
        if self.fp16 and not self.device.startswith("cuda"):
            logger.warning("fp16 encoding on %s is slow and less precise; it is meant for CUDA", self.device)
        self._query_loc = model_location(spec.query_model, query_model_path, models_dir)
        self._doc_loc = model_location(spec.doc_model, doc_model_path, models_dir)
        self._models_dir = models_dir
        # a folder found for the recipe's model id (not one given on purpose) is held to the recipe
        self._explicit = {"query": query_model_path, "doc": doc_model_path}
        self._parts: dict[str, _Part] = {}
        if load_query:
            self._part("query")
        problem = width_problem(spec.name, self._query_loc, self._doc_loc)
        if problem:
            raise ModelNotFoundError(problem)

    # ------------------------------------------------------------------ loading
    def _part(self, role: str) -> _Part:
        loc = self._query_loc if role == "query" else self._doc_loc
        model = self.spec.query_model if role == "query" else self.spec.doc_model
        if role not in self._parts:
            shared = [p for p in self._parts.values() if p.location == loc]
            if shared:
                part = shared[0]
            else:
                require_recipe_model(self.spec.name, role, model, self._explicit[role], loc)
                part = _Part(model, loc, role, self.spec.name, self.device, self.fp16, self._models_dir)
            self._check_length(role, part)
            self._parts[role] = part
        return self._parts[role]

    def _check_length(self, role: str, part: _Part) -> None:
        """A token limit above the model's positions is refused now, not by torch at the first long input."""
        max_len = self.spec.query_max_len if role == "query" else self.spec.doc_max_len
        if part.max_tokens is not None and max_len > part.max_tokens:
            flag = "--query-max-length" if role == "query" else "--doc-max-length"
            raise ConfigError(
                f"the {_ROLE.get(role, role)} token limit {max_len} ({flag} / --max-length) is more than "
                f"{part.model_id} takes: its max_position_embeddings allow {part.max_tokens} tokens an input "
                f"({part.location}/config.json); give {flag} {part.max_tokens} or less")

    @property
    def dim(self) -> int:
        part = self._parts.get("query") or self._part("doc")
        return part.dim

    # ------------------------------------------------------------------ encoding
    def encode_queries(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """Encode queries; returns float32 (len(texts), dim)."""
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise ConfigError(f"queries[{i}]={t!r} is invalid: each query must be a string")
            check_text(t, f"queries[{i}]")
        part = self._part("query")
        inputs = [format_query(self.spec, t) for t in texts]
        return self._encode(part, inputs, None, self.spec.query_max_len, batch_size)

    def encode_docs(self, docs: Sequence[Mapping[str, Any]], batch_size: int = 64) -> np.ndarray:
        """Encode documents (dicts with ``title`` and ``content``); returns float32 (len(docs), dim)."""
        part = self._part("doc")
        formatted = format_docs(self.spec, docs, sep_token=part.tokenizer.sep_token)
        if self.spec.doc_pair_input:
            firsts = [p[0] for p in formatted]
            seconds = [p[1] for p in formatted]
            return self._encode(part, firsts, seconds, self.spec.doc_max_len, batch_size)
        return self._encode(part, list(formatted), None, self.spec.doc_max_len, batch_size)  # type: ignore[arg-type]

    def tokenize(self, role: str, first: list[str], second: list[str] | None,
                 max_len: int) -> dict[str, list[list[int]]]:
        """Token ids exactly as the model sees them (unpadded); exposed for tests and diagnostics."""
        part = self._part(role)
        return _tokenize(part, first, second, max_len)

    def _encode(
        self, part: _Part, first: list[str], second: list[str] | None, max_len: int, batch_size: int
    ) -> np.ndarray:
        torch = optional.torch
        check_whole("batch_size", batch_size)
        n = len(first)
        if n == 0:
            return np.zeros((0, part.dim), dtype=np.float32)
        enc = _tokenize(part, first, second, max_len)
        out = np.empty((n, part.dim), dtype=np.float32)
        with torch.inference_mode():
            for idx, batch in padded_batches(enc["input_ids"], enc.get("token_type_ids"), part.pad_id, batch_size,
                                             part.device):
                hidden = part.model(**batch, return_dict=True).last_hidden_state
                vec = pool(hidden, batch["attention_mask"], self.spec.pooling)
                if self.spec.normalize:
                    vec = l2_normalize(vec)
                out[idx] = vec.float().cpu().numpy()
        return out


def padded_batches(ids: Sequence[Sequence[int]], types: Sequence[Sequence[int]] | None, pad_id: int, batch_size: int,
                   device: Any) -> Iterator[tuple[np.ndarray, dict[str, Any]]]:
    """Token lists in length-sorted batches, longest first (a too-large batch fails at once), right-padded: each
    batch's row positions and the model's inputs as tensors on ``device`` (token types where the tokenizer gave
    them). The shared input side of the encoders and the cross-encoder."""
    torch = optional.torch
    n = len(ids)
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=n)
    order = np.argsort(-lengths, kind="stable")
    for span in batches(lengths[order], batch_size, str(device) == "cpu"):
        idx = order[span]
        width = int(lengths[idx[0]])
        input_ids = np.full((len(idx), width), pad_id, dtype=np.int64)
        mask = np.zeros((len(idx), width), dtype=np.int64)
        tt = np.zeros((len(idx), width), dtype=np.int64) if types is not None else None
        for r, j in enumerate(idx):
            length = int(lengths[j])
            input_ids[r, :length] = ids[j]
            mask[r, :length] = 1
            if tt is not None and types is not None:
                tt[r, :length] = types[j]
        batch = {"input_ids": torch.from_numpy(input_ids).to(device),
                 "attention_mask": torch.from_numpy(mask).to(device)}
        if tt is not None:
            batch["token_type_ids"] = torch.from_numpy(tt).to(device)
        yield idx, batch


# CPU batches: a new batch starts where a text is this much shorter than the batch's longest (its padding)
CPU_PAD_SHARE = 0.1
CPU_MIN_ROWS = 8


def batches(sorted_lengths: np.ndarray, batch_size: int, cpu: bool) -> list[slice]:
    """Batches over texts sorted longest first: ``batch_size`` rows each; on CPU, where a forward pass costs in
    proportion to its padded positions, also cut where a text's padding would exceed ``CPU_PAD_SHARE`` of the
    batch's width (after at least ``CPU_MIN_ROWS`` rows). On a GPU a few large batches beat many exact ones:
    padding there is nearly free next to per-batch launch costs.

    Measured (Search-R1 comparison, PubMedQA questions, BERT-base, 2 cores): padded positions of batch 512 were
    12.8-13.8k with plain 256-row batches against 9.3k summed lengths.
    """
    n = len(sorted_lengths)
    out, start = [], 0
    while start < n:
        stop = min(n, start + batch_size)
        if cpu:
            floor = sorted_lengths[start] * (1 - CPU_PAD_SHARE)
            # first position (after the minimum rows) whose text is shorter than the floor
            cut = start + CPU_MIN_ROWS + int(np.argmax(sorted_lengths[start + CPU_MIN_ROWS:stop] < floor)) \
                if stop - start > CPU_MIN_ROWS and sorted_lengths[stop - 1] < floor else stop
            stop = min(stop, cut)
        out.append(slice(start, stop))
        start = stop
    return out


def _tokenize(part: _Part, first: list[str], second: list[str] | None, max_len: int) -> dict[str, list[list[int]]]:
    kwargs: dict[str, Any] = dict(truncation=True, max_length=max_len, padding=False, return_attention_mask=False)
    if part.wants_token_types:
        kwargs["return_token_type_ids"] = True
    if second is None:
        enc = part.tokenizer(first, **kwargs)
    else:
        enc = part.tokenizer(first, second, **kwargs)
    out: dict[str, list[list[int]]] = {"input_ids": enc["input_ids"]}
    if "token_type_ids" in enc:
        out["token_type_ids"] = enc["token_type_ids"]
    return out
