"""Sharding is an engine feature: an engine whose exact dense index is split by rows over shard workers (what a
sharded Ray actor hosts, with Ray actors as the workers) has its query encoder and every shard on the device it
reports, and answers exactly like the unsharded engine.

The device spy, for CPU-only runs: medret's CUDA probe reports one GPU, and every ``.to(device)`` of a module or
a tensor is recorded, then carried out on the CPU. So the test sees where medret *puts* the encoder, the queries and
the shards' rows; it would see "cpu" for an encoder built on the CPU and relabelled (the bug this replaced: the
sharded actor reported cuda while encoding on the CPU).
"""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

import medret.device
from medret.config import RetrieverConfig
from medret.engine import Engine
from medret.index.searchers import DenseSearcher, Shards
from medret.index.sharded import LocalShardHost

QUERIES = ["sepsis in the elderly", "kidney injury", "stroke risk", "insulin dosing"]


class DeviceSpy:
    """Records the device of every ``Module.to`` / ``Tensor.to`` call made by medret's code (the library's own
    placements; transformers moves its internal tensors to wherever the inputs are); runs them on the CPU."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.modules: list[str] = []
        self.tensors: list[str] = []
        real_module_to, real_tensor_to = torch.nn.Module.to, torch.Tensor.to

        inside_module_to = [False]  # a module's .to moves each parameter: one placement, not hundreds

        def spy(record: list[str], real, is_module: bool):
            def to(obj, *args, **kwargs):
                args, kwargs = list(args), dict(kwargs)
                where = None
                if args and isinstance(args[0], (str, torch.device)):
                    where, args[0] = str(torch.device(args[0])), "cpu"
                elif isinstance(kwargs.get("device"), (str, torch.device)):
                    where, kwargs["device"] = str(torch.device(kwargs["device"])), "cpu"
                if where is not None and not inside_module_to[0] and _placed_by_medret():
                    record.append(where)
                if not is_module:
                    return real(obj, *args, **kwargs)
                inside_module_to[0] = True
                try:
                    return real(obj, *args, **kwargs)
                finally:
                    inside_module_to[0] = False
            return to

        monkeypatch.setattr(torch.nn.Module, "to", spy(self.modules, real_module_to, True))
        monkeypatch.setattr(torch.Tensor, "to", spy(self.tensors, real_tensor_to, False))
        monkeypatch.setattr(medret.device, "_torch_device_count", lambda: 1)
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def _placed_by_medret() -> bool:
    """Whether medret's own code asked for this placement: the caller, past the spy and the ``to`` methods that
    models override (transformers' ``PreTrainedModel.to`` calls torch's), is a medret module. (transformers also
    moves its internal tensors where the inputs are, in its own code: not medret's placements.)"""
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_globals.get("__name__", "")
        if name == __name__ or (name.startswith(("torch", "transformers")) and frame.f_code.co_name == "to"):
            frame = frame.f_back
            continue
        return name.startswith("medret.")
    return False


def _config(toy_corpus, tiny_bert_dir, device: str) -> RetrieverConfig:
    # fp32: CPU kernels for fp16 BERT layers differ between the torch versions the suite runs with
    return RetrieverConfig(corpus_name=str(toy_corpus), retriever_name=str(tiny_bert_dir), pooling="cls",
                           device=device, fp16=False)


def test_sharded_engine_encodes_and_searches_on_the_device_it_reports(toy_corpus, tiny_bert_dir, monkeypatch):
    plain = Engine(_config(toy_corpus, tiny_bert_dir, "cpu"))  # builds the index; the reference answer
    want_s, want_r = plain.search_rows(QUERIES, 5)
    plain.close()

    spy = DeviceSpy(monkeypatch)
    engine = Engine(_config(toy_corpus, tiny_bert_dir, "cuda"), shards=Shards(2, LocalShardHost()))
    try:
        assert engine.info()["device"] == engine.device == "cuda:0"
        [searcher] = engine.searchers
        assert isinstance(searcher, DenseSearcher)
        # the encoder's model was put on the reported device, and nowhere else
        assert spy.modules and set(spy.modules) == {"cuda:0"}
        assert searcher.encoder.device == "cuda:0"
        # every shard holds its rows on that device
        [sharded] = engine.sharded()
        shards = sharded.describe()
        assert len(shards) == 2 and [s["device"] for s in shards] == ["cuda:0", "cuda:0"]
        assert shards[0]["end"] == shards[1]["start"] and shards[1]["end"] == sharded.ntotal
        # a search sends the queries' tensors (and the shards' work) to that device only
        spy.tensors.clear()
        got_s, got_r = engine.search_rows(QUERIES, 5)
        assert spy.tensors and set(spy.tensors) == {"cuda:0"}
    finally:
        engine.close()
    np.testing.assert_array_equal(got_r, want_r)
    np.testing.assert_allclose(got_s, want_s, rtol=1e-5, atol=1e-5)


def test_a_cpu_engine_puts_nothing_on_a_gpu(toy_corpus, tiny_bert_dir, monkeypatch):
    """The spy's other side: with device='cpu' every placement is the CPU, with shards or without."""
    Engine(_config(toy_corpus, tiny_bert_dir, "cpu")).close()  # build the index first
    spy = DeviceSpy(monkeypatch)
    engine = Engine(_config(toy_corpus, tiny_bert_dir, "cpu"), shards=Shards(3, LocalShardHost()))
    try:
        engine.search_rows(QUERIES, 3)
        assert engine.device == "cpu" and {s["device"] for s in engine.sharded()[0].describe()} == {"cpu"}
        assert set(spy.modules + spy.tensors) <= {"cpu"}
    finally:
        engine.close()


def test_only_dense_indexes_are_sharded(monkeypatch):
    from medret.errors import ConfigError

    with pytest.raises(ConfigError, match="only dense indexes are sharded"):
        Engine(RetrieverConfig(retriever_name="BM25"), shards=Shards(2, LocalShardHost()))
