"""SLURM job scripts for RL training with medret: plan the GPU split, render the sbatch, check a script.

Everything here is a pure function of its inputs (no SLURM, no files except the packaged templates, and the
data files that ``check_script`` looks for), so every refusal can be tested without a cluster. Search-R1's
recipes (the hyper-parameters of its train_ppo.sh / train_grpo.sh) are data in :mod:`medret.launch.recipes`.

Layouts
-------
``local``
    One node. The retriever runs inside the trainer's driver process on its own GPU(s); the Ray workers
    that train (FSDP + vLLM) are started with ``CUDA_VISIBLE_DEVICES`` = the training GPUs only, so the
    retriever's GPU is never visible to training.
``per-node``
    Every node runs its own ``medret serve`` on its retriever GPU (Search-R1's "a retrieval server on every
    node", done for you): started with ``--port 0 --address-file``, the job waits on ``/health`` and fails
    if a server is not ready in time.
``retriever-node``
    The retriever is a Ray actor on a dedicated Ray node: the last SLURM node when ``nodes >= 2`` (all of
    its GPUs, or ``retriever_gpus`` of it), or a separate raylet that owns ``retriever_gpus`` of the single
    node. Trainer nodes never see those GPUs (that raylet declares ``--num-gpus 0`` plus the custom
    resource ``medret_retriever``).

GPU numbers in a spec are *indices into the job's GPUs on a node* (0..gpus_per_node-1); at run time they
are mapped through the ``CUDA_VISIBLE_DEVICES`` that SLURM gives the job, so they stay right on clusters
that hand out physical ids.
"""
from __future__ import annotations

import json
import os
import re
import shlex
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from string import Template
from typing import Any, Mapping

from medret import options
from medret.config import DEFAULT_TOPK, ENCODER_OPTION_NAMES, RERANK_OPTION_NAMES, EngineOptions
from medret.errors import ConfigError
from medret.launch import recipes
from medret.version import __version__

LAYOUTS = ("local", "per-node", "retriever-node")
MODES = ("train", "smoke")
SPEC_BEGIN = "# medret-job-spec-begin"
SPEC_END = "# medret-job-spec-end"
SPEC_FORMAT = "medret-slurm-job"
SPEC_VERSION = 1
RAY_RESOURCE = "medret_retriever"
_SAFE_NAME = re.compile(r"[A-Za-z0-9._+-]+")  # used with fullmatch ("$" would let a trailing newline through)
# Newlines and other control characters (C0, DEL, NEL and the Unicode line/paragraph separators) are refused in
# every field: in a script a newline ends a comment or an #SBATCH line and starts a command.
_CONTROL = re.compile("[\x00-\x1f\x7f\x85\u2028\u2029]")
# Characters that only mean something to a shell; refused in the words of `python` (an interpreter and its
# arguments, not shell code)
_SHELL_META = re.compile(r"[$`;|&<>(){}\\!*?\[\]#~'\"]")
# A shell word with no expansion at all: the only form a user value may take in a rendered script (what
# shlex.quote writes: bare safe characters, '...' segments, and "..." without $, ` or \)
LITERAL_WORD = r"(?:[A-Za-z0-9_@%+=:,./-]|'[^']*'|\"[^\"$`\\]*\")+"
_LITERAL_RE = re.compile(LITERAL_WORD)

# The values sbatch accepts for the #SBATCH options medret writes, checked when rendering and by `slurm check`
# in any script: (pattern, what to give).
SBATCH_VALUES: dict[str, tuple[str, str]] = {
    "job-name": (r"[A-Za-z0-9._+-]+", "letters, digits and . _ + - (e.g. medret-train)"),
    "partition": (r"[A-Za-z0-9._-]+(?:,[A-Za-z0-9._-]+)*", "a partition name, or several separated by commas "
                  "(e.g. gpu or gpu,gpu-long)"),
    "account": (r"[A-Za-z0-9._-]+", "an account name: letters, digits and . _ -"),
    "qos": (r"[A-Za-z0-9._-]+", "a QOS name: letters, digits and . _ - (e.g. normal)"),
    "time": (r"\d+(?::\d+){0,2}|\d+-\d+(?::\d+){0,2}|UNLIMITED|INFINITE",
             "minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS (e.g. 72:00:00 or 3-00:00:00)"),
    "mem": (r"\d+[KMGTkmgt]?", "a size such as 64G, 512000M, or 0 for all of a node's memory"),
    "output": (r"[A-Za-z0-9._/%+=,@-]+", "a file name pattern without spaces, quotes or $ (e.g. logs/%x-%j.out)"),
    "error": (r"[A-Za-z0-9._/%+=,@-]+", "a file name pattern without spaces, quotes or $ (e.g. logs/%x-%j.err)"),
    "cpus-per-task": (r"\d+", "a whole number"),
    "nodes": (r"\d+(?:-\d+)?", "a node count such as 2"),
    "ntasks-per-node": (r"\d+", "a whole number"),
    "gres": (r"[A-Za-z0-9_.:,-]+", "a GRES list such as gpu:4 or gpu:a100:4"),
}
_SBATCH_GENERIC = (r"[A-Za-z0-9._/%+=,:@-]*", "letters, digits and . _ / % + = , : @ - (no spaces, quotes or $)")
# JobSpec field -> the #SBATCH option it becomes
_SBATCH_FIELDS = {"job_name": "job-name", "partition": "partition", "account": "account", "qos": "qos",
                  "time": "time", "mem": "mem", "output": "output"}
# the command-line flag of a field, where it is not --field-name
_FLAG_OF = {"output": "--log", "overrides": "--override", "tensor_parallel": "--tp"}
#: retriever options a job passes on as they are declared (EngineOptions): the model paths and the encoder recipe, so
#: a job over a local model folder (--like / --pooling / prefixes ...) searches what `medret index build` built
RETRIEVER_OPTION_NAMES = ("query_model", "doc_model", "models_dir", *ENCODER_OPTION_NAMES, *RERANK_OPTION_NAMES)
# Words of the rendered training / smoke commands that expand variables: written by the templates, never from a
# user value. Any other word of those commands must be a LITERAL_WORD (`slurm check` enforces it).
TEMPLATE_WORDS = frozenset({
    'data.train_files="$TRAIN_PATH"', 'data.val_files="$VAL_PATH"',
    # what medret rendered before train_file / val_file existed (issue 14): scripts rendered then still pass
    'data.train_files="$DATA_DIR/train.parquet"', 'data.val_files="$DATA_DIR/test.parquet"',
    'actor_rollout_ref.model.path="$MODEL"', 'critic.model.path="$MODEL"', '+retriever.gpu_id="$RETRIEVER_GPU"',
    '${MEDRET_DB_DIR:+"+retriever.db_dir=$MEDRET_DB_DIR"}', 'retriever.url="$RETRIEVER_URL/retrieve"',
    '+retriever.ray_address="$RAY_ADDRESS"', '+retriever.ray_job="$MEDRET_RAY_JOB"', '"${MEDRET[@]}"',
    '${MEDRET_DB_DIR:+--db-dir "$MEDRET_DB_DIR"}', '"$RETRIEVER_URL/retrieve"',
}) | {f'"{k}=${{{k}:-{v}}}"' for k, v in recipes.ENV}  # a recipe's environment, unless the job's has it


