"""The build command `medret doctor` prints as the fix for a missing index is pasteable: it keeps the corpus
folder, the local model folder and every encoder flag, so running it builds the very index the configuration
searches (it once printed the corpus's display name and dropped --models-dir, the device and the index options)."""
from __future__ import annotations

import json
import shlex

from medret.api import clear_cache
from medret.cli import main


def test_doctor_fix_for_a_missing_dense_index_builds_that_index(tmp_path, toy_corpus, make_tiny_bert, capsys):
    model = make_tiny_bert(tmp_path / "my models" / "enc", seed=5)  # a space: the fix must quote it
    common = ["--corpus", str(toy_corpus), "--retriever", str(model), "--device", "cpu", "--models-dir",
              str(tmp_path / "models"), "--pooling", "mean", "--query-prefix", "q: ", "--normalize"]
    main(["doctor", *common, "--no-search", "--json"])  # nothing built yet: warnings (built on first use)
    checks = json.loads(capsys.readouterr().out)["checks"]
    fixes = {c["fix"] for c in checks if c["status"] != "ok" and "medret index build" in (c.get("fix") or "")}
    assert fixes, checks
    [fix] = fixes
    command = fix[fix.index("medret index build"):].split("`")[0].strip()
    words = shlex.split(command)
    assert str(toy_corpus) in words and str(model) in words and "--query-prefix=q: " in words, command

    assert main(words[1:]) == 0, capsys.readouterr().err  # the pasted fix
    capsys.readouterr()
    clear_cache()
    assert main(["doctor", *common, "--no-search", "--json"]) == 0
    after = json.loads(capsys.readouterr().out)["checks"]
    assert not [c for c in after if c["status"] != "ok" and "medret index build" in (c.get("fix") or "")], after
