"""`medret kare prepare`: parquet round trip in Search-R1's schema, split by patient, seeded balance,
prompt layout and truncation, token counts."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from medret.errors import ConfigError
from medret.recipes.kare.prepare import PrepareOptions, parse_balance, prepare
from medret.recipes.kare.prompts import PROMPT_END, build_prompt, instructions
from medret.recipes.kare.records import KareInputError, load_samples
from medret.recipes.kare.rewards import compute_score
from medret.recipes.kare.synth import synth


@pytest.fixture(scope="module")
def syn(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("kare-syn")
    synth(d, n=600, positive_rate=0.1, seed=3)
    return d


def records(syn: Path) -> list[dict[str, Any]]:
    return json.loads((syn / "samples.json").read_text())


def opts(syn: Path, out: Path, **kw: Any) -> PrepareOptions:
    base: dict[str, Any] = dict(samples=syn / "samples.json", similar=syn / "similar.json", out=out, mode="binary",
                                seed=0)
    base.update(kw)
    return PrepareOptions(**base)


def test_parquet_has_search_r1_columns_and_types(syn: Path, tmp_path: Path) -> None:
    prepare(opts(syn, tmp_path / "o", balance=(30, 60)))
    for split in ("train", "val"):
        schema = pq.read_schema(tmp_path / "o" / f"{split}.parquet")
        assert schema.names == ["data_source", "prompt", "ability", "reward_model", "extra_info"]
        assert schema.field("data_source").type == pa.string()
        assert schema.field("ability").type == pa.string()
        prompt_t = schema.field("prompt").type
        assert pa.types.is_list(prompt_t)
        assert {f.name: f.type for f in prompt_t.value_type} == {"role": pa.string(), "content": pa.string()}
        rm = schema.field("reward_model").type
        assert rm.field("style").type == pa.string()
        assert rm.field("ground_truth").type.field("target").type == pa.list_(pa.string())
        ei = schema.field("extra_info").type
        assert {"split", "index", "patient_id", "visit_id"} <= {f.name for f in ei}
        assert ei.field("index").type == pa.int64()

    df = pd.read_parquet(tmp_path / "o" / "train.parquet")
    src = records(syn)
    assert set(df["data_source"]) == {"kare_mortality_binary"}
    for _, row in df.iterrows():
        # How Search-R1's RLHFDataset and reward manager read a row.
        chat = row["prompt"].tolist()
        assert len(chat) == 1 and chat[0]["role"] == "user"
        assert chat[0]["content"].startswith(instructions("binary"))
        assert chat[0]["content"].rstrip().endswith(PROMPT_END)
        assert row["reward_model"]["style"] == "rule"
        target = list(row["reward_model"]["ground_truth"]["target"])
        info = row["extra_info"]
        assert info["split"] == "train"
        rec = src[info["index"]]  # the original record
        assert (rec["patient_id"], rec["visit_id"]) == (info["patient_id"], info["visit_id"])
        assert target == [str(rec["label"])]
        assert f"Patient ID: {info['sample_id']}" in chat[0]["content"]


def test_modes_have_distinct_sources_and_rewards_read_the_rows(syn: Path, tmp_path: Path) -> None:
    prepare(opts(syn, tmp_path / "b", balance=(10, 10)))
    prepare(opts(syn, tmp_path / "p", balance=(10, 10), mode="probability"))
    b = pd.read_parquet(tmp_path / "b" / "train.parquet")
    p = pd.read_parquet(tmp_path / "p" / "train.parquet")
    assert set(b["data_source"]) == {"kare_mortality_binary"} and set(p["data_source"]) == {"kare_mortality_prob"}
    assert "mortality: 0.15, survival: 0.85" in p.iloc[0]["prompt"][0]["content"]
    for df, right, wrong in ((b, "<answer> {y} </answer>", "<answer> {n} </answer>"),
                             (p, "<answer>mortality: {y}, survival: {n}</answer>",
                              "<answer>mortality: {n}, survival: {y}</answer>")):
        for _, row in df.iterrows():
            y = int(row["reward_model"]["ground_truth"]["target"][0])
            text = f"<|im_start|>user\n{row['prompt'][0]['content']}<|im_end|>\n<|im_start|>assistant\n"
            gt, src = row["reward_model"]["ground_truth"], row["data_source"]
            assert compute_score(src, text + "<think>no idea</think>", gt) == 0.0  # prompt's example not read
            assert compute_score(src, text + right.format(y=y, n=1 - y), gt) == 1.0
            assert compute_score(src, text + wrong.format(y=y, n=1 - y), gt) == 0.0


def test_splits_are_disjoint_by_patient_and_balance_is_exact(syn: Path, tmp_path: Path) -> None:
    summary = prepare(opts(syn, tmp_path / "o", balance=(25, 40), val_fraction=0.2))
    tr = pd.read_parquet(tmp_path / "o" / "train.parquet")
    va = pd.read_parquet(tmp_path / "o" / "val.parquet")
    tr_p = {e["patient_id"] for e in tr["extra_info"]}
    va_p = {e["patient_id"] for e in va["extra_info"]}
    assert tr_p and va_p and not (tr_p & va_p)
    labels = Counter(r["ground_truth"]["target"][0] for r in tr["reward_model"])
    assert labels == Counter({"1": 25, "0": 40})
    # val is not balanced: every sample of the held-out patients is there, in input order.
    src = records(syn)
    expected_val = [i for i, r in enumerate(src) if r["patient_id"] in va_p]
    assert [e["index"] for e in va["extra_info"]] == expected_val
    # Summary accounts for everything read.
    sp = summary["splits"]
    assert sp["train"]["available"] + sp["val"]["available"] == len(src)
    assert sp["train"]["kept"] + sp["train"]["skipped"]["not_sampled_by_balance"] == sp["train"]["available"]
    assert sp["train"]["kept_by_label"] == {"1": 25, "0": 40}
    assert json.loads((tmp_path / "o" / "prepare_summary.json").read_text())["splits"] == json.loads(json.dumps(sp))


def test_same_seed_same_data_other_seed_other_data(syn: Path, tmp_path: Path) -> None:
    prepare(opts(syn, tmp_path / "a", balance=(20, 20), seed=5))
    prepare(opts(syn, tmp_path / "b", balance=(20, 20), seed=5))
    prepare(opts(syn, tmp_path / "c", balance=(20, 20), seed=6))
    for split in ("train", "val"):
        assert pq.read_table(tmp_path / "a" / f"{split}.parquet").equals(
            pq.read_table(tmp_path / "b" / f"{split}.parquet"))
    ids = lambda d: [e["sample_id"] for e in pd.read_parquet(d / "train.parquet")["extra_info"]]  # noqa: E731
    assert ids(tmp_path / "a") != ids(tmp_path / "c")


def test_explicit_val_and_test_files(syn: Path, tmp_path: Path) -> None:
    src = records(syn)
    pids = sorted({r["patient_id"] for r in src})
    val_p, test_p = set(pids[:20]), set(pids[20:40])
    parts = {
        "train": [r for r in src if r["patient_id"] not in val_p | test_p],
        "val": [r for r in src if r["patient_id"] in val_p],
        "test": [r for r in src if r["patient_id"] in test_p],
    }
    for name, recs in parts.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(recs))
    summary = prepare(
        opts(syn, tmp_path / "o", samples=tmp_path / "train.json", val=tmp_path / "val.json",
             test=tmp_path / "test.json", balance=(10, 10))
    )
    assert set(summary["splits"]) == {"train", "val", "test"}
    te = pd.read_parquet(tmp_path / "o" / "test.parquet")
    assert len(te) == len(parts["test"]) and {e["split"] for e in te["extra_info"]} == {"test"}
    assert {e["patient_id"] for e in te["extra_info"]} == test_p

    # A patient in two files is refused and named; nothing is written.
    (tmp_path / "val_bad.json").write_text(json.dumps(parts["val"] + parts["train"][:1]))
    bad_pid = parts["train"][0]["patient_id"]
    with pytest.raises(KareInputError, match=f"patient_id='{bad_pid}' is in both the train and the val file"):
        prepare(opts(syn, tmp_path / "o2", samples=tmp_path / "train.json", val=tmp_path / "val_bad.json"))
    assert not (tmp_path / "o2").exists() or not any((tmp_path / "o2").iterdir())


def test_balance_larger_than_available(syn: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="only .* are available.*--allow-fewer"):
        prepare(opts(syn, tmp_path / "o", balance=(10_000, 10)))
    assert not (tmp_path / "o" / "train.parquet").exists()
    s = prepare(opts(syn, tmp_path / "o", balance=(10_000, 10), allow_fewer=True))
    n1 = s["splits"]["train"]["available_by_label"]["1"]
    assert s["splits"]["train"]["kept_by_label"] == {"1": n1, "0": 10}
    assert s["splits"]["train"]["balance_shortfall"]["1"] == {"requested": 10_000, "available": n1}


@pytest.mark.parametrize("text, expected", [("100:100", (100, 100)), ("5:0", (5, 0))])
def test_parse_balance(text: str, expected: tuple[int, int]) -> None:
    assert parse_balance(text) == expected


@pytest.mark.parametrize("text", ["100", "a:b", "-1:5", "0:0", "1:2:3"])
def test_parse_balance_rejects(text: str) -> None:
    with pytest.raises(ConfigError, match="balance="):
        parse_balance(text)


# ---------------------------------------------------------------- prompt rendering and length


def long_patient(n_visits: int = 8) -> list[dict[str, Any]]:
    conds = [[f"condition {v} alpha", "essential hypertension"] for v in range(n_visits)]
    procs = [[] if v % 2 else [f"procedure {v}"] for v in range(n_visits)]
    drugs = [[f"drug {v} beta", "antithrombotic agents"] for v in range(n_visits)]
    recs = [{"visit_id": "v-long", "patient_id": "P1", "conditions": conds, "procedures": procs, "drugs": drugs,
             "label": 1}]
    recs += [{"visit_id": f"v{i}", "patient_id": f"Q{i}", "conditions": [["shock"]], "procedures": [[]],
              "drugs": [["opioids"]], "label": i % 2} for i in range(6)]
    return recs


def test_patient_context_layout(tmp_path: Path) -> None:
    (tmp_path / "s.json").write_text(json.dumps(long_patient(3)))
    prepare(PrepareOptions(samples=tmp_path / "s.json", out=tmp_path / "o", val_fraction=0.4, seed=1))
    both = pd.concat([pd.read_parquet(tmp_path / "o" / f"{s}.parquet") for s in ("train", "val")])
    row = next(r for _, r in both.iterrows() if r["extra_info"]["patient_id"] == "P1")
    text = row["prompt"][0]["content"]
    expected = (
        "Patient ID: P1_0\n\n"
        "Visit 0:\nConditions:\n1. condition 0 alpha\n2. essential hypertension\n\n"
        "Procedures:\n1. procedure 0\n\nMedications:\n1. drug 0 beta\n2. antithrombotic agents\n\n"
        "Visit 1:\nConditions:\n1. condition 1 alpha (new)\n"
        "2. essential hypertension (continued from previous visit)\n\n"
        "Procedures:\nNo documented procedures.\n\n"
        "Medications:\n1. drug 1 beta (new)\n2. antithrombotic agents (continued from previous visit)\n\n"
        "Visit 2:\nConditions:\n1. condition 2 alpha (new)\n"
        "2. essential hypertension (continued from previous visit)\n\n"
        "Procedures:\n1. procedure 2 (new)\n\n"
        "Medications:\n1. drug 2 beta (new)\n2. antithrombotic agents (continued from previous visit)\n"
    )
    assert expected in text
    assert text.startswith(instructions("binary", with_similar=False))
    assert "Similar cases" not in text and "similar case" not in text  # no --similar: no section, no mention


def test_over_long_prompt_drops_oldest_visits_never_instructions(tmp_path: Path) -> None:
    (tmp_path / "s.json").write_text(json.dumps(long_patient(8)))
    full = prepare(PrepareOptions(samples=tmp_path / "s.json", out=tmp_path / "full", val_fraction=0.4, seed=1))
    both = lambda d: pd.concat([pd.read_parquet(d / f"{s}.parquet") for s in ("train", "val")])  # noqa: E731
    row = next(r for _, r in both(tmp_path / "full").iterrows() if r["extra_info"]["patient_id"] == "P1")
    full_text = row["prompt"][0]["content"]
    assert full["token_count_method"].startswith("estimate")
    budget = -(-len(full_text) // 4) - 60  # estimate is ceil(chars / 4); make it too long by ~240 chars
    prepare(PrepareOptions(samples=tmp_path / "s.json", out=tmp_path / "cut", val_fraction=0.4, seed=1,
                           max_prompt_tokens=budget))
    row = next(r for _, r in both(tmp_path / "cut").iterrows() if r["extra_info"]["patient_id"] == "P1")
    text = row["prompt"][0]["content"]
    info = row["extra_info"]
    assert text.startswith(instructions("binary", with_similar=False))
    assert -(-len(text) // 4) == info["prompt_tokens"] <= budget
    dropped = info["dropped_visits"]
    assert dropped >= 1
    assert "Visit 7:" in text and f"Visit {dropped}:" in text and f"Visit {dropped - 1}:" not in text
    assert f"omitted for length; {8 - dropped} most recent of 8 visits shown" in text
    assert text.rstrip().endswith(PROMPT_END)
    # Dropping is minimal: keeping one more visit would not have fitted.
    p1 = next(s for s in load_samples(tmp_path / "s.json") if s.patient_id == "P1")
    assert build_prompt(p1, None, "binary", drop_oldest=dropped) == text
    assert -(-len(build_prompt(p1, None, "binary", drop_oldest=dropped - 1)) // 4) > budget


def test_prompt_that_cannot_fit_is_skipped_and_counted(tmp_path: Path) -> None:
    (tmp_path / "s.json").write_text(json.dumps(long_patient(8)))
    inst = -(-len(instructions("binary", with_similar=False)) // 4)
    with pytest.raises(KareInputError, match="would be empty.*prompt_too_long"):
        prepare(PrepareOptions(samples=tmp_path / "s.json", out=tmp_path / "o", val_fraction=0.4, seed=1,
                               max_prompt_tokens=inst))
    assert not (tmp_path / "o" / "train.parquet").exists()


def _tiny_tokenizer(path: Path, chat: bool) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "[PAD]": 1}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]")
    if chat:
        fast.chat_template = (
            "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
        )
    fast.save_pretrained(path)


@pytest.mark.parametrize("chat", [False, True])
def test_token_counts_with_a_tokenizer(syn: Path, tmp_path: Path, chat: bool) -> None:
    _tiny_tokenizer(tmp_path / "tok", chat)
    s = prepare(opts(syn, tmp_path / "o", balance=(5, 5), tokenizer=tmp_path / "tok"))
    assert s["token_count_method"].startswith(f"tokenizer {tmp_path / 'tok'}")
    for _, row in pd.read_parquet(tmp_path / "o" / "train.parquet").iterrows():
        content = row["prompt"][0]["content"]
        # WhitespaceSplit word-level tokenizer: one token per whitespace-separated piece.
        templated = f"<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n" if chat else content
        assert row["extra_info"]["prompt_tokens"] == len(templated.split())


def test_bad_tokenizer_path(syn: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="tokenizer="):
        prepare(opts(syn, tmp_path / "o", tokenizer=tmp_path / "nope"))