class _Tmpl(Template):
    """``@@{name}`` placeholders: bash never writes ``@@``, so ``${VAR}`` in templates stays untouched."""

    delimiter = "@@"


@dataclass(frozen=True)
class JobSpec:
    """What to run: the cluster shape, the retriever, the trainer. Build it with :meth:`from_mapping`."""

    layout: str = "local"
    nodes: int = 1
    gpus_per_node: int = 4
    # indices (0..gpus_per_node-1) of the GPUs that retrieve; None = the layout's default; [] = CPU retriever
    retriever_gpus: tuple[int, ...] | None = None
    tensor_parallel: int = 1
    corpus: str = "MedCorp"
    retriever: str = "MedCPT"
    db_dir: str | None = None
    topk: int = DEFAULT_TOPK
    shards: int = 1
    # SLURM resources
    job_name: str = "medret-train"
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: str = "24:00:00"
    mem: str | None = None
    cpus_per_task: int | None = None
    output: str = "%x-%j.out"
    sbatch_extra: tuple[str, ...] = ()
    # trainer
    model: str = "Qwen/Qwen2.5-7B"
    data_dir: str = "data/nq_search"
    # data.train_files / data.val_files: relative to data_dir unless absolute. val.parquet is what `medret kare
    # prepare` writes for validation (Search-R1's NQ scripts validate on test.parquet: val_file="test.parquet")
    train_file: str = "train.parquet"
    val_file: str = "val.parquet"
    # Search-R1's hyper-parameters: none (only the keys medret sets), ppo (train_ppo.sh) or grpo (train_grpo.sh)
    recipe: str = "none"
    max_turns: int = 2
    overrides: tuple[str, ...] = ()
    train_cmd: str | None = None
    mode: str = "train"
    smoke_turns: int = 2
    health_timeout: int = 900
    python: str = "python3"
    # RETRIEVER_OPTION_NAMES given (name, value), in declaration order: passed to `medret serve`, `medret ray up`,
    # the smoke run (as flags) and the trainer's retriever block (as +retriever.NAME=VALUE)
    retriever_options: tuple[tuple[str, Any], ...] = ()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> "JobSpec":
        """From a dict (flags or YAML). Unknown keys are refused with the list of valid ones."""
        data = {k.replace("-", "_"): v for k, v in dict(data).items() if v is not None}
        given = dict(data.pop("retriever_options", None) or {})
        given.update({k: data.pop(k) for k in RETRIEVER_OPTION_NAMES if k in data})
        if given:  # checked as the retriever checks them (kinds, choices, --like names)
            engine = EngineOptions.from_mapping(given)
            data["retriever_options"] = tuple((k, getattr(engine, k)) for k in RETRIEVER_OPTION_NAMES if k in given)
        valid = {f.name for f in fields(cls)} - {"retriever_options"} | set(RETRIEVER_OPTION_NAMES)
        data_keys = set(data) - {"retriever_options"}
        unknown = sorted(data_keys - valid)
        if unknown:
            raise ConfigError(f"unknown job option(s) {unknown}: valid options are {sorted(valid)}")
        if "retriever_gpus" in data:
            data["retriever_gpus"] = parse_gpu_list(data["retriever_gpus"], "retriever_gpus")
        for name in ("sbatch_extra", "overrides"):
            if name in data:
                v = data[name]
                if isinstance(v, str):
                    v = [v]
                if not isinstance(v, (list, tuple)) or not all(isinstance(x, str) for x in v):
                    raise ConfigError(f"{name}={v!r} is invalid: give a list of strings")
                data[name] = tuple(v)
        for name in ("nodes", "gpus_per_node", "tensor_parallel", "topk", "shards", "max_turns", "smoke_turns",
                     "health_timeout", "cpus_per_task"):
            if name in data:
                data[name] = _int_field(name, data[name])
        for name in ("corpus", "retriever", "db_dir", "job_name", "partition", "account", "qos", "time", "mem",
                     "output", "model", "data_dir", "train_cmd", "python", "layout", "mode", "recipe", "train_file",
                     "val_file"):
            if name in data and not isinstance(data[name], str):
                data[name] = str(data[name])
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["retriever_options"] = dict(self.retriever_options)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d

    def retriever_argv(self) -> list[str]:
        """The retriever options as command-line flags (``--pooling=mean``), one item each."""
        return options.argv(EngineOptions.from_mapping(dict(self.retriever_options)), only=RETRIEVER_OPTION_NAMES)


def parse_gpu_list(value: Any, name: str = "retriever_gpus") -> tuple[int, ...]:
    """'3' → (3,), '2,3' → (2, 3), 'none' / '' / [] → () (CPU retriever)."""
    if isinstance(value, (list, tuple)):
        items = list(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        items = [value]
    elif isinstance(value, str):
        v = value.strip().lower()
        items = [] if v in ("", "none", "cpu") else [p.strip() for p in v.split(",")]
    else:
        raise ConfigError(f"{name}={value!r} is invalid: give GPU indices such as '3' or '2,3', or 'none' for CPU")
    out = []
    for it in items:
        try:
            n = int(it)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}={value!r} is invalid: {it!r} is not a GPU index; give e.g. '3' or '2,3', "
                              "or 'none' for a CPU retriever") from None
        out.append(n)
    return tuple(out)


def _field(name: str) -> str:
    flag = _FLAG_OF.get(name, "--" + name.replace("_", "-"))
    return f"{name} ({flag})"


def _no_control(name: str, v: str) -> None:
    m = _CONTROL.search(v)
    if m:
        raise ConfigError(f"{_field(name)}={v!r} is invalid: it holds a control character ({m.group()!r} at "
                          f"position {m.start()}); a newline would end its line of the job script and run the rest "
                          "as a command. Give the value on one line")


def python_words(python: str) -> list[str]:
    """The ``python`` option as argv words (an interpreter and its arguments), each refused if it is shell code."""
    try:
        words = shlex.split(python)
    except ValueError as e:
        raise ConfigError(f"{_field('python')}={python!r} is invalid: {e}; give an interpreter and its arguments, "
                          "e.g. python3 or '/opt/env/bin/python -X faulthandler'") from None
    if not words:
        raise ConfigError(f"{_field('python')}={python!r} is empty: give an interpreter, e.g. python3")
    for w in words:
        m = _SHELL_META.search(w)
        if m:
            raise ConfigError(f"{_field('python')}={python!r} is invalid: {w!r} holds {m.group()!r}, which only a "
                              "shell gives meaning to; give the interpreter and its arguments (no $(...), ;, |, "
                              "quotes), e.g. /opt/env/bin/python. Each word reaches the script quoted")
    return words


def sbatch_value_problem(option: str, value: str) -> str | None:
    """Why ``value`` is not a valid value of ``#SBATCH --option`` (None when it is)."""
    pattern, what = SBATCH_VALUES.get(option, _SBATCH_GENERIC)
    if re.fullmatch(pattern, value):
        return None
    return f"--{option}={value!r} is not a valid value: give {what}"


