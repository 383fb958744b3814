"""The job spec: what a SLURM job runs, each of its own options declared once (:func:`medret.options.option`), and
the retriever's configuration held as the declared :class:`medret.config.EngineOptions` that ``get_retriever``,
``medret serve`` and ``medret ray up`` use.

From these declarations come ``medret slurm render``'s flags (``add_flags``), the ``--config`` YAML keys
(:meth:`JobSpec.from_mapping`), the help with its defaults, the checks, and the names in messages
(``time (--time)=...``). Adding an option to ``EngineOptions`` makes it a job flag and YAML key with no edit here.
"""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from medret import options
from medret.config import DEFAULT_TOPK, EngineOptions
from medret.errors import ConfigError
from medret.options import Options, option
from medret.validate import check_string, check_whole

LAYOUTS = ("local", "per-node", "retriever-node")
MODES = ("train", "smoke")
RECIPES = ("none", "ppo", "grpo")
#: the retriever a job searches unless told otherwise (EngineOptions' own defaults are the sample corpus and BM25)
RETRIEVER_DEFAULTS: dict[str, Any] = {"corpus_name": "MedCorp", "retriever_name": "MedCPT"}
_SAFE_NAME = re.compile(r"[A-Za-z0-9._+-]+")  # used with fullmatch ("$" would let a trailing newline through)
# Newlines and other control characters (C0, DEL, NEL and the Unicode line/paragraph separators) are refused in
# every field: in a script a newline ends a comment or an #SBATCH line and starts a command.
_CONTROL = re.compile("[\x00-\x1f\x7f\x85\u2028\u2029]")
# Characters that only mean something to a shell; refused in the words of `python` (an interpreter and its
# arguments, not shell code)
_SHELL_META = re.compile(r"[$`;|&<>(){}\\!*?\[\]#~'\"]")

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
SBATCH = "SLURM"
CLUSTER = "cluster shape"
TRAINER = "trainer"


def sbatch_value_problem(sbatch_option: str, value: str) -> str | None:
    """Why ``value`` is not a valid value of ``#SBATCH --option`` (None when it is)."""
    pattern, what = SBATCH_VALUES.get(sbatch_option, _SBATCH_GENERIC)
    if re.fullmatch(pattern, value):
        return None
    return f"--{sbatch_option}={value!r} is not a valid value: give {what}"


def _sbatch(sbatch_option: str) -> Any:
    """The check of a field that becomes ``#SBATCH --sbatch_option=VALUE``."""
    def run(name: str, value: Any) -> None:
        check_string(name, value)
        if value is not None:
            problem = sbatch_value_problem(sbatch_option, value)
            if problem:
                raise ConfigError(f"{field_name(name)}={value!r} is invalid: #SBATCH {problem}")
    run.sbatch = sbatch_option  # type: ignore[attr-defined]
    return run


def _sbatch_count(sbatch_option: str) -> Any:
    """The check of a whole-number field that becomes ``#SBATCH --sbatch_option=N`` (None: not written)."""
    def run(name: str, value: Any) -> None:
        check_whole.optional("the cluster's")(name, value)
    run.sbatch = sbatch_option  # type: ignore[attr-defined]
    return run


def _gpu_text(name: str, value: Any) -> None:
    if value is not None:
        parse_gpu_list(value, name)


def _strings(name: str, value: Any) -> None:
    if not isinstance(value, tuple) or not all(isinstance(x, str) for x in value):
        raise ConfigError(f"{field_name(name)}={value!r} is invalid: give a list of strings")


def _text(name: str, value: Any) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{field_name(name)}={value!r} is invalid: give a non-empty string")


