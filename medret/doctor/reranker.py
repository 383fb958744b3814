"""The rerank stage's check: the cross-encoder is there (a folder, medret's models dir or the Hugging Face cache), is
a sequence-classification model with one label, loads on the retriever's device and scores a pair."""
from __future__ import annotations

import time
from typing import Any

from medret.doctor.checks import FAIL, OK, WARN, Check
from medret.doctor.data import device_or_none
from medret.doctor.runtime import _model_availability  # the encoders' notion of "present"
from medret.encoders.cross import CrossEncoder, folder_problem
from medret.encoders.locate import hub_problem, is_local, model_location, offline_fix
from medret.encoders.specs import reranker_for
from medret.errors import MedretError
from medret.transports import transport_class

KEY = "reranker"


def check_reranker(config: Any) -> list[Check]:
    """One line for the configured cross-encoder (none without a rerank stage)."""
    if transport_class(config.backend).remote or config.reranker is None:  # a server loads its own
        return []
    try:
        spec = reranker_for(config)
    except MedretError as e:
        return [Check(KEY, FAIL, "the reranker's recipe is invalid", str(e), "fix the --reranker* flags")]
    assert spec is not None
    what = f"cross-encoder {spec.name}"
    loc = model_location(spec.model, None, config.models_dir)
    download = (f"`medret models download {spec.name}`" if not is_local(spec.model) else
                "save a sequence-classification model with one label there")
    if is_local(loc):
        problem = folder_problem(loc)
        if problem is not None:
            return [Check(KEY, FAIL, f"{what}: {loc} is not a cross-encoder", problem,
                          "give --reranker MedCPT-Cross-Encoder, or a folder saved from "
                          "AutoModelForSequenceClassification with num_labels=1")]
    else:
        state = _model_availability(loc)
        if state == "missing-offline":
            return [Check(KEY, FAIL, f"{what}: {loc} is not downloaded and HF_HUB_OFFLINE is set", "",
                          offline_fix(spec.name))]
        if state == "missing-online":
            problem = hub_problem(loc)
            return [Check(KEY, FAIL if problem else WARN, f"{what}: {loc} is not downloaded" +
                          (" and the hub cannot be reached" if problem else " yet"),
                          problem or "it will be downloaded on first use; compute nodes without internet need it "
                          f"beforehand ({download})", offline_fix(spec.name))]
    device = device_or_none(config) or "cpu"
    try:
        t0 = time.perf_counter()
        model = CrossEncoder(spec, device, fp16=config.fp16, models_dir=config.models_dir, batch_size=1)
        model.score(["doctor test"], ["doctor. test"])
        dt = time.perf_counter() - t0
    except Exception as e:  # noqa: BLE001 - report whatever the loader raised
        return [Check(KEY, FAIL, f"{what} does not load from {loc}", str(e),
                      f"fix --reranker, or download it again: {offline_fix(spec.name)}")]
    return [Check(KEY, OK, f"{what} loads from {loc} on {device} and scores a pair ({dt:.1f}s; depth "
                  f"{config.rerank_depth}, max {spec.max_length} tokens)")]