def _check_text_fields(spec: "JobSpec") -> None:
    """Refuse control characters in every text field, and #SBATCH values sbatch would not accept."""
    for f in fields(spec):
        v = getattr(spec, f.name)
        if f.name == "retriever_options":
            for name, value in v:
                if isinstance(value, str):
                    _no_control(name, value)
            continue
        items = v if isinstance(v, tuple) else (v,)
        for item in items:
            if isinstance(item, str):
                _no_control(f.name, item)
    for name, option in _SBATCH_FIELDS.items():
        v = getattr(spec, name)
        if v is not None:
            problem = sbatch_value_problem(option, v)
            if problem:
                raise ConfigError(f"{_field(name)}={v!r} is invalid: #SBATCH {problem}")
    rendered = {"nodes", "ntasks-per-node", "gres", "cpus-per-task", *_SBATCH_FIELDS.values()}
    for extra in spec.sbatch_extra:
        m = re.fullmatch(r"--([a-z][a-z0-9-]*)(?:=(.*))?", extra.strip())
        if not m:
            raise ConfigError(f"{_field('sbatch_extra')} entry {extra!r} is invalid: give one sbatch option such as "
                              "'--exclusive' or '--constraint=a100'")
        if m.group(1) in rendered:
            raise ConfigError(f"{_field('sbatch_extra')} entry {extra!r} sets --{m.group(1)}, which medret writes "
                              f"itself: use the job option for it instead")
        if m.group(2) is not None:
            problem = sbatch_value_problem(m.group(1), m.group(2))
            if problem:
                raise ConfigError(f"{_field('sbatch_extra')} entry {extra!r} is invalid: {problem}")
    python_words(spec.python)


def _int_field(name: str, v: Any) -> int:
    if isinstance(v, bool):
        raise ConfigError(f"{name}={v!r} is invalid: give a whole number")
    try:
        return int(v)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}={v!r} is invalid: give a whole number") from None


# ====================================================================================== planning


@dataclass(frozen=True)
class Plan:
    """The GPU arithmetic of a job: who sees which GPU, and the numbers the trainer is given."""

    layout: str
    nodes: int
    gpus_per_node: int
    retriever_gpus: tuple[int, ...]      # indices on a retriever node; () = CPU retriever
    train_gpus: tuple[int, ...]          # indices on each trainer node
    train_nodes: int                     # trainer.nnodes
    tensor_parallel: int
    shards: int
    retriever_node: int | None           # retriever-node layout: index of the SLURM node hosting the retriever
    notes: tuple[str, ...] = field(default=())

    @property
    def train_gpus_total(self) -> int:
        return self.train_nodes * len(self.train_gpus)

    @property
    def retriever_device(self) -> str:
        return "cuda" if self.retriever_gpus else "cpu"

    def header(self, spec: JobSpec) -> dict[str, Any]:
        return {
            "format": SPEC_FORMAT, "version": SPEC_VERSION, "medret": __version__,
            "layout": self.layout, "nodes": self.nodes, "gpus_per_node": self.gpus_per_node,
            "retriever_gpus": list(self.retriever_gpus), "train_gpus": list(self.train_gpus),
            "train_nodes": self.train_nodes, "train_gpus_total": self.train_gpus_total,
            "tensor_parallel": self.tensor_parallel, "shards": self.shards, "retriever_node": self.retriever_node,
            "retriever_device": self.retriever_device, "health_check": self.layout != "local",
            "health_timeout": spec.health_timeout, "corpus": spec.corpus, "retriever": spec.retriever,
            "mode": "custom" if spec.train_cmd else spec.mode, "recipe": spec.recipe,
        }


def plan_job(spec: JobSpec) -> Plan:
    """Check a spec and work out the GPU split; raise :class:`ConfigError` saying what to change if it is wrong."""
    if spec.layout not in LAYOUTS:
        raise ConfigError(f"layout={spec.layout!r} is invalid: choose one of {', '.join(LAYOUTS)}")
    if spec.mode not in MODES:
        raise ConfigError(f"mode={spec.mode!r} is invalid: choose one of {', '.join(MODES)}")
    for name in ("nodes", "gpus_per_node", "tensor_parallel", "topk", "shards", "max_turns", "smoke_turns",
                 "health_timeout"):
        v = getattr(spec, name)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ConfigError(f"{name}={v!r} is invalid: it must be a whole number >= 1")
    if spec.cpus_per_task is not None and spec.cpus_per_task < 1:
        raise ConfigError(f"cpus_per_task={spec.cpus_per_task!r} is invalid: it must be >= 1")
    _check_text_fields(spec)
    for name in ("corpus", "retriever", "job_name"):
        v = getattr(spec, name)
        folder = name in ("corpus", "retriever")  # a corpus folder, a local model folder
        if not v or not _SAFE_NAME.fullmatch(v) and not (folder and "/" in v
                                                         and not any(c in v for c in " '\"$`\\")):
            raise ConfigError(f"{_field(name)}={v!r} is invalid: use letters, digits and . _ + - only (e.g. MedCorp, "
                              "MedCPT)" + (", or a folder path without spaces or quotes" if folder else ""))
    for name in ("train_file", "val_file"):
        if not getattr(spec, name).strip():
            raise ConfigError(f"{_field(name)}={getattr(spec, name)!r} is empty: give a parquet file, relative to "
                              "data_dir (--data-dir) or absolute, e.g. train.parquet")
    recipe_pairs, _ = recipes.apply_overrides(recipes.recipe_keys(spec.recipe), spec.overrides)
    G, N = spec.gpus_per_node, spec.nodes
    notes: list[str] = []
    if spec.retriever_gpus is None:
        if spec.layout == "retriever-node" and N >= 2:
            rg: tuple[int, ...] = tuple(range(G))
        else:
            rg = (G - 1,) if G >= 2 else ()
            if G < 2:
                notes.append("gpus_per_node=1: the retriever runs on CPU so the only GPU trains")
    else:
        rg = tuple(spec.retriever_gpus)
    bad = [g for g in rg if not 0 <= g < G]
    if bad:
        raise ConfigError(f"retriever_gpus={list(rg)} is invalid: GPU index {bad[0]} does not exist on a node with "
                          f"gpus_per_node={G} (valid indices 0..{G - 1})")
    if len(set(rg)) != len(rg):
        raise ConfigError(f"retriever_gpus={list(rg)} is invalid: a GPU is listed twice")

    retriever_node: int | None = None
    if spec.layout == "local":
        if N != 1:
            raise ConfigError(f"nodes={N} is invalid for layout=local (the retriever lives in the trainer process "
                              "on one node): use nodes=1, or layout=per-node / retriever-node for several nodes")
    if spec.layout in ("local", "per-node") and len(rg) > 1:
        raise ConfigError(f"retriever_gpus={list(rg)} is invalid for layout={spec.layout}: one retriever GPU per "
                          "node (or 'none' for CPU); to spread one index over several GPUs use "
                          "layout=retriever-node with shards")
    if spec.layout == "retriever-node" and N >= 2:
        retriever_node = N - 1
        train = tuple(range(G))
        train_nodes = N - 1
        idle = G - len(rg)
        if idle:
            notes.append(f"the retriever node (SLURM node {N - 1}) leaves {idle} of its GPUs idle: veRL needs the "
                         "same GPU count on every trainer node")
    else:
        if spec.layout == "retriever-node":
            retriever_node = 0
        train = tuple(g for g in range(G) if g not in rg)
        train_nodes = N
    if not train:
        raise ConfigError(f"retriever_gpus={list(rg)} leaves no GPU to train on (gpus_per_node={G}): give the "
                          "retriever fewer GPUs, or more GPUs per node")
    tp = spec.tensor_parallel
    if len(train) % tp:
        ok = [d for d in range(1, len(train) + 1) if len(train) % d == 0]
        raise ConfigError(
            f"tensor_parallel={tp} is invalid: it must divide the {len(train)} training GPUs per node "
            f"(GPUs {','.join(map(str, train))}; retriever on {','.join(map(str, rg)) or 'CPU'}), as veRL "
            f"requires world_size % tensor_parallel == 0 with tensor-parallel groups inside a node; "
            f"use tensor_parallel in {ok}, or change retriever_gpus / gpus_per_node")
    if spec.shards > 1:
        if spec.layout != "retriever-node":
            raise ConfigError(f"shards={spec.shards} needs layout=retriever-node (the shards are Ray actors on the "
                              "retriever node's GPUs)")
        if rg and spec.shards > len(rg):
            raise ConfigError(f"shards={spec.shards} is invalid: each shard takes one retriever GPU and "
                              f"retriever_gpus={list(rg)} has {len(rg)}; use shards <= {len(rg)} or list more GPUs")
    if spec.recipe != "none" and spec.mode == "train" and not spec.train_cmd:
        errors, batch_notes = recipes.batch_problems(dict((recipes.bare_key(k), v) for k, v in recipe_pairs),
                                                     len(train) * train_nodes)
        if errors:
            raise ConfigError(f"recipe={spec.recipe} on {len(train) * train_nodes} training GPU(s) "
                              f"({len(train)} per node x {train_nodes} node(s)): " + "; ".join(errors))
        notes += batch_notes
    return Plan(layout=spec.layout, nodes=N, gpus_per_node=G, retriever_gpus=rg, train_gpus=train,
                train_nodes=train_nodes, tensor_parallel=tp, shards=spec.shards, retriever_node=retriever_node,
                notes=tuple(notes))