@dataclass(frozen=True)
class JobSpec(Options):
    """What to run: the cluster shape, the retriever, the trainer. Build it with :meth:`from_mapping`."""

    layout: str = option("local", "where the retriever runs: local (in the trainer process, one node), per-node (a "
                         "`medret serve` on every node), retriever-node (Ray actors on one node; see `medret plan`)",
                         choices=LAYOUTS, group=CLUSTER)
    nodes: int = option(1, "SLURM nodes", check=check_whole, group=CLUSTER)
    gpus_per_node: int = option(4, "GPUs on each node", check=check_whole, group=CLUSTER)
    # indices (0..gpus_per_node-1) of the GPUs that retrieve; None = the layout's default; "none" = CPU retriever
    retriever_gpus: str | None = option(None, "GPU index/indices that retrieve, e.g. 3 or 2,3; 'none' = CPU "
                                        "(default: the last GPU; retriever-node with >=2 nodes: all GPUs of the last "
                                        "node)", kind=str, check=_gpu_text, digits=True, group=CLUSTER)
    tensor_parallel: int = option(1, "vLLM rollout tensor-parallel size; must divide the training GPUs per node",
                                  aliases=("--tp",), check=check_whole, group=CLUSTER)
    topk: int = option(DEFAULT_TOPK, "passages per query", check=check_whole, group=CLUSTER)
    shards: int = option(1, "retriever-node: shard a dense index over this many retriever GPUs", check=check_whole,
                         group=CLUSTER)
    # SLURM resources
    job_name: str = option("medret-train", "#SBATCH --job-name", check=_sbatch("job-name"), group=SBATCH)
    partition: str | None = option(None, "#SBATCH --partition (default: the cluster's)", kind=str,
                                   check=_sbatch("partition"), group=SBATCH)
    account: str | None = option(None, "#SBATCH --account (default: the cluster's)", kind=str,
                                 check=_sbatch("account"), group=SBATCH)
    qos: str | None = option(None, "#SBATCH --qos (default: the cluster's)", kind=str, check=_sbatch("qos"),
                             group=SBATCH)
    time: str = option("24:00:00", "#SBATCH --time limit, e.g. 2-00:00:00", check=_sbatch("time"), group=SBATCH)
    mem: str | None = option(None, "#SBATCH --mem per node, e.g. 500G (default: the cluster's)", kind=str,
                             check=_sbatch("mem"), group=SBATCH)
    cpus_per_task: int | None = option(None, "#SBATCH --cpus-per-task (default: the cluster's)", kind=int,
                                       check=_sbatch_count("cpus-per-task"), group=SBATCH)
    output: str = option("%x-%j.out", "#SBATCH --output pattern", flag="--log", check=_sbatch("output"),
                         group=SBATCH)
    sbatch_extra: tuple[str, ...] = option((), "another #SBATCH option, e.g. --exclusive", kind=tuple,
                                           check=_strings, group=SBATCH)
    # trainer
    model: str = option("Qwen/Qwen2.5-7B", "the policy model: hub id or folder", check=_text, group=TRAINER)
    data_dir: str = option("data/nq_search", "folder of the training data files", check=_text, group=TRAINER)
    # data.train_files / data.val_files: relative to data_dir unless absolute. val.parquet is what `medret kare
    # prepare` writes for validation (Search-R1's NQ scripts validate on test.parquet: val_file="test.parquet")
    train_file: str = option("train.parquet", "data.train_files, relative to --data-dir unless absolute",
                             check=_text, group=TRAINER)
    val_file: str = option("val.parquet", "data.val_files, relative to --data-dir unless absolute (`medret kare "
                           "prepare` writes val.parquet; Search-R1's NQ data: test.parquet)", check=_text,
                           group=TRAINER)
    # Search-R1's hyper-parameters: none (only the keys medret sets), ppo (train_ppo.sh) or grpo (train_grpo.sh)
    recipe: str = option("none", "Search-R1's hyper-parameters: ppo (train_ppo.sh) or grpo (train_grpo.sh), every "
                         "key of the script, --override to change one; none: only the keys medret sets",
                         choices=RECIPES, group=TRAINER)
    max_turns: int = option(2, "search turns per rollout (Search-R1's max_turns)", check=check_whole, group=TRAINER)
    overrides: tuple[str, ...] = option((), "hydra override key=value; replaces a recipe key in place", kind=tuple,
                                        flag="--override", check=_strings, group=TRAINER)
    train_cmd: str | None = option(None, "run this shell command instead of Search-R1's trainer", kind=str,
                                   check=check_string, group=TRAINER)
    mode: str = option("train", "train, or smoke: `medret rollout-smoke` on every trainer node instead of training "
                       "(CPU tests; --smoke)", choices=MODES, group=TRAINER)
    smoke_turns: int = option(2, "search turns of the smoke rollout", check=check_whole, group=TRAINER)
    health_timeout: int = option(900, "seconds to wait for the retriever", check=check_whole, group=TRAINER)
    python: str = option("python3", "python of the training environment", check=_text, group=TRAINER)
    paths_on_compute_nodes: bool = option(False, "the data folder, model and db dir exist only on the compute nodes: "
                                          "`slurm check`, the dry run and `doctor --sbatch` leave them to the job, "
                                          "which checks them on its first node before starting Ray or the retriever",
                                          group=TRAINER)
    # the retriever every process of the job runs (serve, ray up, the smoke run, the trainer's +retriever.* block)
    engine: EngineOptions = field(default_factory=lambda: EngineOptions(**RETRIEVER_DEFAULTS))

    def __post_init__(self) -> None:
        super().__post_init__()
        for f in fields(self):  # newlines and control characters, in every text of the job
            value = getattr(self, f.name)
            if f.name == "engine":
                for name, v in value.to_dict().items():
                    if isinstance(v, str):
                        no_control(name, v)
                continue
            for item in value if isinstance(value, tuple) else (value,):
                if isinstance(item, str):
                    no_control(f.name, item)
        _check_sbatch_extra(self.sbatch_extra)
        python_words(self.python)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_mapping(cls, block: Mapping[str, Any] | Any, **overrides: Any) -> "JobSpec":
        """From a dict (flags or YAML): the job's own options and the retriever's (any spelling EngineOptions
        accepts: ``corpus`` / ``corpus_name``). Unknown keys are refused with the list of valid ones."""
        data = {str(k).replace("-", "_"): v for k, v in {**options.plain_dict(block), **overrides}.items()}
        own = options.declarations(cls)
        engine_keys = _accepted(EngineOptions)
        unknown = sorted(set(data) - set(own) - engine_keys - {"engine"})
        if unknown:
            raise ConfigError(f"unknown job option(s) {unknown}: valid options are "
                              f"{sorted(set(own) | set(options.declarations(EngineOptions)))}")
        engine = data.pop("engine", None)
        given = {k: data.pop(k) for k in list(data) if k in engine_keys and k not in own}
        if engine is None:  # checked as the retriever checks them (kinds, choices, --like names)
            engine = EngineOptions.from_mapping({**RETRIEVER_DEFAULTS, **options.normalize(EngineOptions, given)})
        job = options.normalize(cls, data)
        gpus = job.get("retriever_gpus")
        if isinstance(gpus, (list, tuple)) and all(isinstance(g, int) and not isinstance(g, bool)
                                                   or isinstance(g, str) and g.strip().isdigit() for g in gpus):
            job["retriever_gpus"] = ",".join(map(str, gpus)) or "none"  # a YAML list of GPU indices
        return cls(**job, engine=engine)

    def to_dict(self) -> dict[str, Any]:
        """Every option of the job and of its retriever (flat, lists for tuples): a mapping :meth:`from_mapping`
        reads back."""
        d: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "engine"}
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        d.update(self.engine.to_dict())
        return d

    # the retriever's names, as the header and the messages show them
    @property
    def corpus(self) -> str:
        return self.engine.corpus_name

    @property
    def retriever(self) -> str:
        return self.engine.retriever_name

    @property
    def db_dir(self) -> str | None:
        return self.engine.db_dir

    @property
    def gpus(self) -> tuple[int, ...] | None:
        """``retriever_gpus`` as GPU indices (None: the layout's default; (): CPU)."""
        return None if self.retriever_gpus is None else parse_gpu_list(self.retriever_gpus)


