"""nprobe / ef_search / refine_factor: validated in RetrieverConfig, carried by the CLI flags to the loaded faiss
index."""
import json

import numpy as np
import pytest

from medret import get_retriever
from medret.cli import main
from medret.config import RetrieverConfig
from medret.errors import ConfigError
from tests.conftest import write_chunks


@pytest.mark.parametrize("field,value", [("nprobe", 0), ("ef_search", -3), ("refine_factor", -1), ("nprobe", True),
                                         ("refine_factor", 1.5), ("ef_search", "64")])
def test_bad_ann_settings_name_the_field(field, value):
    with pytest.raises(ConfigError, match=f"{field}={value!r} is invalid"):
        RetrieverConfig(**{field: value})


def test_ann_settings_reach_the_faiss_index(tmp_path, tiny_bert_dir, capsys):
    import faiss

    rng = np.random.default_rng(0)
    words = ["sepsis", "shock", "kidney", "insulin", "stroke", "fever", "anemia", "heparin", "lactate", "cough"]
    docs = [(f"Doc {i}", " ".join(rng.choice(words, size=8))) for i in range(400)]
    folder = write_chunks(tmp_path / "c", {"a": docs[:200], "b": docs[200:]})
    args = ["--corpus", str(folder), "--retriever", str(tiny_bert_dir), "--pooling", "cls"]
    assert main(["index", "build", *args, "--index-type", "ivfpq"]) == 0
    capsys.readouterr()

    def index_of(**options):
        engine = get_retriever(str(folder), str(tiny_bert_dir), pooling="cls", **options).transport.engine
        return engine, engine.searchers[0].indexes[0][1]

    _, default = index_of()
    assert default.backend == "faiss" and default.lossy and default.rerank == 10
    engine, tuned = index_of(nprobe=2, refine_factor=0)
    assert tuned.rerank == 0 and faiss.extract_index_ivf(tuned.faiss_index).nprobe == 2
    # without the re-rank the answer is faiss's own
    q = engine.searchers[0].encoder.encode_queries(["sepsis shock"])
    _, faiss_rows = tuned.faiss_index.search(q, 5)
    assert engine.search_rows(["sepsis shock"], 5)[1].tolist() == faiss_rows.tolist()
    # the CLI flags build the same configuration
    assert main(["search", "sepsis shock", *args, "--nprobe", "2", "--refine-factor", "0", "--topk", "5",
                 "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["result"][0]
    assert [d["document"]["id"] for d in rows] == [d["id"] for d in engine.documents(faiss_rows)]
