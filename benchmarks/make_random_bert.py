"""Write a random-weight BERT (base by default: the size of MedCPT) with a WordPiece vocabulary trained on a corpus.

No model hub is needed: the tokenizer is trained here with `tokenizers`, the weights are random (seeded). Used by
the CPU benchmarks, where only the encoder's cost matters, not its quality.

    python benchmarks/make_random_bert.py OUT_DIR --corpus-file CHUNK.jsonl [--size base|tiny] [--vocab 30522]
        [--cross-encoder]   # a BertForSequenceClassification with one label (MedCPT-Cross-Encoder's shape)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import orjson


def texts(path: Path):
    with open(path, "rb") as f:
        for raw in f:
            if raw.strip():
                d = orjson.loads(raw)
                yield (d.get("title") or "") + " " + (d.get("content") or d.get("contents") or "")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--corpus-file", required=True, help="a jsonl chunk file to train the WordPiece vocabulary on")
    ap.add_argument("--size", choices=["base", "tiny"], default="base")
    ap.add_argument("--vocab", type=int, default=30522)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cross-encoder", action="store_true",
                    help="save a cross-encoder (BertForSequenceClassification, num_labels=1) instead of an encoder")
    a = ap.parse_args(argv)

    import torch
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertConfig, BertForSequenceClassification, BertModel, BertTokenizerFast

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    wp = BertWordPieceTokenizer(lowercase=True)
    wp.train_from_iterator(list(texts(Path(a.corpus_file))), vocab_size=a.vocab, min_frequency=1)
    wp.save_model(str(out))
    # tokenizer_object: transformers 5 ignores vocab_file= here and would map every word to [UNK]
    tok = BertTokenizerFast(tokenizer_object=wp._tokenizer, do_lower_case=True, unk_token="[UNK]", sep_token="[SEP]",
                            pad_token="[PAD]", cls_token="[CLS]", mask_token="[MASK]")
    tok.save_pretrained(out)
    torch.manual_seed(a.seed)
    if a.size == "base":
        cfg = BertConfig(vocab_size=max(a.vocab, tok.vocab_size))  # 12 layers, 768 hidden: BERT-base / MedCPT
    else:
        cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64)
    if a.cross_encoder:
        cfg.num_labels = 1
        BertForSequenceClassification(cfg).eval().save_pretrained(out)
    else:
        BertModel(cfg).eval().save_pretrained(out)
    check = BertTokenizerFast.from_pretrained(out)
    probe = check.tokenize("patients with sepsis")
    if len(check) < 100 or "[UNK]" in probe:
        raise SystemExit(f"the saved tokenizer is broken ({len(check)} entries, {probe}); check transformers' version")
    kind = "cross-encoder" if a.cross_encoder else "BERT"
    print(f"wrote random-weight {kind}-{a.size} ({len(check)} wordpieces) to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
