"""Every hydra value the trainer reads back is quoted so that hydra's own override parser (and the OmegaConf config
it composes) returns exactly the text the job was given (issue 24, item 23): paths with ~/, =, ',', [ ], #, ( ), a
quote, non-ASCII, and ${oc.env:HOME} kept literal -- the values known when rendering (retriever options) and those
the script knows only at run time (DATA_DIR, MODEL, MEDRET_DB_DIR, the device, the GPU)."""
from __future__ import annotations

import os
import subprocess

import pytest

from medret.launch.slurm import JobSpec, check_script, render_job
from tests.launch.conftest import hydra_read

HARD = ["~/models/qwen", "/data/a=b", "/data/a,b", "/data/[x]", "/data/x#y", "/data/(x)", "/data/it's",
        "/data/médecine/日本", "${oc.env:HOME}/x", "/data/back\\slash", "/data/end\\", "/data/q\\'uote"]


def train_words(text: str, env: dict[str, str]) -> list[str]:
    """The words of the script's training command, as bash builds them at run time."""
    body = text[:text.rindex('medret_setup "$@"')]
    script = (f'{body}\nTRAIN_PATH="$(medret_data_path "$TRAIN_FILE")"; VAL_PATH="$(medret_data_path "$VAL_FILE")"\n'
              'RETRIEVER_GPU=3\nmedret_build_train_cmd\nfor w in "${TRAIN_CMD[@]}"; do printf "%s\\0" "$w"; done')
    r = subprocess.run(["bash", "-c", script], capture_output=True, timeout=60,
                       env={"PATH": os.environ["PATH"], "LANG": "C.UTF-8", **env})
    assert r.returncode == 0, r.stderr
    return [w.decode() for w in r.stdout.split(b"\0")[:-1]]


@pytest.mark.parametrize("value", HARD)
@pytest.mark.parametrize("layout", ["local", "retriever-node"])
def test_hydra_reads_back_exactly_what_the_job_was_given(value, layout):
    spec = JobSpec.from_mapping({"layout": layout, "corpus": "sample", "retriever": "/models/enc",
                                 "query_prefix": value, "db_dir": value, "model": value, "data_dir": value,
                                 "val_file": value + "/v.parquet", "paths_on_compute_nodes": True})
    text = render_job(spec)
    assert check_script(text).ok, check_script(text).format()
    words = train_words(text, {"RAY_ADDRESS": "10.0.0.1:6379"})
    hydra_words = [w for w in words if "=" in w and not w.startswith(("env", "python"))]
    got = dict(hydra_read(hydra_words))  # keys as hydra names them: retriever.x for +retriever.x
    assert got["retriever.query_prefix"] == value
    assert got["retriever.db_dir"] == value
    assert got["actor_rollout_ref.model.path"] == value
    assert got["data.train_files"] == f"{value}/train.parquet"
    assert got["data.val_files"] == (value + "/v.parquet" if value.startswith("/") else f"{value}/{value}/v.parquet")
    assert got["retriever.retriever_name"] == "/models/enc"
    if layout == "retriever-node":
        assert got["retriever.ray_address"] == "10.0.0.1:6379" and got["retriever.ray_attach"] is True
    else:
        assert got["retriever.gpu_id"] == "3"  # a string to hydra; RetrieverConfig reads it as the int 3