# ====================================================================================== rendering


def _template(name: str) -> str:
    return resources.files("medret.launch").joinpath("templates", name).read_text(encoding="utf-8")


def _q(s: str) -> str:
    return shlex.quote(s)


# The keys of the training command in the order medret writes them without a recipe (with one: the recipe's order)
_BARE_ORDER = ("data.train_files", "data.val_files", "actor_rollout_ref.model.path", "critic.model.path",
               "actor_rollout_ref.rollout.tensor_model_parallel_size", "trainer.n_gpus_per_node", "trainer.nnodes",
               "max_turns", "retriever.url", "retriever.topk")


def _medret_words(spec: JobSpec, plan: Plan) -> dict[str, list[str]]:
    """What medret writes for each key it sets (recipes.SET_BY_MEDRET): the words of the training command."""
    words = {
        "data.train_files": ['data.train_files="$TRAIN_PATH"'],
        "data.val_files": ['data.val_files="$VAL_PATH"'],
        "actor_rollout_ref.model.path": ['actor_rollout_ref.model.path="$MODEL"'],
        "critic.model.path": ['critic.model.path="$MODEL"'],
        "actor_rollout_ref.rollout.tensor_model_parallel_size":
            [f"actor_rollout_ref.rollout.tensor_model_parallel_size={plan.tensor_parallel}"],
        "trainer.n_gpus_per_node": [f"trainer.n_gpus_per_node={len(plan.train_gpus)}"],
        "trainer.nnodes": [f"trainer.nnodes={plan.train_nodes}"],
        "max_turns": [f"max_turns={spec.max_turns}"],
        "retriever.topk": [f"retriever.topk={spec.topk}"],
    }
    # where Search-R1's scripts pass retriever.url, the layout's way to the retriever
    if plan.layout == "local":
        retr = ["+retriever.backend=local", f"+retriever.corpus_name={_q(spec.corpus)}",
                f"+retriever.retriever_name={_q(spec.retriever)}",
                '+retriever.gpu_id="$RETRIEVER_GPU"' if plan.retriever_gpus else "+retriever.device=cpu",
                '${MEDRET_DB_DIR:+"+retriever.db_dir=$MEDRET_DB_DIR"}']
    elif plan.layout == "per-node":
        retr = ['retriever.url="$RETRIEVER_URL/retrieve"']
    else:
        retr = ["+retriever.backend=ray", f"+retriever.corpus_name={_q(spec.corpus)}",
                f"+retriever.retriever_name={_q(spec.retriever)}", "+retriever.ray_placement=retriever-node",
                '+retriever.ray_address="$RAY_ADDRESS"', '+retriever.ray_job="$MEDRET_RAY_JOB"',
                '${MEDRET_DB_DIR:+"+retriever.db_dir=$MEDRET_DB_DIR"}']
        if plan.shards > 1:
            retr.append(f"+retriever.ray_shards={plan.shards}")
    if plan.layout != "per-node":  # the trainer's retriever: in process, or the Ray actor `ray up` created
        retr += [_q(f"+retriever.{name}={_hydra_literal(value)}") for name, value in spec.retriever_options]
    words["retriever.url"] = retr
    return words


def _hydra_literal(value: Any) -> str:
    """A value as a hydra override writes it: true/false, a number, else a quoted string that hydra reads back as
    exactly this text (backslashes before a quote or at the end doubled, quotes escaped, ``${`` not interpolated)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    text = re.sub(r"(\\+)(?='|$)", lambda m: m.group(1) * 2, str(value))
    return "'" + text.replace("'", "\\'").replace("${", "\\${") + "'"


def _trainer_command(spec: JobSpec, plan: Plan) -> str:
    """The training command as bash text (uses $MODEL, $TRAIN_PATH, $VAL_PATH, $RETRIEVER_* set by the script).

    Without a recipe: the keys medret sets, then the overrides. With ``recipe`` ppo / grpo: every key of Search-R1's
    script in its order, medret's value for the keys it sets, the overrides of recipe keys in place, the other
    overrides at the end, run with the script's environment (VLLM_ATTENTION_BACKEND, PYTHONUNBUFFERED)."""
    if spec.train_cmd:
        return f"bash -c {_q(spec.train_cmd)}"
    head = " ".join(_q(w) for w in python_words(spec.python)) + " -m verl.trainer.main_ppo"
    recipe = recipes.recipe_keys(spec.recipe)
    pairs, extra = recipes.apply_overrides(recipe, spec.overrides)
    if recipe:
        env = " ".join(f'"{k}=${{{k}:-{v}}}"' for k, v in recipes.ENV)  # TEMPLATE_WORDS has them
        head = f"env {env} {head}"
    else:
        pairs = [(k, "") for k in _BARE_ORDER]
    words = _medret_words(spec, plan)
    lines = [head]
    for key, value in pairs:
        bare = recipes.bare_key(key)
        if bare in words:
            lines += words[bare]
        else:
            lines.append(_q(f"{key}={value}"))
    lines += [_q(o) for o in extra]
    return " \\\n    ".join(lines)


def _smoke_command(spec: JobSpec, plan: Plan) -> str:
    backend = {"local": "local", "per-node": "http", "retriever-node": "ray"}[plan.layout]
    parts = ['"${MEDRET[@]}" rollout-smoke', f"--backend {backend}", f"--corpus {_q(spec.corpus)}",
             f"--retriever {_q(spec.retriever)}", f"--turns {spec.smoke_turns}",
             '${MEDRET_DB_DIR:+--db-dir "$MEDRET_DB_DIR"}', *(_q(w) for w in spec.retriever_argv())]
    if backend == "http":
        parts.append('--url "$RETRIEVER_URL/retrieve"')
    return " ".join(parts)