def _accepted(cls: type) -> set[str]:
    """Every key ``cls.from_mapping`` accepts for an option: the field names and their other spellings."""
    return {key for name, d in options.declarations(cls).items() for key in (name, *d.keys)}


def field_name(name: str) -> str:
    """``name (--flag)`` of a job or retriever option, for messages."""
    for cls in (JobSpec, EngineOptions):
        decl = options.declarations(cls).get(name)
        if decl is not None and decl.flags:
            return f"{name} ({decl.flags[0]})"
    return name


def no_control(name: str, v: str) -> None:
    m = _CONTROL.search(v)
    if m:
        raise ConfigError(f"{field_name(name)}={v!r} is invalid: it holds a control character ({m.group()!r} at "
                          f"position {m.start()}); a newline would end its line of the job script and run the rest "
                          "as a command. Give the value on one line")


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
        if isinstance(it, bool) or not (isinstance(it, int) or isinstance(it, str) and it.isdigit()):
            raise ConfigError(f"{name}={value!r} is invalid: {it!r} is not a GPU index; give e.g. '3' or '2,3', "
                              "or 'none' for a CPU retriever")
        out.append(int(it))
    return tuple(out)


def python_words(python: str) -> list[str]:
    """The ``python`` option as argv words (an interpreter and its arguments), each refused if it is shell code."""
    try:
        words = shlex.split(python)
    except ValueError as e:
        raise ConfigError(f"{field_name('python')}={python!r} is invalid: {e}; give an interpreter and its "
                          "arguments, e.g. python3 or '/opt/env/bin/python -X faulthandler'") from None
    if not words:
        raise ConfigError(f"{field_name('python')}={python!r} is empty: give an interpreter, e.g. python3")
    for w in words:
        m = _SHELL_META.search(w)
        if m:
            raise ConfigError(f"{field_name('python')}={python!r} is invalid: {w!r} holds {m.group()!r}, which only "
                              "a shell gives meaning to; give the interpreter and its arguments (no $(...), ;, |, "
                              "quotes), e.g. /opt/env/bin/python. Each word reaches the script quoted")
    return words


