"""Settings files are read one safe way (medret.config_file), by every YAML entry point (issue 24 item 13).

Each example of the issue: YAML 1.1's sexagesimal / octal / yes-no scalars kept as written, `[true]` for GPU indices
refused by kind, `.inf` and a list for a mapping refused with a clear message, an alias bomb refused at once. Every
error names the file, the key and the fix.
"""
from __future__ import annotations

import ast
import time
from pathlib import Path

import pytest

import medret
from medret import config_file
from medret.cli import main
from medret.errors import ConfigError

BOMB = "\n".join(
    [f'a: &a [{",".join(["lol"] * 9)}]']
    + [f"{b}: &{b} [{','.join(['*' + a] * 9)}]" for a, b in zip("abcdefgh", "bcdefghi")]) + "\n"


def render(tmp_path: Path, capsys, yaml_text: str, *flags: str) -> tuple[int, str, str]:
    cfg = tmp_path / "job.yaml"
    cfg.write_text(yaml_text)
    rc = main(["slurm", "render", "--config", str(cfg), "--quiet", *flags])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("line, sbatch", [
    ("time: 72:00:00", "#SBATCH --time=72:00:00"),       # YAML 1.1: 259200 (180 days)
    ("account: 0123", "#SBATCH --account=0123"),         # YAML 1.1: octal 83
    ("partition: no", "#SBATCH --partition=no"),         # YAML 1.1: False
    ("qos: on", "#SBATCH --qos=on"),
    ("job_name: 0x1F", "#SBATCH --job-name=0x1F"),       # YAML 1.1: 31
])
def test_job_yaml_scalars_are_kept_as_written(tmp_path, capsys, line, sbatch):
    rc, out, err = render(tmp_path, capsys, f"layout: local\n{line}\n")
    assert rc == 0, err
    assert sbatch in out.splitlines()


def test_job_yaml_numbers_and_lists_are_read_by_the_declared_kind(tmp_path, capsys):
    rc, out, err = render(tmp_path, capsys, "layout: local\nnodes: 1\ngpus_per_node: 0004\nretriever_gpus: [2]\n"
                          "overrides: [trainer.total_epochs=15, 'data.max_start_length=2048']\n")
    assert rc == 0, err
    assert "trainer.total_epochs=15" in out and "data.max_start_length=2048" in out
    assert "#SBATCH --gres=gpu:4" in out


@pytest.mark.parametrize("yaml_text, named", [
    ("retriever_gpus: [true]\n", "retriever_gpus"),                 # became GPU 1
    ("tensor_parallel: .inf\n", "tensor_parallel='.inf' is invalid"),
    ("retriever_options: [1]\n", "retriever_options"),             # a list where a mapping is wanted
    ("nodes: [2]\n", "nodes holds a list"),                         # a list where one value is wanted
    ("partition: {a: 1}\n", "partition holds a mapping"),
    ("nodes: 2\nnodes: 3\n", "nodes (line 2, column 1) is given twice"),
    ("account: !!int 0123\n", "account (line 1, column 10): the tag !!int is not accepted"),
    ("- layout: local\n", "the file holds a list; it must hold a mapping of job options"),
    ("layout: [local\n", "not valid YAML"),
])
def test_job_yaml_errors_name_the_file_and_the_key(tmp_path, capsys, yaml_text, named):
    rc, out, err = render(tmp_path, capsys, yaml_text)
    assert rc != 0 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("medret: error: "), err  # one line, no traceback
    assert str(tmp_path / "job.yaml") in lines[0] and named in lines[0], lines[0]


def test_alias_bomb_is_refused_at_once(tmp_path, capsys):
    assert len(BOMB.encode()) < 400  # the 378-byte bomb: 9**9 strings once expanded
    started = time.perf_counter()
    rc, out, err = render(tmp_path, capsys, BOMB)
    assert time.perf_counter() - started < 2.0
    assert rc != 0
    assert "a (line 1, column 4): anchor &a is not accepted" in err and str(tmp_path / "job.yaml") in err
    (tmp_path / "alias.yaml").write_text("x: 1\nb:\n  c: [2, *x]\n")
    with pytest.raises(ConfigError, match=r"b\.c\[1\] \(line 3, column 10\): alias \*x is not accepted"):
        config_file.load(tmp_path / "alias.yaml")


def test_doctor_config_file_is_read_the_same_way(tmp_path):
    from medret.doctor.run import load_config_file

    good = tmp_path / "r.yaml"
    good.write_text("corpus_name: sample\nretriever_name: BM25\nallow_cpu_fallback: no\nbatch_size: 064\n"
                    "query_prefix: 'query: '\nray_job: 0123\n")
    assert load_config_file(good) == {"corpus_name": "sample", "retriever_name": "BM25", "allow_cpu_fallback": "no",
                                      "batch_size": "064", "query_prefix": "query: ", "ray_job": "0123"}
    from medret.config import RetrieverConfig

    cfg = RetrieverConfig.from_mapping(load_config_file(good))
    assert (cfg.allow_cpu_fallback, cfg.batch_size, cfg.ray_job) == (False, 64, "0123")
    hydra = tmp_path / "trainer.yaml"
    hydra.write_text("data: {max_prompt_length: 4096}\nretriever:\n  url: http://h:1/retrieve\n  topk: 3\n"
                     "  backend: local\n")
    assert load_config_file(hydra) == {"url": "http://h:1/retrieve", "topk": "3", "backend": "local"}
    for text, named in (("allow_cpu_fallback: flase\n", "allow_cpu_fallback='flase' is invalid"),
                        ("timeout: .inf\n", "timeout='.inf' is invalid"),
                        ("db_dir: [a]\n", "db_dir holds a list"),
                        ("retriever:\n  corpus_nme: sample\n", "'corpus_nme' -> 'corpus_name'"),
                        ("retriever:\n  cache_dir: {a: 1}\n", "retriever.cache_dir holds a mapping")):
        bad = tmp_path / "bad.yaml"
        bad.write_text(text)
        with pytest.raises(ConfigError) as e:
            load_config_file(bad)
        assert str(e.value).startswith(str(bad)) and named in str(e.value), str(e.value)


def test_json_settings_refuse_nan_and_duplicates(tmp_path):
    p = tmp_path / "r.json"
    p.write_text('{"timeout": NaN}')
    with pytest.raises(ConfigError, match=r"r\.json: NaN is not accepted"):
        config_file.load(p)
    p.write_text('{"a": 1, "a": 2}')
    with pytest.raises(ConfigError, match=r"key 'a' is given twice"):
        config_file.load(p)


def test_files_that_are_not_settings_are_refused(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_bytes(b"a: " + b"x" * (config_file.MAX_BYTES + 1))
    with pytest.raises(ConfigError, match="too large for a settings file"):
        config_file.load(big)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"partition: caf\xe9\n")
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        config_file.load(latin)
    with pytest.raises(ConfigError, match="cannot be read"):
        config_file.load(tmp_path / "missing.yaml")
    assert config_file.load_mapping(_empty(tmp_path), "job options") == {}


def _empty(tmp_path: Path) -> Path:
    p = tmp_path / "empty.yaml"
    p.write_text("# nothing yet\n")
    return p


def test_no_other_module_parses_yaml():
    """Every YAML entry point goes through medret.config_file: no other module calls yaml.* itself."""
    root = Path(medret.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        if path.name == "config_file.py" and path.parent == root:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                if any(n == "yaml" or n.startswith("yaml.") for n in names):
                    offenders.append(f"{path.relative_to(root)}:{node.lineno}")
    assert offenders == []