def render_job(spec: JobSpec) -> str:
    """The sbatch script for ``spec`` (raises ConfigError on an impossible GPU split)."""
    plan = plan_job(spec)
    sb = [f"#SBATCH --job-name={spec.job_name}", f"#SBATCH --nodes={plan.nodes}", "#SBATCH --ntasks-per-node=1",
          f"#SBATCH --gres=gpu:{plan.gpus_per_node}", f"#SBATCH --time={spec.time}",
          f"#SBATCH --output={spec.output}"]
    for name, flag in (("partition", "partition"), ("account", "account"), ("qos", "qos"), ("mem", "mem"),
                       ("cpus_per_task", "cpus-per-task")):
        v = getattr(spec, name)
        if v is not None:
            sb.append(f"#SBATCH --{flag}={v}")
    for extra in spec.sbatch_extra:  # checked by plan_job: one --option[=value] with a valid value
        sb.append(f"#SBATCH {extra.strip()}")
    header = plan.header(spec)
    mode = header["mode"]
    body = _template(f"{plan.layout}.sh")
    values = {
        "sbatch": "\n".join(sb),
        "spec_begin": SPEC_BEGIN, "spec_end": SPEC_END,
        "spec_json": json.dumps(header, sort_keys=True),
        "layout": plan.layout, "nodes": str(plan.nodes), "gpus_per_node": str(plan.gpus_per_node),
        "train_gpus": ",".join(map(str, plan.train_gpus)),
        "retriever_gpus": ",".join(map(str, plan.retriever_gpus)),
        "n_train_gpus": str(len(plan.train_gpus)),
        "n_retriever_gpus": str(len(plan.retriever_gpus)),
        "retriever_device": plan.retriever_device,
        "retriever_node": "" if plan.retriever_node is None else str(plan.retriever_node),
        "shards": str(plan.shards),
        "corpus": _q(spec.corpus), "retriever": _q(spec.retriever),
        "db_dir": _q(spec.db_dir or ""),
        "retriever_flags": " ".join(_q(w) for w in spec.retriever_argv()),
        "model": _q(spec.model), "data_dir": _q(spec.data_dir),
        "train_file": _q(spec.train_file), "val_file": _q(spec.val_file),
        "health_timeout": str(spec.health_timeout),
        "python": _q(spec.python),
        "mode": mode,
        "ray_resource": RAY_RESOURCE,
        "notes": "\n".join(f"# note: {n}" for n in plan.notes),
    }
    values["layout_body"] = _Tmpl(body).substitute(values)
    values["train_command"] = _trainer_command(spec, plan)
    values["smoke_command"] = _smoke_command(spec, plan)
    values["common"] = _template("common.sh")
    text = _Tmpl(_template("job.sbatch")).substitute(values)
    return text


# ====================================================================================== checking


@dataclass
class CheckReport:
    path: str
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors

    def format(self) -> str:
        lines = [f"{self.path}: {'OK' if self.ok else 'FAILED'}"]
        for k, v in self.facts.items():
            lines.append(f"  {k}: {v}")
        lines += [f"  error: {e}" for e in self.errors]
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def read_spec_header(text: str) -> dict[str, Any] | None:
    """The machine-readable block that :func:`render_job` embeds, or None if the script has none."""
    lines = text.splitlines()
    try:
        a = lines.index(SPEC_BEGIN)
        b = lines.index(SPEC_END, a)
    except ValueError:
        return None
    blob = "".join(line[1:].strip() for line in lines[a + 1:b])
    try:
        d = json.loads(blob)
    except ValueError as e:
        raise ConfigError(f"the medret job-spec block is damaged ({e}); re-render the script") from None
    if not isinstance(d, dict) or d.get("format") != SPEC_FORMAT:
        raise ConfigError("the medret job-spec block is not a medret-slurm-job spec; re-render the script")
    return d


def _assignments(text: str) -> dict[str, str]:
    """Simple shell assignments NAME=value / export NAME=value (last one wins), quotes removed."""
    out: dict[str, str] = {}
    for m in re.finditer(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(\"[^\"\n]*\"|'[^'\n]*'|[^\s;#]*)",
                         text, flags=re.M):
        v = m.group(2)
        if len(v) >= 2 and v[0] == v[-1] and v[0] in "\"'":
            v = v[1:-1]
        out[m.group(1)] = v
    return out


def _expand(value: str, env: Mapping[str, str], depth: int = 0) -> str:
    """Expand $NAME, ${NAME} and ${NAME:-default} from the script's own simple assignments."""

    def sub(m: re.Match) -> str:
        name = m.group(1) or m.group(3)
        default = m.group(2)
        if name in env and depth < 8:
            return _expand(env[name], env, depth + 1)
        return default if default is not None else m.group(0)

    return re.sub(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))", sub, value)


def _hydra_value(text: str, key: str, env: Mapping[str, str]) -> str | None:
    found = None
    for m in re.finditer(r"(?:^|[\s\\])[+]?" + re.escape(key) + r"=(\"[^\"\n]*\"|'[^'\n]*'|[^\s\\]+)", text):
        found = m.group(1).strip("\"'")
    return None if found is None else _expand(found, env)


def _int_or_none(v: str | None) -> int | None:
    if v is None:
        return None
    try:
        return int(v)
    except ValueError:
        return None


def _gpu_set(v: str | None) -> set[int] | None:
    if v is None:
        return None
    try:
        return {int(x) for x in v.split(",") if x.strip() != ""}
    except ValueError:
        return None


