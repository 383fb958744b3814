"""`medret kare synth`: KARE-format synthetic data with a learnable signal; the CLI end to end."""
from __future__ import annotations

import json
import random
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medret.cli import main
from medret.errors import ConfigError
from medret.recipes.kare.records import load_samples, load_similar
from medret.recipes.kare.synth import (
    CONDITIONS,
    DRUGS,
    PROCEDURES,
    RISK_CONDITIONS,
    RISK_DRUGS,
    RISK_PROCEDURES,
    synth,
    synth_samples,
)

RISK = {n for n, _, _ in RISK_CONDITIONS + RISK_PROCEDURES + RISK_DRUGS}


def test_cli_synth_then_prepare(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    syn = tmp_path / "syn"
    assert main(["kare", "synth", "--n", "500", "--positive-rate", "0.05", "--seed", "0", "--out", str(syn)]) == 0
    assert "wrote 500 samples (25 label-1)" in capsys.readouterr().out
    out = tmp_path / "data"
    rc = main([
        "kare", "prepare", "--samples", str(syn / "samples.json"), "--similar", str(syn / "similar.json"),
        "--mode", "probability", "--balance", "20:20", "--seed", "0", "--out", str(out), "--max-prompt-tokens", "3000",
    ])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "read 500 samples" in printed and "kept 40 (20 label-1, 20 label-0)" in printed \
        and "token counts: estimate" in printed
    df = pd.read_parquet(out / "train.parquet")
    assert len(df) == 40 and set(df["data_source"]) == {"kare_mortality_prob"}
    assert (out / "val.parquet").exists() and (out / "prepare_summary.json").exists()
    # A bad request: exit code 1, message on stderr, nothing new written.
    rc = main(["kare", "prepare", "--samples", str(syn / "samples.json"), "--balance", "x", "--out",
               str(tmp_path / "o2")])
    assert rc == 1 and "balance='x' is invalid" in capsys.readouterr().err
    assert not (tmp_path / "o2").exists()


def test_synthetic_samples_are_valid_kare_records(tmp_path: Path) -> None:
    s = synth(tmp_path, n=500, positive_rate=0.05, seed=0)
    samples = load_samples(tmp_path / "samples.json")  # validates every record
    assert len(samples) == 500 and sum(x.label for x in samples) == 25 == s["label_1"]
    vocab_c, vocab_p, vocab_d = set(CONDITIONS) | RISK, set(PROCEDURES) | RISK, set(DRUGS) | RISK
    by_patient: dict[str, list] = {}
    for x in samples:
        by_patient.setdefault(x.patient_id, []).append(x)
        for field, vocab in (("conditions", vocab_c), ("procedures", vocab_p), ("drugs", vocab_d)):
            for visit in getattr(x, field):
                assert all(item in vocab and item == item.lower() for item in visit)
    for xs in by_patient.values():
        # PyHealth layout: sample k holds visits 0..k; a death can only be the patient's last sample.
        assert [x.n_visits for x in xs] == list(range(1, len(xs) + 1))
        assert all(x.label == 0 for x in xs[:-1])
        for a, b in zip(xs, xs[1:]):
            assert b.conditions[: a.n_visits] == a.conditions


def test_similar_file_follows_kare(tmp_path: Path) -> None:
    s = synth(tmp_path, n=400, positive_rate=0.2, seed=1, one_neighbour_rate=0.1, none_rate=0.05)
    raw = json.loads((tmp_path / "similar.json").read_text())
    samples = {x.sample_id: x for x in load_samples(tmp_path / "samples.json")}
    assert set(raw) == set(samples)
    assert s["one_neighbour_entries"] > 10 and s["none_entries"] > 5
    assert sum(v == ["None"] for v in raw.values()) == s["none_entries"]
    for key, entry in raw.items():
        if entry == ["None"]:
            continue
        for role in ("positive", "negative"):
            for ctx in entry[role]:
                if ctx == "None":
                    continue
                m = re.search(r"\n\nLabel:\n([01])\n\n$", ctx)
                assert m, ctx[-30:]
                want = samples[key].label if role == "positive" else 1 - samples[key].label
                assert int(m.group(1)) == want
                neighbour = re.match(r"Patient ID: (\S+)_\d+\n", ctx)
                assert neighbour and neighbour.group(1) != samples[key].patient_id
    load_similar(tmp_path / "similar.json")  # parses


def test_same_seed_same_files(tmp_path: Path) -> None:
    synth(tmp_path / "a", n=200, positive_rate=0.1, seed=4)
    synth(tmp_path / "b", n=200, positive_rate=0.1, seed=4)
    synth(tmp_path / "c", n=200, positive_rate=0.1, seed=5)
    for name in ("samples.json", "similar.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (tmp_path / "a" / "samples.json").read_bytes() != (tmp_path / "c" / "samples.json").read_bytes()


def test_planted_signal_is_learnable() -> None:
    """'Any risk item in the last visit' predicts death on held-out data far better than chance."""
    recs = synth_samples(1000, positive_rate=0.5, seed=11)
    y = np.array([r["label"] for r in recs])
    risky = np.array([
        any(item in RISK for field in ("conditions", "procedures", "drugs") for item in r[field][-1]) for r in recs
    ])
    idx = list(range(len(recs)))
    random.Random(0).shuffle(idx)
    test = np.array(idx[700:])
    pred = risky[test].astype(int)
    yt = y[test]
    tpr = float(np.mean(pred[yt == 1] == 1))
    tnr = float(np.mean(pred[yt == 0] == 0))
    assert (tpr + tnr) / 2 > 0.75, (tpr, tnr)


@pytest.mark.parametrize("n, rate", [(0, 0.1), (10, 1.5), (10, -0.1)])
def test_bad_synth_arguments(tmp_path: Path, n: int, rate: float) -> None:
    with pytest.raises(ConfigError):
        synth(tmp_path, n=n, positive_rate=rate)


@pytest.mark.parametrize("rate", [0.0, 1.0])
def test_extreme_rates(rate: float) -> None:
    recs = synth_samples(50, positive_rate=rate, seed=0)
    assert len(recs) == 50 and sum(r["label"] for r in recs) == round(50 * rate)


def test_cli_prepare_without_flags_takes_prepare_options_defaults(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """`kare prepare` hands PrepareOptions what was given and nothing else (issue 22 item 2): with no optional flag
    the files are those of the Python API's PrepareOptions defaults, byte for byte."""
    from medret.recipes.kare.prepare import PrepareOptions, prepare

    synth(tmp_path / "syn", n=200, positive_rate=0.1, seed=3)
    samples = tmp_path / "syn" / "samples.json"
    assert main(["kare", "prepare", "--samples", str(samples), "--out", str(tmp_path / "cli"), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    api = prepare(PrepareOptions(samples=samples, out=tmp_path / "api"))
    assert printed["mode"] == api["mode"] == "binary"
    for name in ("train.parquet", "val.parquet"):
        assert (tmp_path / "cli" / name).read_bytes() == (tmp_path / "api" / name).read_bytes()
