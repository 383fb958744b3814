"""medret's core (what `make demo` installs: numpy, bm25s, PyStemmer, orjson, tqdm, pyyaml) runs the command line
and BM25 search with every optional package unimportable (issue 14: the CLI imported starlette to build its
parser, so a core install could not start `medret` at all)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

# every package of an extra ([dense], [serve], [ray], [kare], [download], [bench], [test]) and scipy (no longer core)
OPTIONAL = ["torch", "transformers", "faiss", "safetensors", "requests", "ray", "pandas", "pyarrow", "starlette",
            "uvicorn", "huggingface_hub", "psutil", "matplotlib", "scipy", "omegaconf", "httpx"]
RUN = ("import sys\n"
       f"for m in {OPTIONAL!r}:\n"
       "    sys.modules[m] = None  # `import m` and `import m.sub` raise ImportError\n"
       "from medret.cli import main\n"
       "sys.exit(main(sys.argv[1:]))\n")


def medret_core(args, tmp_path):
    env = dict(os.environ, MEDRET_CACHE=str(tmp_path / "cache"))
    return subprocess.run([sys.executable, "-c", RUN, *args], capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=300)


@pytest.mark.parametrize("args,expect", [
    (["search", "sepsis mortality risk in elderly ICU patients", "--corpus", "sample", "--retriever", "BM25",
      "--topk", "5"], "Sepsis Mortality in Elderly ICU Patients"),
    (["index", "build", "--corpus", "sample", "--retriever", "BM25"], "BM25 index:"),
    (["plan", "--corpus", "MedCorp", "--gpu-mem", "80G"], "best: sharded flat fp16 over 2 GPU(s)"),
    (["slurm", "render", "--corpus", "sample", "--retriever", "BM25", "--quiet"], "medret_main"),
    (["serve", "--help"], "--max-batch-queries"),
])
def test_the_command_line_runs_on_the_core_alone(args, expect, tmp_path):
    r = medret_core(args, tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert expect in r.stdout, r.stdout[-2000:]