def check_script(text: str, path: str = "<script>", files: bool = True, environ: Mapping[str, str] | None = None,
                 cwd: str | None = None) -> CheckReport:
    """Validate a job script: GPU arithmetic, tensor-parallel divisibility, retriever GPU excluded from
    training, a health check that can fail the job, cleanup, dry-run safety, the trainer's batch sizes.

    Scripts rendered by medret carry a spec block that is re-checked against the script text (so hand edits
    that break the split are caught); other scripts (e.g. Search-R1's own) are checked from their text.
    With ``files`` (the one part that looks at the file system), a rendered training job's data files are looked
    for as the job will look for them: ``DATA_DIR`` from ``environ`` (default: this process's; sbatch passes the
    submitting shell's environment to the job), else the script's default, relative to ``cwd`` (where sbatch is
    run); a folder that cannot be read here is reported as not checked.
    """
    rep = CheckReport(path)
    env = _assignments(text)
    try:
        header = read_spec_header(text)
    except ConfigError as e:
        rep.errors.append(str(e))
        header = None

    tp = _int_or_none(_hydra_value(text, "actor_rollout_ref.rollout.tensor_model_parallel_size", env))
    n_gpn = _int_or_none(_hydra_value(text, "trainer.n_gpus_per_node", env))
    nnodes = _int_or_none(_hydra_value(text, "trainer.nnodes", env))
    sb_nodes = _int_or_none((re.search(r"^#SBATCH\s+(?:--nodes|-N)[= ](\d+)", text, re.M) or [None, None])[1])
    gres = re.search(r"^#SBATCH\s+--gres[= ]gpu(?::[A-Za-z0-9_-]+)?:(\d+)", text, re.M)
    sb_gpus = int(gres.group(1)) if gres else None

    if header is not None:
        _check_with_header(rep, header, text, env, tp, n_gpn, nnodes, sb_nodes, sb_gpus)
    else:
        _check_text_only(rep, text, env, tp, n_gpn, nnodes, sb_gpus)

    _check_injection(rep, text, header is not None)
    _check_batches(rep, text, env, n_gpn, nnodes)
    if files and header is not None and header.get("mode") == "train":
        _check_data_files(rep, text, os.environ if environ is None else environ, cwd)

    # Generic script hygiene, for any script.
    if re.search(r"^\s*set\s+-[a-zA-Z]*u|set\s+-o\s+nounset", text, re.M):
        rep.errors.append("`set -u` (nounset) breaks `bash job.sbatch` outside SLURM, where SLURM_* variables are "
                          "unset; drop it or give every SLURM_* use a default (${SLURM_JOB_ID:-local})")
    trapped: set[str] = set()
    for m in re.finditer(r"^\s*trap\s+('[^']*'|\"[^\"]*\"|\S+)\s+([A-Z0-9 ]+)$", text, re.M):
        if m.group(1) in ("-", "''", '""'):  # resets, not handlers
            continue
        trapped |= {sig.replace("SIG", "") for sig in m.group(2).split()}
    missing = [sig for sig in ("EXIT", "TERM", "INT") if sig not in trapped]
    if missing:
        rep.errors.append(f"no `trap` for {', '.join(missing)}: the retriever server and Ray processes outlive a "
                          "cancelled or failed job; trap EXIT, TERM and INT and kill the children")
    home = re.search(r"(/home/[A-Za-z0-9._-]+|/Users/[A-Za-z0-9._-]+|/scratch/[A-Za-z0-9._-]+)", text)
    if home:
        rep.warnings.append(f"hard-coded user path {home.group(1)!r}: take it from an environment variable so the "
                            "script works for other users")
    return rep


def _check_with_header(rep: CheckReport, h: dict, text: str, env: Mapping[str, str], tp: int | None,
                       n_gpn: int | None, nnodes: int | None, sb_nodes: int | None, sb_gpus: int | None) -> None:
    G, N = int(h["gpus_per_node"]), int(h["nodes"])
    rg, tg = set(h["retriever_gpus"]), set(h["train_gpus"])
    rep.facts.update(layout=h["layout"], nodes=N, gpus_per_node=G, train_gpus=sorted(tg),
                     retriever_gpus=sorted(rg) or "CPU", train_nodes=h["train_nodes"],
                     tensor_parallel=h["tensor_parallel"])
    # Re-derive the split from the header's own inputs; a header edited into inconsistency is caught here.
    try:
        spec = JobSpec(layout=h["layout"], nodes=N, gpus_per_node=G, retriever_gpus=tuple(h["retriever_gpus"]),
                       tensor_parallel=int(h["tensor_parallel"]), shards=int(h.get("shards", 1)))
        plan = plan_job(spec)
        if set(plan.train_gpus) != tg or plan.train_nodes != int(h["train_nodes"]):
            rep.errors.append(f"the spec block says training GPUs {sorted(tg)} on {h['train_nodes']} node(s) but the "
                              f"layout gives {list(plan.train_gpus)} on {plan.train_nodes}; re-render the script")
    except ConfigError as e:
        rep.errors.append(f"GPU split: {e}")
    if rg & tg and h["layout"] != "retriever-node" or (h["layout"] == "retriever-node" and N == 1 and rg & tg):
        rep.errors.append(f"retriever GPU(s) {sorted(rg & tg)} are also training GPUs: training would share them")
    if sb_nodes is not None and sb_nodes != N:
        rep.errors.append(f"#SBATCH --nodes={sb_nodes} but the job was planned for {N} node(s)")
    if sb_gpus is not None and sb_gpus != G:
        rep.errors.append(f"#SBATCH --gres=gpu:{sb_gpus} but the job was planned for {G} GPUs per node")
    if env.get("TRAIN_GPU_INDICES") is not None and _gpu_set(env.get("TRAIN_GPU_INDICES")) != tg:
        rep.errors.append(f"TRAIN_GPU_INDICES={env.get('TRAIN_GPU_INDICES')} in the script differs from the planned "
                          f"training GPUs {sorted(tg)}")
    if env.get("RETRIEVER_GPU_INDICES") is not None and _gpu_set(env.get("RETRIEVER_GPU_INDICES")) != rg:
        rep.errors.append(f"RETRIEVER_GPU_INDICES={env.get('RETRIEVER_GPU_INDICES')} in the script differs from the "
                          f"planned retriever GPUs {sorted(rg) or 'none'}")
    if h.get("mode") == "train":
        if tp is None or n_gpn is None or nnodes is None:
            rep.errors.append("the training command lacks trainer.n_gpus_per_node / trainer.nnodes / "
                              "actor_rollout_ref.rollout.tensor_model_parallel_size")
        else:
            if n_gpn != len(tg):
                rep.errors.append(f"trainer.n_gpus_per_node={n_gpn} but {len(tg)} GPUs per node are training GPUs "
                                  f"({sorted(tg)}): the trainer would use the retriever's GPU or wait for GPUs "
                                  "that never come")
            if nnodes != int(h["train_nodes"]):
                rep.errors.append(f"trainer.nnodes={nnodes} but the job has {h['train_nodes']} trainer node(s)")
            if n_gpn and tp and (n_gpn % tp or (n_gpn * nnodes) % tp):
                rep.errors.append(f"tensor_model_parallel_size={tp} does not divide the {n_gpn} training GPUs per "
                                  "node (veRL: world_size % tp == 0)")
            if tp != int(h["tensor_parallel"]):
                rep.warnings.append(f"tensor_model_parallel_size={tp} differs from the planned "
                                    f"{h['tensor_parallel']}")
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    if h["layout"] in ("per-node",):
        need = {"--port 0": "the server must pick a free port (--port 0)",
                "--address-file": "the server must report its address (--address-file)",
                "/health": "the job must wait on /health"}
        for s, why in need.items():
            if s not in code:
                rep.errors.append(f"health check missing: {why}")
        if not re.search(r"medret_wait_health[^\n]*\n", code) or "medret_fail" not in code:
            rep.errors.append("health check missing: no wait on /health that fails the job on timeout")
    if h["layout"] == "retriever-node":
        if not re.search(r"ray up\b(?:[^\n]|\\\n)*?--timeout", code):
            rep.errors.append("health check missing: the retriever actor is not created and awaited with "
                              "`medret ray up ... --timeout` before training")
    rep.facts["health_check"] = h["layout"] != "local"


def _check_batches(rep: CheckReport, text: str, env: Mapping[str, str], n_gpn: int | None,
                   nnodes: int | None) -> None:
    """Search-R1's batch sizes in the training command against its training GPUs (recipes.batch_problems)."""
    if n_gpn is None:
        return
    keys = (recipes.TRAIN_BATCH, recipes.N_AGENT, recipes.MINI_BATCH, *recipes.PER_GPU_KEYS)
    values = {k: v for k in keys for v in [_hydra_value(text, k, env)] if v is not None}
    if recipes.TRAIN_BATCH in values or any(k in values for k in recipes.PER_GPU_KEYS):
        errors, _ = recipes.batch_problems(values, n_gpn * (nnodes or 1))
        rep.errors += errors


