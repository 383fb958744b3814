"""Bad KARE input: a clear error naming the file, the record and the field; nothing written or changed."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from medret.recipes.kare.prepare import PrepareOptions, prepare
from medret.recipes.kare.records import (
    KareInputError,
    load_samples,
    load_similar,
    parse_samples,
    split_label,
)


def rec(pid: str = "p1", vid: str = "v1", label: Any = 0, n: int = 2, **over: Any) -> dict[str, Any]:
    r: dict[str, Any] = {
        "visit_id": vid,
        "patient_id": pid,
        "conditions": [["shock"]] * n,
        "procedures": [[]] * n,
        "drugs": [["opioids"]] * n,
        "label": label,
    }
    r.update(over)
    return r


GOOD = [rec("p1", "v1"), rec("p1", "v2", n=3), rec("p2", "v3", label=1), rec("p3", "v4"), rec("p4", "v5", label=1)]


def run_bad(tmp_path: Path, samples: Any, similar: Any = None) -> str:
    """prepare() on bad input into a directory holding an earlier good run; returns the error text."""
    good = tmp_path / "good.json"
    good.write_text(json.dumps(GOOD))
    out = tmp_path / "out"
    prepare(PrepareOptions(samples=good, out=out, val_fraction=0.3))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    bad = tmp_path / "bad.json"
    bad.write_text(samples if isinstance(samples, str) else json.dumps(samples))
    sim = None
    if similar is not None:
        sim = tmp_path / "sim.json"
        sim.write_text(json.dumps(similar))
    with pytest.raises(KareInputError) as ei:
        prepare(PrepareOptions(samples=bad, similar=sim, out=out, val_fraction=0.3))
    after = {p.name: p.read_bytes() for p in out.iterdir()}
    assert after == before, "a failed run changed the output directory"
    return str(ei.value)


def test_missing_field_is_named(tmp_path: Path) -> None:
    bad = GOOD + [{k: v for k, v in rec("p9", "v9").items() if k != "drugs"}]
    msg = run_bad(tmp_path, bad)
    assert "bad.json" in msg and "record #5 (patient_id='p9', visit_id='v9')" in msg \
        and "missing field(s) ['drugs']" in msg


@pytest.mark.parametrize("label", [2, -1, "1", None, True, 0.5])
def test_label_not_0_or_1(tmp_path: Path, label: Any) -> None:
    msg = run_bad(tmp_path, GOOD + [rec("p9", "v9", label=label)])
    assert "record #5 (patient_id='p9', visit_id='v9')" in msg and f"'label' = {label!r} is not 0 or 1" in msg


def test_ragged_visit_lists(tmp_path: Path) -> None:
    bad = GOOD + [rec("p9", "v9", n=3, procedures=[[], []])]
    msg = run_bad(tmp_path, bad)
    assert "record #5" in msg and "ragged visit lists {'conditions': 3, 'procedures': 2, 'drugs': 3}" in msg


def test_duplicate_ids(tmp_path: Path) -> None:
    msg = run_bad(tmp_path, GOOD + [rec("p2", "v3")])
    assert "record #5 (patient_id='p2', visit_id='v3')" in msg and "duplicate id" in msg and "record #2" in msg


def test_wrong_types_and_all_errors_listed(tmp_path: Path) -> None:
    bad = GOOD + [rec("p9", "v9", conditions="shock"), rec("p8", "v8", drugs=[["opioids", 3], ["x"]]), "not a record",
                  rec("", "v7")]
    msg = run_bad(tmp_path, bad)
    assert "4 invalid sample record(s)" in msg
    assert "record #5" in msg and "'conditions' = 'shock' must be a list of visits" in msg
    assert "record #6" in msg and "'drugs' visit 0" in msg
    assert "record #7: is str" in msg
    assert "record #8" in msg and "'patient_id' = '' must be a non-empty" in msg


def test_not_a_list_and_not_json(tmp_path: Path) -> None:
    assert "expected a JSON list" in run_bad(tmp_path, {"a": 1})
    assert "is not valid JSON" in run_bad(tmp_path, "[{")


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(KareInputError, match="samples file .*nope.json' does not exist"):
        load_samples(tmp_path / "nope.json")


def test_similar_file_problems(tmp_path: Path) -> None:
    ctx = "Patient ID: x_0\n\nVisit 0:\nConditions:\n1. shock"
    # No 'Label:' line.
    msg = run_bad(tmp_path, GOOD, {"p1_0": {"positive": [ctx], "negative": ["None"]}})
    assert "similar entry 'p1_0'" in msg and "positive[0] does not end with KARE's label line" in msg
    # 'positive' with the other label: wrong file for these samples.
    msg = run_bad(tmp_path, GOOD, {"p1_0": {"positive": [ctx + "\n\nLabel:\n1\n\n"], "negative": ["None"]}})
    assert "positive[0] has label 1 but the sample (patient_id='p1', visit_id='v1') has label 0" in msg
    # Keys that match no sample at all.
    msg = run_bad(tmp_path, GOOD, {"zz_0": ["None"]})
    assert "none of its 1 keys matches a sample id" in msg and "keys like 'zz_0'" in msg
    # Unknown role key.
    msg = run_bad(tmp_path, GOOD, {"p1_0": {"pos": []}})
    assert "unknown key(s) ['pos']" in msg


def test_similar_none_forms_and_label_split(tmp_path: Path) -> None:
    ctx = "Patient ID: x_0\n\nVisit 0:\nConditions:\n1. shock\n\nLabel:\n1\n\n"
    assert split_label(ctx) == ("Patient ID: x_0\n\nVisit 0:\nConditions:\n1. shock", 1)
    assert split_label("no label here") is None
    p = tmp_path / "sim.json"
    p.write_text(json.dumps({"a_0": ["None"], "b_0": {"positive": ["None"], "negative": [ctx]}, "c_0": "None"}))
    sim = load_similar(p)
    assert sim["a_0"].positive == () and sim["a_0"].negative == () and sim["c_0"].positive == ()
    assert sim["b_0"].positive == () and sim["b_0"].negative[0].label == 1


def test_sample_ids_count_visits_per_patient_in_file_order() -> None:
    s = parse_samples(GOOD, "mem")
    assert [x.sample_id for x in s] == ["p1_0", "p1_1", "p2_0", "p3_0", "p4_0"]
    assert [x.index for x in s] == [0, 1, 2, 3, 4]
