"""docs/kare.md's example, run as written (issue 14: it asked --balance for 100 label-1 samples of the 23 that its
synthetic data held in train)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd

DOC = Path(__file__).resolve().parents[2] / "docs" / "kare.md"


def first_bash_block(text: str) -> list[str]:
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    return [c.strip() for c in block.replace("\\\n", " ").splitlines() if c.strip() and not c.startswith("#")]


def test_the_documented_example_runs_and_gives_the_balance_it_asks_for(tmp_path):
    commands = first_bash_block(DOC.read_text(encoding="utf-8"))
    assert [c.split()[:3] for c in commands] == [["medret", "kare", "synth"], ["medret", "kare", "prepare"]]
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    for cmd in commands:
        r = subprocess.run(["bash", "-c", cmd], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, (cmd, r.stderr[-2000:])
    pos, neg = map(int, re.search(r"--balance (\d+):(\d+)", commands[1]).groups())
    out = tmp_path / re.search(r"--out (\S+)", commands[1]).group(1)
    train = pd.read_parquet(out / "train.parquet")
    labels = [row["ground_truth"]["target"][0] for row in train["reward_model"]]
    assert labels.count("1") == pos and labels.count("0") == neg
    assert (out / "val.parquet").is_file()