_DATA_DIR_LINE = re.compile(r'^if \[ -z "\$\{DATA_DIR:-\}" \]; then DATA_DIR=(.*); fi\s*$', re.M)


def _block_value(line_value: str) -> str | None:
    try:
        words = shlex.split(line_value, comments=True)
    except ValueError:
        return None
    return words[0] if len(words) == 1 else None


def _check_data_files(rep: CheckReport, text: str, environ: Mapping[str, str], cwd: str | None) -> None:
    """data.train_files / data.val_files of a rendered training job exist, where their folder is readable here."""
    m = _DATA_DIR_LINE.search(text)
    files = {key: re.search(rf"^{name}=(.*)$", text, re.M) for key, name in (("train", "TRAIN_FILE"),
                                                                               ("val", "VAL_FILE"))}
    if not m or not all(files.values()):
        return  # rendered before train_file / val_file existed
    default = _block_value(m.group(1))
    data_dir = environ.get("DATA_DIR") or default
    source = "DATA_DIR from the environment" if environ.get("DATA_DIR") else "the script's DATA_DIR"
    if data_dir is None:
        return
    base = cwd or os.getcwd()
    missing, unchecked, found = [], [], []
    for key, fm in files.items():
        name = _block_value(fm.group(1)) if fm else None
        if not name:
            continue
        path = name if os.path.isabs(name) else os.path.join(data_dir, name)
        full = os.path.join(base, path)
        folder = os.path.dirname(full)
        if not (os.path.isdir(folder) and os.access(folder, os.R_OK | os.X_OK)):
            unchecked.append(f"data.{key}_files={path}")
        elif os.path.isfile(full) and os.access(full, os.R_OK):
            found.append(f"data.{key}_files={path}")
        else:
            missing.append(f"data.{key}_files={path}")
    if found:
        rep.facts["data_files"] = ", ".join(found)
    if unchecked:
        rep.facts["data_files_not_checked"] = (", ".join(unchecked) + f": the folder cannot be read here ({source}"
                                               + (f", relative to {base}" if not os.path.isabs(data_dir) else "")
                                               + ")")
    if missing:
        folder = os.path.join(base, data_dir)
        try:
            has = sorted(n for n in os.listdir(folder) if n.endswith(".parquet"))
        except OSError:
            has = []
        rep.errors.append(
            f"missing training data: {', '.join(missing)} ({source} is {data_dir!r}"
            + (f", relative to {base}" if not os.path.isabs(data_dir) else "")
            + f"; it holds {', '.join(has) if has else 'no .parquet file'}). Write them with `medret kare prepare "
            "--out DIR` (train.parquet, val.parquet), or re-render with --data-dir DIR --train-file NAME --val-file "
            "NAME (Search-R1's data scripts write train.parquet and test.parquet: --val-file test.parquet)")


def _check_text_only(rep: CheckReport, text: str, env: Mapping[str, str], tp: int | None, n_gpn: int | None,
                     nnodes: int | None, sb_gpus: int | None) -> None:
    rep.warnings.append("no medret job-spec block: checked from the script text only (render scripts with "
                        "`medret slurm render` for a full check)")
    visible = _gpu_set(_expand(env["CUDA_VISIBLE_DEVICES"], env)) if "CUDA_VISIBLE_DEVICES" in env else None
    retr_gpu = _int_or_none(_hydra_value(text, "retriever.gpu_id", env))
    if retr_gpu is None:
        # a retrieval server started on one GPU: `CUDA_VISIBLE_DEVICES=3 python retrieval_server.py ...`
        m = re.search(r"CUDA_VISIBLE_DEVICES=(\d+)\s+[^\n]*(retriev|medret serve)", text)
        if m:
            retr_gpu = int(m.group(1))
    per_node = sb_gpus if sb_gpus is not None else (len(visible) if visible else None)
    rep.facts.update(gpus_per_node=per_node, n_gpus_per_node=n_gpn, tensor_parallel=tp, retriever_gpu=retr_gpu)
    if n_gpn is not None and tp is not None and n_gpn % tp:
        rep.errors.append(f"tensor_model_parallel_size={tp} does not divide trainer.n_gpus_per_node={n_gpn} "
                          "(veRL: world_size % tp == 0)")
    if retr_gpu is not None and n_gpn is not None and per_node is not None and n_gpn > per_node - 1:
        rep.errors.append(f"trainer.n_gpus_per_node={n_gpn} with {per_node} GPUs per node leaves none for the "
                          f"retriever on GPU {retr_gpu}: training would use the retriever's GPU")
    if retr_gpu is not None and visible is not None and retr_gpu in visible and n_gpn is not None \
            and n_gpn >= len(visible):
        rep.errors.append(f"CUDA_VISIBLE_DEVICES={','.join(map(str, sorted(visible)))} exposes the retriever's GPU "
                          f"{retr_gpu} to training (trainer.n_gpus_per_node={n_gpn})")
    if re.search(r"retriev|serve", text, re.I) and "/health" in text:
        for m in re.finditer(r"^.*curl\b[^\n]*/health[^\n]*$", text, re.M):
            line = m.group(0)
            if not re.search(r"\s-[a-zA-Z]*f|--fail", line):
                rep.errors.append(f"health check cannot fail the job: {line.strip()!r} (curl without --fail exits 0 "
                                  "on HTTP errors such as 404); use curl --fail in a loop with a timeout and exit "
                                  "non-zero")
    elif re.search(r"retrieval_server|medret serve|retriever\.url", text):
        rep.errors.append("health check missing: the job uses a retrieval server but never waits on /health")


# ====================================================================================== injected lines and values
#
# The rule `slurm check` applies (docs/clusters.md, "What `slurm check` refuses"):
#
# any script
#   1. no control character but tab and newline (a carriage return, escape, ...) anywhere;
#   2. between the first line and the last #SBATCH line, nothing but comments and blank lines: sbatch stops
#      reading #SBATCH at the first command, so the options after it are silently ignored, and a command there
#      is how a newline injected into an #SBATCH value shows;
#   3. every #SBATCH value valid for its option (SBATCH_VALUES; other options: no spaces, quotes or $).
# scripts rendered by medret (they carry the job-spec block)
#   4. nothing but comments and blank lines before `set -eo pipefail` (the template has only #SBATCH lines and
#      comments there);
#   5. every line of the "this job" block has the template's shape, with a LITERAL_WORD wherever the template
#      puts a user value (corpus, retriever, model, data dir, db dir) and a number or GPU list where it puts one;
#   6. every word of the training and smoke commands is a LITERAL_WORD or one of the template's TEMPLATE_WORDS;
#      every line of the training command but the last ends in " \"; the smoke command is one line.
# A LITERAL_WORD is a shell word without any expansion: bare [A-Za-z0-9_@%+=:,./-], '...' or "..." without $, `
# or \. Commands a user adds elsewhere in a rendered script, and the body of a hand-written one after its #SBATCH
# lines, are not judged: nothing tells a user value from the author's code there.