def sbatch_fields() -> dict[str, str]:
    """JobSpec field -> the #SBATCH option it becomes (from the fields' checks)."""
    return {name: d.check.sbatch for name, d in options.declarations(JobSpec).items()  # type: ignore[union-attr]
            if hasattr(d.check, "sbatch")}


def _check_sbatch_extra(extras: tuple[str, ...]) -> None:
    rendered = {"nodes", "ntasks-per-node", "gres", *sbatch_fields().values()}
    for extra in extras:
        m = re.fullmatch(r"--([a-z][a-z0-9-]*)(?:=(.*))?", extra.strip())
        if not m:
            raise ConfigError(f"{field_name('sbatch_extra')} entry {extra!r} is invalid: give one sbatch option "
                              "such as '--exclusive' or '--constraint=a100'")
        if m.group(1) in rendered:
            raise ConfigError(f"{field_name('sbatch_extra')} entry {extra!r} sets --{m.group(1)}, which medret "
                              "writes itself: use the job option for it instead")
        if m.group(2) is not None:
            problem = sbatch_value_problem(m.group(1), m.group(2))
            if problem:
                raise ConfigError(f"{field_name('sbatch_extra')} entry {extra!r} is invalid: {problem}")


def safe_name(name: str, value: str, folder: bool) -> None:
    """A corpus / retriever / job name: letters, digits and . _ + -, or (``folder``) a path without quotes."""
    if not value or not _SAFE_NAME.fullmatch(value) and not (folder and "/" in value
                                                              and not any(c in value for c in " '\"$`\\")):
        raise ConfigError(f"{field_name(name)}={value!r} is invalid: use letters, digits and . _ + - only (e.g. "
                          "MedCorp, MedCPT)" + (", or a folder path without spaces or quotes" if folder else ""))
