"""Rendering a job script: the packaged shell templates filled with the job's values, its training command, and
its retriever processes (written by :mod:`medret.launch.retriever` from the job's one retriever configuration).

Every user value reaches the script quoted (``shlex.quote``, and hydra's own quoting for hydra values); values
known only at run time (paths from the environment) are quoted for hydra by the script itself.
"""
from __future__ import annotations

import json
import shlex
from importlib import resources
from string import Template

from medret.launch import recipes
from medret.launch.plan import Plan, plan_job
from medret.launch.retriever import (
    HYDRA_PREFIX,
    device_default,
    hydra_variables,
    retriever_command,
    smoke_command,
    template_words,
    trainer_block,
)
from medret.launch.spec import JobSpec, python_words, sbatch_fields

SPEC_BEGIN = "# medret-job-spec-begin"
SPEC_END = "# medret-job-spec-end"
RAY_RESOURCE = "medret_retriever"

# Words of the rendered commands that expand variables: written by the templates and the writers, never from a user
# value. Any other word of those commands must be a plain literal (`slurm check` enforces it).
_DATA_WORDS = {
    f'data.train_files="${HYDRA_PREFIX}TRAIN_PATH"', f'data.val_files="${HYDRA_PREFIX}VAL_PATH"',
    f'actor_rollout_ref.model.path="${HYDRA_PREFIX}MODEL"', f'critic.model.path="${HYDRA_PREFIX}MODEL"',
}
# what medret rendered before (issues 14, 21): scripts rendered then still pass `slurm check`
_EARLIER_WORDS = {
    'data.train_files="$TRAIN_PATH"', 'data.val_files="$VAL_PATH"',
    'data.train_files="$DATA_DIR/train.parquet"', 'data.val_files="$DATA_DIR/test.parquet"',
    'actor_rollout_ref.model.path="$MODEL"', 'critic.model.path="$MODEL"', '+retriever.gpu_id="$RETRIEVER_GPU"',
    '${MEDRET_DB_DIR:+"+retriever.db_dir=$MEDRET_DB_DIR"}', 'retriever.url="$RETRIEVER_URL/retrieve"',
    '+retriever.ray_address="$RAY_ADDRESS"', '+retriever.ray_job="$MEDRET_RAY_JOB"', '"${MEDRET[@]}"',
    '${MEDRET_DB_DIR:+--db-dir "$MEDRET_DB_DIR"}', '"$RETRIEVER_URL/retrieve"',
}
TEMPLATE_WORDS = frozenset(_DATA_WORDS | _EARLIER_WORDS | template_words()) \
    | {f'"{k}=${{{k}:-{v}}}"' for k, v in recipes.ENV}  # a recipe's environment, unless the job's has it


class _Tmpl(Template):
    """``@@{name}`` placeholders: bash never writes ``@@``, so ``${VAR}`` in templates stays untouched."""

    delimiter = "@@"


def template(name: str) -> str:
    return resources.files("medret.launch").joinpath("templates", name).read_text(encoding="utf-8")


def _q(s: str) -> str:
    return shlex.quote(s)


# The keys of the training command in the order medret writes them without a recipe (with one: the recipe's order)
_BARE_ORDER = ("data.train_files", "data.val_files", "actor_rollout_ref.model.path", "critic.model.path",
               "actor_rollout_ref.rollout.tensor_model_parallel_size", "trainer.n_gpus_per_node", "trainer.nnodes",
               "max_turns", "retriever.url", "retriever.topk")


def _medret_words(spec: JobSpec, plan: Plan) -> dict[str, list[str]]:
    """What medret writes for each key it sets (recipes.SET_BY_MEDRET): the words of the training command."""
    return {
        "data.train_files": [f'data.train_files="${HYDRA_PREFIX}TRAIN_PATH"'],
        "data.val_files": [f'data.val_files="${HYDRA_PREFIX}VAL_PATH"'],
        "actor_rollout_ref.model.path": [f'actor_rollout_ref.model.path="${HYDRA_PREFIX}MODEL"'],
        "critic.model.path": [f'critic.model.path="${HYDRA_PREFIX}MODEL"'],
        "actor_rollout_ref.rollout.tensor_model_parallel_size":
            [f"actor_rollout_ref.rollout.tensor_model_parallel_size={plan.tensor_parallel}"],
        "trainer.n_gpus_per_node": [f"trainer.n_gpus_per_node={len(plan.train_gpus)}"],
        "trainer.nnodes": [f"trainer.nnodes={plan.train_nodes}"],
        "max_turns": [f"max_turns={spec.max_turns}"],
        "retriever.topk": [f"retriever.topk={spec.topk}"],
        # where Search-R1's scripts pass retriever.url, the layout's way to the retriever
        "retriever.url": trainer_block(spec, plan),
    }


def _trainer_command(spec: JobSpec, plan: Plan) -> str:
    """The training command as bash text (uses the script's hydra-quoted $HQ_* values).

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


def render_job(spec: JobSpec) -> str:
    """The sbatch script for ``spec`` (raises ConfigError on an impossible GPU split)."""
    plan = plan_job(spec)
    sb = [f"#SBATCH --nodes={plan.nodes}", "#SBATCH --ntasks-per-node=1", f"#SBATCH --gres=gpu:{plan.gpus_per_node}"]
    for name, sbatch_option in sbatch_fields().items():  # the job options declared as #SBATCH values
        v = getattr(spec, name)
        if v is not None:
            sb.append(f"#SBATCH --{sbatch_option}={v}")
    for extra in spec.sbatch_extra:  # checked by JobSpec: one --option[=value] with a valid value
        sb.append(f"#SBATCH {extra.strip()}")
    header = plan.header(spec)
    values = {
        "sbatch": "\n".join(sb),
        "spec_begin": SPEC_BEGIN, "spec_end": SPEC_END,
        "spec_json": json.dumps(header, sort_keys=True),
        "layout": plan.layout, "nodes": str(plan.nodes), "gpus_per_node": str(plan.gpus_per_node),
        "train_gpus": ",".join(map(str, plan.train_gpus)),
        "retriever_gpus": ",".join(map(str, plan.retriever_gpus)),
        "n_train_gpus": str(len(plan.train_gpus)),
        "retriever_device": device_default(spec, plan),
        "retriever_node": "" if plan.retriever_node is None else str(plan.retriever_node),
        "shards": str(plan.shards),
        "corpus": _q(spec.corpus), "retriever": _q(spec.retriever),
        "db_dir": _q(spec.db_dir or ""),
        "model": _q(spec.model), "data_dir": _q(spec.data_dir),
        "train_file": _q(spec.train_file), "val_file": _q(spec.val_file),
        "health_timeout": str(spec.health_timeout),
        "paths_on_compute_nodes": "1" if spec.paths_on_compute_nodes else "0",
        "mode": header["mode"],
        "ray_resource": RAY_RESOURCE,
        "notes": "\n".join(f"# note: {n}" for n in plan.notes),
    }
    values["layout_body"] = _Tmpl(template(f"{plan.layout}.sh")).substitute(values)
    values["train_command"] = _trainer_command(spec, plan)
    values["smoke_command"] = " ".join(smoke_command(spec, plan))
    values["retriever_command"] = " ".join(retriever_command(spec, plan))
    values["hydra_variables"] = " ".join(hydra_variables())
    values["common"] = template("common.sh")
    return _Tmpl(template("job.sbatch")).substitute(values)