_BLOCK_BEGIN = "# ---------------------------------------------------------------- this job"
_BLOCK_END = "# ---------------------------------------------------------------- helpers"
_PLACEHOLDER_PATTERNS = {
    "nodes": r"\d+", "gpus_per_node": r"\d+", "n_train_gpus": r"\d+", "shards": r"\d+", "health_timeout": r"\d+",
    "train_gpus": r"[\d,]*", "retriever_gpus": r"[\d,]*", "retriever_node": r"\d*", "layout": r"[a-z-]+",
    "mode": r"[a-z]+", "retriever_device": r"[a-z]+", "ray_resource": r"[A-Za-z0-9_]+",
    "retriever_flags": rf"(?:{LITERAL_WORD}(?:\s+{LITERAL_WORD})*)?",
}


def _is_code(line: str) -> bool:
    t = line.strip()
    return bool(t) and not t.startswith("#")


def _block_patterns() -> list[re.Pattern]:
    """One regex per line of the template's "this job" block: literal text, placeholders as their values' form."""
    text = _template("job.sbatch")
    lines = text[text.index(_BLOCK_BEGIN) + len(_BLOCK_BEGIN):text.index("@@{common}")].splitlines()
    out = []
    for line in lines:
        code = line.split("  #", 1)[0].strip()  # the template's comments follow two spaces
        if not code:
            continue
        parts = re.split(r"@@\{(\w+)\}", code)
        rx = "".join(re.escape(p) if i % 2 == 0 else f"(?:{_PLACEHOLDER_PATTERNS.get(p, LITERAL_WORD)})"
                     for i, p in enumerate(parts))
        out.append(re.compile(rx + r"(?:\s+#.*)?"))
    return out


def shell_words(text: str) -> list[str]:
    """Split shell text into words as written (quotes kept): whitespace outside quotes, ${...} and $(...)
    separates words; a backslash-newline continues the line. Enough to judge words, not a full shell parser."""
    words: list[str] = []
    cur = ""
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in " \t\n":
            if cur:
                words.append(cur)
                cur = ""
            i += 1
        elif c == "\\":
            if text.startswith("\\\n", i):
                i += 2
            else:
                cur += text[i:i + 2]
                i += 2
        elif c == "'":
            j = text.find("'", i + 1)
            j = n - 1 if j < 0 else j
            cur += text[i:j + 1]
            i = j + 1
        elif c == '"' or text.startswith("${", i) or text.startswith("$(", i):
            j = _closing(text, i)
            cur += text[i:j + 1]
            i = j + 1
        else:
            cur += c
            i += 1
    if cur:
        words.append(cur)
    return words


def _closing(text: str, i: int) -> int:
    """Index of what closes the double quote, ${ or $( that starts at ``i`` (nesting and quotes inside)."""
    closer = '"' if text[i] == '"' else ("}" if text[i + 1] == "{" else ")")
    j = i + (1 if closer == '"' else 2)
    while j < len(text):
        c = text[j]
        if c == "\\":
            j += 2
            continue
        if c == closer:
            return j
        if c == "'" and closer != '"':
            k = text.find("'", j + 1)
            j = len(text) if k < 0 else k + 1
            continue
        if c == '"' and closer != '"' or text.startswith("${", j) or text.startswith("$(", j):
            j = _closing(text, j) + 1
            continue
        j += 1
    return len(text) - 1


def _check_injection(rep: CheckReport, text: str, rendered: bool) -> None:
    lines = text.split("\n")
    for no, line in enumerate(lines, 1):
        m = re.search("[\x00-\x08\x0b-\x1f\x7f]", line)
        if m:
            rep.errors.append(f"line {no} holds the control character {m.group()!r}: job scripts are plain text "
                              "(a carriage return means Windows line endings: convert with dos2unix)")
    sbatch_lines = [no for no, line in enumerate(lines, 1) if re.match(r"\s*#SBATCH\b", line)]
    if sbatch_lines:
        for no in range(2, sbatch_lines[-1]):
            if _is_code(lines[no - 1]):
                rep.errors.append(f"line {no} ({lines[no - 1].strip()[:80]!r}) is a command among the #SBATCH lines: "
                                  "sbatch stops reading #SBATCH options at the first command, so the ones after it "
                                  "are ignored, and bash runs it; in a rendered script it can only come from a value "
                                  "with a newline. Re-render the script (or move the command below the #SBATCH lines)")
                break
    for no in sbatch_lines:
        m = re.match(r"\s*#SBATCH\s+--([A-Za-z][A-Za-z0-9-]*)(?:[= ]\s*(.*?))?\s*$", lines[no - 1])
        if m and m.group(2) is not None:
            problem = sbatch_value_problem(m.group(1), m.group(2))
            if problem:
                rep.errors.append(f"line {no}: #SBATCH {problem}")
    if not rendered:
        return
    try:
        first = next(no for no, line in enumerate(lines, 1) if line.strip() == "set -eo pipefail")
    except StopIteration:
        first = len(lines) + 1
    for no in range(2, first):
        if _is_code(lines[no - 1]) and not re.match(r"\s*#", lines[no - 1]):
            rep.errors.append(f"line {no} ({lines[no - 1].strip()[:80]!r}) is a command before `set -eo pipefail`, "
                              "where medret's template has only #SBATCH lines and comments: a value with a newline "
                              "was rendered into the script, or it was edited. Re-render it")
            break
    begin = [no for no, line in enumerate(lines, 1) if line.startswith(_BLOCK_BEGIN)]
    end = [no for no, line in enumerate(lines, 1) if line.startswith(_BLOCK_END)]
    if not begin or not end or end[0] < begin[0]:
        rep.errors.append("the script has no \"this job\" block between its '# ---- this job' and '# ---- helpers' "
                          "lines: it is not a script medret rendered, or it was edited; re-render it")
    else:
        patterns = _block_patterns()
        for no in range(begin[0] + 1, end[0]):
            line = lines[no - 1]
            if _is_code(line) and not any(p.fullmatch(line.strip()) for p in patterns):
                rep.errors.append(f"line {no} ({line.strip()[:80]!r}) is not in the form medret renders: the job "
                                  "block holds plain values only (a quoted word, a number, a GPU list); an "
                                  "unquoted $(...), `...` or ; would run when the script starts. Re-render it")
    for name, m in (("training", re.search(r"TRAIN_CMD=\((.*?)\n\s*\)", text, re.S)),
                    ("smoke", re.search(r"SMOKE_CMD=\((.*?)\)\s*\n\}", text, re.S))):
        if not m:
            continue
        cmd_lines = [line for line in m.group(1).strip("\n").split("\n")]
        if name == "smoke" and len(cmd_lines) > 1:
            rep.errors.append("the smoke command spans several lines; medret renders it on one: a value with a "
                              "newline was rendered into it, or it was edited. Re-render the script")
        for line in cmd_lines[:-1]:
            if name == "training" and not line.rstrip().endswith(" \\"):
                rep.errors.append(f"the training command's line {line.strip()[:80]!r} does not end with ' \\' as "
                                  "every line of it but the last does when medret renders it: a value with a newline "
                                  "was rendered into it, or it was edited. Re-render the script")
                break
        for w in shell_words(m.group(1)):
            if w not in TEMPLATE_WORDS and not _LITERAL_RE.fullmatch(w):
                rep.errors.append(f"the {name} command holds the word {w[:80]!r}, which is neither a plain value "
                                  "(quoted, no $ or `) nor one of medret's template words: it would be expanded or "
                                  "run by bash. Re-render the script")
