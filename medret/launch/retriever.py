"""The job's one retriever configuration, and one writer per form its processes take.

Every retriever process of a job -- ``medret serve`` on each node (per-node), ``medret ray up`` (retriever-node),
the smoke run, and the trainer's ``+retriever.*`` hydra block -- is written here from the job's
:class:`~medret.config.EngineOptions` (and, for Ray, a :class:`~medret.config.RayOptions` the layout fills in):

* :func:`argv_words` -- command-line words, through :func:`medret.options.argv`;
* :func:`hydra_words` -- ``+retriever.NAME=VALUE`` overrides, each value quoted so that hydra reads back exactly it.

A few options are the script's to decide at run time (:data:`RUNTIME`: the device, ``MEDRET_DB_DIR``, the job's Ray
address and id); they are written as the same shell variable into every form, so ``MEDRET_RETRIEVER_DEVICE=cpu`` at
submit time reaches ``ray up`` and the trainer alike. So the Ray actor name the trainer and the smoke run compute
(:func:`medret.transports.ray.actor_base_name`) is by construction the one ``ray up`` created; they attach to it
(``ray_attach``) and never create one.
"""
from __future__ import annotations

import re
import shlex
from typing import TYPE_CHECKING, Any

from medret import options
from medret.config import EngineOptions, RayOptions
from medret.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from medret.launch.plan import Plan
    from medret.launch.spec import JobSpec

#: option -> (the script's shell variable, written only when the variable is set)
RUNTIME: dict[str, tuple[str, bool]] = {
    "device": ("RETRIEVER_DEVICE", False),
    "db_dir": ("MEDRET_DB_DIR", True),
    "gpu_id": ("RETRIEVER_GPU", False),  # local layout: the physical id of the retriever's GPU index on this node
    "ray_address": ("RAY_ADDRESS", False),
    "ray_job": ("MEDRET_RAY_JOB", False),
}
#: the job option that sets each of them
RUNTIME_SET_BY = {"device": "--device (or MEDRET_RETRIEVER_DEVICE at submit time)",
                  "db_dir": "--db-dir (or MEDRET_DB_DIR at submit time)", "gpu_id": "--retriever-gpus",
                  "ray_address": "--layout (the job's Ray cluster)", "ray_job": "--layout (the SLURM job id)"}
#: the device a job's retriever may be given (the GPU is chosen by retriever_gpus)
JOB_DEVICES = ("cpu", "cuda")
BACKEND = {"local": "local", "per-node": "http", "retriever-node": "ray"}
HYDRA_PREFIX = "HQ_"  # HQ_NAME: the value of $NAME quoted for hydra (medret_hydra_quote in common.sh)
# what the serve / ray-up / smoke commands begin with (template words, never a user value)
MEDRET = '"${MEDRET[@]}"'


def q(word: str) -> str:
    return shlex.quote(word)


