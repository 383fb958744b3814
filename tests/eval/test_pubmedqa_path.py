"""`--pubmedqa PATH` takes what a user has: PubMedQA's ori_pqal.json, the folder that holds it, or a clone of its
repository; anything else is one clear error naming the path and where to get the file. And `make test` lists the
tests skipped for want of data (issue 24 item 6). A small file in ori_pqal.json's layout stands in for the data."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from medret import cli
from medret.errors import CorpusError
from medret.eval import pubmedqa

ROOT = Path(__file__).resolve().parents[2]
ITEMS = {
    "101": {"QUESTION": "Does sepsis raise mortality in elderly ICU patients?",
            "CONTEXTS": ["Sepsis in elderly ICU patients carries a high mortality.", "Vasopressors were used."],
            "LABELS": ["BACKGROUND", "METHODS"], "final_decision": "yes"},
    "202": {"QUESTION": "Is atrial fibrillation a stroke risk factor?",
            "CONTEXTS": ["Atrial fibrillation raises stroke risk.", "Anticoagulation lowers it."],
            "LABELS": ["RESULTS", "CONCLUSIONS"], "final_decision": "yes"},
    "303": {"QUESTION": "Does insulin treat diabetic ketoacidosis?",
            "CONTEXTS": ["Diabetic ketoacidosis is treated with insulin, fluids and potassium."],
            "LABELS": ["BACKGROUND"], "final_decision": "yes"},
}


def write_pqal(path: Path, data=ITEMS) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def eval_json(capsys, tmp_path, arg: str) -> dict:
    out = tmp_path / f"res-{len(list(tmp_path.glob('res-*')))}.json"
    assert cli.main(["eval", "--pubmedqa", arg, "--k", "1,2", "--work-dir", str(tmp_path / "work"),
                     "--json", str(out)]) == 0
    capsys.readouterr()
    return json.loads(out.read_text())


def test_the_file_its_folder_and_a_clone_of_the_repository_give_the_same_result(tmp_path, capsys):
    file = write_pqal(tmp_path / "dl" / "ori_pqal.json")
    clone = tmp_path / "pubmedqa"
    write_pqal(clone / "data" / "ori_pqal.json")
    results = [eval_json(capsys, tmp_path, str(p)) for p in (file, file.parent, clone)]
    metrics = [{k: v for k, v in r["rows"][0].items() if k.startswith(("Recall", "Hit", "retriever"))} for r in results]
    # by hand: each question's top hit is its first snippet (shared words); the second snippets of 101 and 202 share
    # no word with their question: Recall@1 = Recall@2 = (1/2 + 1/2 + 1/1) / 3, Hit@1 = 1
    assert metrics[0] == {"retriever": "BM25", "Recall@1": pytest.approx(2 / 3), "Recall@2": pytest.approx(2 / 3),
                          "Hit@1": 1.0, "Hit@2": 1.0}
    assert metrics[0] == metrics[1] == metrics[2]
    assert pubmedqa.locate(clone) == clone / "data" / "ori_pqal.json"


@pytest.mark.parametrize("case", ["missing", "empty folder", "not json", "a list", "wrong entries"])
def test_anything_else_is_one_clear_error(case, tmp_path, capsys):
    if case == "missing":
        arg = tmp_path / "nowhere" / "ori_pqal.json"
    elif case == "empty folder":
        arg = tmp_path / "empty"
        arg.mkdir()
    elif case == "not json":
        arg = tmp_path / "ori_pqal.json"
        arg.write_text("<html>404</html>")
    elif case == "a list":
        arg = write_pqal(tmp_path / "ori_pqal.json", [1, 2])
    else:
        arg = write_pqal(tmp_path / "ori_pqal.json", {"1": {"question": "lower case keys", "contexts": []}})
    work = tmp_path / "work"
    rc = cli.main(["eval", "--pubmedqa", str(arg), "--work-dir", str(work)])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("medret: error: --pubmedqa") and err.count("\n") == 1, err
    assert str(arg) in err and "https://github.com/pubmedqa/pubmedqa" in err
    assert not work.exists()  # nothing written
    with pytest.raises(CorpusError):
        pubmedqa.load(arg)


def test_the_docs_say_where_to_get_it_and_their_command_is_valid():
    text = (ROOT / "docs" / "performance.md").read_text()
    assert "shared/datasets" not in text  # a folder only beside the project's own checkout
    assert "https://github.com/pubmedqa/pubmedqa" in text and "medret eval --pubmedqa ori_pqal.json" in text


SKIPPING = '''
import pytest

def test_runs():
    pass

@pytest.fixture
def corpus():
    pytest.skip("data: corpus X not found; set X=PATH")

def test_a(corpus):
    pass

def test_b(corpus):
    pass

def test_c():
    pytest.importorskip("no_such_module_medret")
'''


def test_the_run_summary_lists_what_skipped_tests_lacked(tmp_path):
    (tmp_path / "test_s.py").write_text(SKIPPING)
    # the project's tests/conftest.py, loaded by its path (a site-packages `tests` package may shadow the name)
    ours = str(ROOT / "tests" / "conftest.py")
    (tmp_path / "conftest.py").write_text(
        "import importlib.util\n"
        f"spec = importlib.util.spec_from_file_location('medret_tests_conftest', {ours!r})\n"
        "mod = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(mod)\n"
        "pytest_terminal_summary = mod.pytest_terminal_summary\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path),
                        str(tmp_path)], capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert "1 passed, 3 skipped" in r.stdout, r.stdout + r.stderr
    section = r.stdout[r.stdout.index("skipped, by what they need"):]
    lines = [ln.strip() for ln in section.splitlines()[1:5]]
    assert lines[0] == "2 tests: data: corpus X not found; set X=PATH"
    assert lines[1] == "test_s.py (2)"
    assert lines[2].startswith("1 test: could not import 'no_such_module_medret'")
    assert lines[3] == "test_s.py (1)"
