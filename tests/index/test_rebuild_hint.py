"""The `--rebuild` command a stale-index message prints rebuilds exactly that index when pasted (issue 14: for a
local model folder it dropped the corpus folder, --pooling, --index-type and the other encoder flags)."""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from medret.api import clear_cache
from medret.cli import main


def index_manifests(corpus: Path) -> dict[str, dict]:
    root = corpus / "medret" / "index"
    return {p.name: json.loads((p / "manifest.json").read_text()) for p in sorted(root.iterdir())
            if (p / "manifest.json").is_file()}


def hinted_rebuild(err: str) -> list[str]:
    [command] = [c for c in re.findall(r"`([^`]*)`", err) if "--rebuild" in c]
    words = shlex.split(command)
    assert words[:3] == ["medret", "index", "build"], command
    return words[1:]


@pytest.mark.parametrize("flags,index_type", [
    (["--pooling", "mean", "--query-prefix", "query: ", "--doc-prefix", "passage: ", "--normalize",
      "--max-length", "64", "--doc-format", "concat"], "hnsw"),
    (["--like", "e5", "--query-max-length", "32"], "IVF2,Flat"),
])
def test_the_rebuild_command_of_a_stale_index_rebuilds_it_exactly(tmp_path, toy_corpus, make_tiny_bert, capsys,
                                                                   flags, index_type):
    model = make_tiny_bert(tmp_path / "my models" / "encoder", seed=3)  # a space in the path: quoted in the hint
    common = ["--corpus", str(toy_corpus), "--retriever", str(model), "--device", "cpu",
              "--models-dir", str(tmp_path / "models"), *flags]
    assert main(["index", "build", *common, "--index-type", index_type]) == 0
    [(name, built)] = index_manifests(toy_corpus).items()
    assert built["index_type"] == index_type
    capsys.readouterr()

    make_tiny_bert(model, seed=4)  # the model changed in place: the index is stale
    clear_cache()
    assert main(["search", *common, "sepsis mortality"]) == 1
    err = capsys.readouterr().err
    assert "model changed" in err and "--rebuild" in err, err
    argv = hinted_rebuild(err)

    assert main(argv) == 0, capsys.readouterr().err  # the pasted command
    capsys.readouterr()
    clear_cache()
    [(again, rebuilt)] = index_manifests(toy_corpus).items()
    assert again == name  # the same index, rebuilt in place ...
    assert rebuilt["index_type"] == index_type and rebuilt["spec"] == built["spec"]  # ... with the same recipe
    assert rebuilt["encoder"]["doc_model"]["fingerprint"] != built["encoder"]["doc_model"]["fingerprint"]
    assert main(["search", *common, "sepsis mortality"]) == 0  # the stale error is gone
    assert "medret: error" not in capsys.readouterr().err