def hydra_literal(value: Any) -> str:
    """A value as a hydra override writes it: true/false, a number, else a quoted string that hydra reads back as
    exactly this text (backslashes before a quote or at the end doubled, quotes escaped, ``${`` not interpolated).
    ``medret_hydra_quote`` in templates/common.sh does the same for values known only at run time."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    text = re.sub(r"(\\+)(?='|$)", lambda m: m.group(1) * 2, str(value))
    return "'" + text.replace("'", "\\'").replace("${", "\\${") + "'"


# ------------------------------------------------------------------------------------------------ the configuration


def ray_options(spec: JobSpec, attach: bool) -> RayOptions:
    """The Ray transport's options of a retriever-node job: on the retriever node, sharded as the job says;
    ``attach``: find the actor ``ray up`` made, never make one (the trainer's side)."""
    return RayOptions(ray_placement="retriever-node", ray_shards=spec.shards, ray_attach=attach)


def device_default(spec: JobSpec, plan: Plan) -> str:
    """The retriever's device unless MEDRET_RETRIEVER_DEVICE says otherwise at run time."""
    return spec.engine.device or plan.retriever_device


def check_retriever(spec: JobSpec, plan: Plan) -> None:
    """What the job cannot pass on to its retriever processes, refused with the fix."""
    engine = spec.engine
    if engine.gpu_id is not None:
        raise ConfigError(f"gpu_id (--gpu-id)={engine.gpu_id!r} is invalid in a job: the job maps retriever_gpus "
                          "(indices into a node's GPUs) to GPU ids at run time; give --retriever-gpus "
                          f"{engine.gpu_id} instead")
    if engine.device is not None and engine.device not in JOB_DEVICES:
        raise ConfigError(f"device (--device)={engine.device!r} is invalid in a job: give cpu or cuda (the GPU is "
                          "chosen by --retriever-gpus)")
    if engine.device == "cuda" and not plan.retriever_gpus:
        raise ConfigError("device (--device)='cuda' is invalid with retriever_gpus=none (the retriever has no GPU): "
                          "give --retriever-gpus, or --device cpu")
    needs_argv = plan.layout != "local" or spec.mode == "smoke"
    if needs_argv:
        decls = options.declarations(EngineOptions)
        defaults = options.defaults(EngineOptions)
        for name, value in engine.to_dict().items():
            if not decls[name].flags and value != defaults.get(name):
                raise ConfigError(f"{name}={value!r} cannot reach this job's retriever processes (`medret serve`, "
                                  f"`medret ray up`, the smoke run): {name} has no command-line flag. Leave it at "
                                  f"its default ({defaults.get(name)!r}), or use layout=local in train mode (the "
                                  "trainer's +retriever block carries it)")


# ------------------------------------------------------------------------------------------------ the writers


def _runtime(obj: Any) -> list[tuple[str, str, bool]]:
    """(option, shell variable, optional) of ``obj``'s options that the script fills in."""
    decls = options.declarations(type(obj))
    return [(name, var, opt) for name, (var, opt) in RUNTIME.items() if name in decls]


def argv_words(*objs: Any, runtime: tuple[str, ...] = ("device", "db_dir", "ray_address", "ray_job")) -> list[str]:
    """Shell words giving each object's options to a medret command: literal flags (quoted) for the options that
    differ from their defaults, then the ``runtime`` options from the script's variables."""
    words: list[str] = []
    for obj in objs:
        words += [q(w) for w in options.argv(obj, exclude=RUNTIME)]
    for obj in objs:
        decls = options.declarations(type(obj))
        for name, var, optional in _runtime(obj):
            if name in runtime:
                word = f'{decls[name].flags[0]}="${var}"'
                words.append(f"${{{var}:+{word}}}" if optional else word)
    return words


def hydra_words(*objs: Any, runtime: tuple[str, ...] = ("device", "db_dir", "ray_address", "ray_job")) -> list[str]:
    """``+retriever.NAME=VALUE`` words for each object's options that differ from their defaults (values quoted for
    hydra, then for the shell), then the ``runtime`` options from the script's hydra-quoted variables."""
    words: list[str] = []
    for obj in objs:
        dflt = options.defaults(type(obj))
        for name, value in obj.to_dict().items():
            if name in RUNTIME or value is None or value == dflt.get(name):
                continue
            words.append(q(f"+retriever.{name}={hydra_literal(value)}"))
    for obj in objs:
        for name, var, optional in _runtime(obj):
            if name in runtime:
                word = f'+retriever.{name}=${HYDRA_PREFIX}{var}'
                words.append(f'${{{var}:+"{word}"}}' if optional else f'"{word}"')
    return words


def retriever_command(spec: JobSpec, plan: Plan) -> list[str]:
    """The layout's retriever process: ``medret serve`` (per-node; the template adds host, port and address file),
    ``medret ray up`` (retriever-node, waiting up to the health timeout), nothing (local)."""
    if plan.layout == "per-node":
        return [MEDRET, "serve", *argv_words(spec.engine)]
    if plan.layout == "retriever-node":
        return [MEDRET, "ray", "up", *argv_words(spec.engine, ray_options(spec, attach=False)),
                '--timeout="$HEALTH_TIMEOUT"']
    return []


def smoke_command(spec: JobSpec, plan: Plan) -> list[str]:
    """``medret rollout-smoke`` as the layout's trainer would search: in process (local), through this node's
    server (per-node), attached to the job's actor (retriever-node)."""
    backend = BACKEND[plan.layout]
    words = [MEDRET, "rollout-smoke", f"--backend={backend}", f"--turns={spec.smoke_turns}", f"--topk={spec.topk}"]
    if backend == "http":
        return [*words, '--url="$RETRIEVER_URL/retrieve"']
    if backend == "ray":
        return [*words, *argv_words(spec.engine, ray_options(spec, attach=True))]
    return [*words, *argv_words(spec.engine)]


def trainer_block(spec: JobSpec, plan: Plan) -> list[str]:
    """The trainer's retriever, where Search-R1's scripts pass retriever.url: this node's server (per-node), else a
    ``+retriever.*`` block: in process on the retriever GPU (local), attached to the job's actor (retriever-node)."""
    if plan.layout == "per-node":
        return [f'retriever.url="${HYDRA_PREFIX}RETRIEVER_ENDPOINT"']
    words = [f"+retriever.backend={BACKEND[plan.layout]}"]
    if plan.layout == "retriever-node":
        return [*words, *hydra_words(spec.engine, ray_options(spec, attach=True))]
    runtime = ("device", "db_dir") + (("gpu_id",) if plan.retriever_gpus else ())
    return [*words, *hydra_words(spec.engine, runtime=runtime)]


def hydra_variables() -> tuple[str, ...]:
    """The script variables the trainer's command reads hydra-quoted (``$HQ_<name>``)."""
    return ("TRAIN_PATH", "VAL_PATH", "MODEL", "RETRIEVER_ENDPOINT", *(var for var, _ in RUNTIME.values()))


def template_words() -> frozenset[str]:
    """Every word the writers put in a command that expands a variable (`slurm check` allows exactly these)."""
    words = {MEDRET, '--timeout="$HEALTH_TIMEOUT"', '--url="$RETRIEVER_URL/retrieve"',
             f'retriever.url="${HYDRA_PREFIX}RETRIEVER_ENDPOINT"'}
    for name, (var, optional) in RUNTIME.items():
        for cls in (EngineOptions, RayOptions):
            decl = options.declarations(cls).get(name)
            if decl is None:
                continue
            word = f'{decl.flags[0]}="${var}"'
            words.add(f"${{{var}:+{word}}}" if optional else word)
        hydra = f'+retriever.{name}=${HYDRA_PREFIX}{var}'
        words.add(f'${{{var}:+"{hydra}"}}' if optional else f'"{hydra}"')
    return frozenset(words)
