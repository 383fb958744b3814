"""The paths a rendered job reads, checked by `medret slurm check` and `doctor --sbatch` where they run, by the same
rule as the job's own first step (``medret_check_paths`` in templates/common.sh): the corpus folder
(``MEDRET_DB_DIR``); in train mode the data folder, its two files and the model when it is a folder.

A job rendered with ``--paths-on-compute-nodes`` (the paths exist only on the compute nodes) leaves them to that
first step, which runs on the trainer node before Ray or the retriever starts.
"""
from __future__ import annotations

import os
import re
import shlex
from typing import Any, Mapping

_DEFAULT = r'^if \[ -z "\$\{{{name}:-\}}" \]; then {name}=(.*); fi\s*$'


def _word(line_value: str) -> str | None:
    try:
        words = shlex.split(line_value, comments=True)
    except ValueError:
        return None
    return words[0] if len(words) == 1 else None


def script_value(text: str, name: str, environ: Mapping[str, str]) -> tuple[str | None, str]:
    """``NAME`` as the job will see it: the submitting shell's (sbatch passes it on), else the script's default;
    and where it came from, for messages."""
    if environ.get(name):
        return environ[name], f"{name} from the environment"
    m = re.search(_DEFAULT.format(name=name), text, re.M)
    return (_word(m.group(1)) if m else None), f"the script's {name}"


def is_model_path(model: str) -> bool:
    """A model given as a folder, not a hub id: /x, ./x, ../x, ~/x, a/b/c, or anything that exists here."""
    return model.startswith(("/", "./", "../", "~")) or model.count("/") >= 2 or os.path.exists(model)


def check_paths(header: Mapping[str, Any], text: str, environ: Mapping[str, str], cwd: str | None,
                errors: list[str], facts: dict[str, Any]) -> None:
    """Append an error for each path the job reads that does not exist here (relative to ``cwd``, where sbatch is
    run), naming the path and the fix."""
    if header.get("paths_on_compute_nodes"):
        facts["paths"] = "checked by the job on its first node (rendered with --paths-on-compute-nodes)"
        return
    base = cwd or os.getcwd()

    def here(path: str) -> str:
        return os.path.join(base, os.path.expanduser(path))

    rel = "" if cwd is None else f", relative to {base}"
    db, source = script_value(text, "MEDRET_DB_DIR", environ)
    if db and not os.path.isdir(here(db)):
        errors.append(f"the corpus folder MEDRET_DB_DIR={db!r} ({source}{rel}) does not exist here: give --db-dir "
                      "(or MEDRET_DB_DIR at submit time) a folder that exists, or render with "
                      "--paths-on-compute-nodes if it exists only on the compute nodes (the job then checks it)")
    if header.get("mode") != "train":
        return
    found: list[str] = []
    data_dir, source = script_value(text, "DATA_DIR", environ)
    files = {key: re.search(rf"^{name}=(.*)$", text, re.M) for key, name in (("train", "TRAIN_FILE"),
                                                                               ("val", "VAL_FILE"))}
    if data_dir is not None:
        if not os.path.isdir(here(data_dir)):
            errors.append(f"the data folder DATA_DIR={data_dir!r} ({source}{rel}) does not exist here: render with "
                          "--data-dir DIR (or set DATA_DIR at submit time) naming the folder that holds the training "
                          "data, or render with --paths-on-compute-nodes if it exists only on the compute nodes "
                          "(the job then checks it)")
        elif all(files.values()):
            missing: list[str] = []
            for key, fm in files.items():
                name = _word(fm.group(1)) if fm else None
                if not name:
                    continue
                path = name if os.path.isabs(name) else os.path.join(data_dir, name)
                (found if os.path.isfile(here(path)) else missing).append(f"data.{key}_files={path}")
            if missing:
                try:
                    has = sorted(n for n in os.listdir(here(data_dir)) if n.endswith(".parquet"))
                except OSError:
                    has = []
                errors.append(
                    f"missing training data: {', '.join(missing)} ({source} is {data_dir!r}{rel}; it holds "
                    f"{', '.join(has) if has else 'no .parquet file'}). Write them with `medret kare prepare --out "
                    "DIR` (train.parquet, val.parquet), or re-render with --data-dir DIR --train-file NAME --val-file "
                    "NAME (Search-R1's data scripts write train.parquet and test.parquet: --val-file test.parquet)")
    if found:
        facts["data_files"] = ", ".join(found)
    model, source = script_value(text, "MODEL", environ)
    if model and is_model_path(model) and not os.path.exists(here(model)):
        errors.append(f"the model MODEL={model!r} ({source}{rel}) does not exist here: render with --model naming a "
                      "folder that exists (or set MODEL at submit time), give a hub id such as Qwen/Qwen2.5-7B, or "
                      "render with --paths-on-compute-nodes if it exists only on the compute nodes")
