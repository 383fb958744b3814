"""Search-R1's training recipes as data: every hydra key that its ``train_ppo.sh`` / ``train_grpo.sh`` pass to
``verl.trainer.main_ppo``, with the value the trainer receives, and the keys medret sets itself.

``medret slurm render --recipe ppo|grpo`` writes every key of the recipe into the training command; the keys in
:data:`SET_BY_MEDRET` take medret's value instead (the paths and the GPU counts come from the job and its layout),
and ``--override key=value`` replaces a recipe value in place. Values are what hydra receives after bash has read
the scripts (``trainer.logger=['wandb']``, unquoted in the script, reaches hydra as ``[wandb]``).

The batch arithmetic below is Search-R1's veRL: the rollout batch (``data.train_batch_size`` x
``rollout.n_agent`` rows) is split evenly over the training GPUs (``DataProto.chunk`` asserts it), and each
per-GPU batch size (``ppo_mini_batch_size`` and the micro batch sizes) is divided by the number of training GPUs
(``fsdp_workers.py``), so it must be at least that number.
"""
from __future__ import annotations

import re
from typing import Mapping, Sequence

from medret import options
from medret.config import EngineOptions, RetrieverConfig
from medret.errors import ConfigError
from medret.launch.retriever import RUNTIME_SET_BY

RECIPES = ("none", "ppo", "grpo")

# Search-R1's train_ppo.sh, in its order (trainer.default_hdfs_dir=null appears twice there; once here).
PPO: tuple[tuple[str, str], ...] = (
    ("data.train_files", "$DATA_DIR/train.parquet"),
    ("data.val_files", "$DATA_DIR/test.parquet"),
    ("data.train_data_num", "null"),
    ("data.val_data_num", "null"),
    ("data.train_batch_size", "512"),
    ("data.val_batch_size", "256"),
    ("data.max_prompt_length", "4096"),
    ("data.max_response_length", "500"),
    ("data.max_start_length", "2048"),
    ("data.max_obs_length", "500"),
    ("data.shuffle_train_dataloader", "True"),
    ("algorithm.adv_estimator", "gae"),
    ("actor_rollout_ref.model.path", "$BASE_MODEL"),
    ("actor_rollout_ref.actor.optim.lr", "1e-6"),
    ("actor_rollout_ref.model.enable_gradient_checkpointing", "true"),
    ("actor_rollout_ref.model.use_remove_padding", "True"),
    ("actor_rollout_ref.actor.optim.lr_warmup_steps_ratio", "0.285"),
    ("actor_rollout_ref.actor.ppo_mini_batch_size", "256"),
    ("actor_rollout_ref.actor.ppo_micro_batch_size", "64"),
    ("actor_rollout_ref.actor.fsdp_config.param_offload", "true"),
    ("actor_rollout_ref.actor.fsdp_config.grad_offload", "true"),
    ("actor_rollout_ref.actor.fsdp_config.optimizer_offload", "true"),
    ("actor_rollout_ref.rollout.log_prob_micro_batch_size", "128"),
    ("actor_rollout_ref.rollout.tensor_model_parallel_size", "1"),
    ("actor_rollout_ref.rollout.name", "vllm"),
    ("actor_rollout_ref.rollout.gpu_memory_utilization", "0.6"),
    ("actor_rollout_ref.ref.log_prob_micro_batch_size", "128"),
    ("actor_rollout_ref.ref.fsdp_config.param_offload", "True"),
    ("actor_rollout_ref.rollout.n_agent", "1"),
    ("actor_rollout_ref.rollout.temperature", "1"),
    ("actor_rollout_ref.actor.state_masking", "true"),
    ("critic.optim.lr", "1e-5"),
    ("critic.model.use_remove_padding", "True"),
    ("critic.optim.lr_warmup_steps_ratio", "0.015"),
    ("critic.model.path", "$BASE_MODEL"),
    ("critic.model.enable_gradient_checkpointing", "true"),
    ("critic.ppo_micro_batch_size", "8"),
    ("critic.model.fsdp_config.param_offload", "true"),
    ("critic.model.fsdp_config.grad_offload", "true"),
    ("critic.model.fsdp_config.optimizer_offload", "true"),
    ("algorithm.kl_ctrl.kl_coef", "0.001"),
    ("algorithm.no_think_rl", "false"),
    ("trainer.critic_warmup", "0"),
    ("trainer.logger", "[wandb]"),
    ("+trainer.val_only", "false"),
    ("+trainer.val_before_train", "true"),
    ("trainer.default_hdfs_dir", "null"),
    ("trainer.n_gpus_per_node", "8"),
    ("trainer.nnodes", "1"),
    ("trainer.save_freq", "100"),
    ("trainer.test_freq", "50"),
    ("trainer.project_name", "Search-R1"),
    ("trainer.experiment_name", "nq-search-r1-ppo-llama3.2-3b-em"),
    ("trainer.total_epochs", "15"),
    ("trainer.total_training_steps", "1005"),
    ("trainer.default_local_dir", "verl_checkpoints/nq-search-r1-ppo-llama3.2-3b-em"),
    ("max_turns", "2"),
    ("retriever.url", "http://127.0.0.1:8000/retrieve"),
    ("retriever.topk", "3"),
)

# Search-R1's train_grpo.sh, in its order: no critic, KL as a loss, five responses per prompt.
GRPO: tuple[tuple[str, str], ...] = (
    ("data.train_files", "$TRAIN_DATA_DIR/train.parquet"),
    ("data.val_files", "$TEST_DATA_DIR/test.parquet"),
    ("data.train_data_num", "null"),
    ("data.val_data_num", "null"),
    ("data.train_batch_size", "512"),
    ("data.val_batch_size", "256"),
    ("data.max_prompt_length", "4096"),
    ("data.max_response_length", "500"),
    ("data.max_start_length", "2048"),
    ("data.max_obs_length", "500"),
    ("data.shuffle_train_dataloader", "True"),
    ("algorithm.adv_estimator", "grpo"),
    ("actor_rollout_ref.model.path", "$BASE_MODEL"),
    ("actor_rollout_ref.model.enable_gradient_checkpointing", "true"),
    ("actor_rollout_ref.model.use_remove_padding", "True"),
    ("actor_rollout_ref.actor.optim.lr", "1e-6"),
    ("actor_rollout_ref.actor.optim.lr_warmup_steps_ratio", "0.285"),
    ("actor_rollout_ref.actor.use_kl_loss", "true"),
    ("actor_rollout_ref.actor.ppo_mini_batch_size", "256"),
    ("actor_rollout_ref.actor.ppo_micro_batch_size", "64"),
    ("actor_rollout_ref.actor.fsdp_config.param_offload", "true"),
    ("actor_rollout_ref.actor.fsdp_config.grad_offload", "true"),
    ("actor_rollout_ref.actor.fsdp_config.optimizer_offload", "true"),
    ("actor_rollout_ref.rollout.log_prob_micro_batch_size", "128"),
    ("actor_rollout_ref.rollout.tensor_model_parallel_size", "1"),
    ("actor_rollout_ref.rollout.name", "vllm"),
    ("actor_rollout_ref.rollout.gpu_memory_utilization", "0.6"),
    ("actor_rollout_ref.ref.log_prob_micro_batch_size", "128"),
    ("actor_rollout_ref.ref.fsdp_config.param_offload", "True"),
    ("actor_rollout_ref.actor.kl_loss_coef", "0.001"),
    ("actor_rollout_ref.actor.kl_loss_type", "low_var_kl"),
    ("algorithm.no_think_rl", "false"),
    ("actor_rollout_ref.rollout.n_agent", "5"),
    ("actor_rollout_ref.rollout.temperature", "1"),
    ("actor_rollout_ref.actor.state_masking", "true"),
    ("trainer.logger", "[wandb]"),
    ("+trainer.val_only", "false"),
    ("+trainer.val_before_train", "true"),
    ("trainer.default_hdfs_dir", "null"),
    ("trainer.n_gpus_per_node", "8"),
    ("trainer.nnodes", "1"),
    ("trainer.save_freq", "100"),
    ("trainer.test_freq", "50"),
    ("trainer.project_name", "Search-R1"),
    ("trainer.experiment_name", "nq-search-r1-grpo-qwen2.5-3b-em"),
    ("trainer.total_epochs", "15"),
    ("trainer.total_training_steps", "1005"),
    ("trainer.default_local_dir", "verl_checkpoints/nq-search-r1-grpo-qwen2.5-3b-em"),
    ("max_turns", "2"),
    ("retriever.url", "http://127.0.0.1:8000/retrieve"),
    ("retriever.topk", "3"),
)

# The environment both scripts set for the trainer: `export VLLM_ATTENTION_BACKEND=XFORMERS` and
# `PYTHONUNBUFFERED=1 python3 -m ...`. The job sets them unless the submitting shell has them.
ENV: tuple[tuple[str, str], ...] = (("PYTHONUNBUFFERED", "1"), ("VLLM_ATTENTION_BACKEND", "XFORMERS"))

# Keys medret writes itself (every recipe, and without one), with the job option that sets them: an --override
# of one of these is refused (it would contradict the job's layout, or the paths the job checks).
SET_BY_MEDRET: dict[str, str] = {
    "data.train_files": "--data-dir and --train-file",
    "data.val_files": "--data-dir and --val-file",
    "actor_rollout_ref.model.path": "--model",
    "critic.model.path": "--model",
    "actor_rollout_ref.rollout.tensor_model_parallel_size": "--tp",
    "trainer.n_gpus_per_node": "--gpus-per-node and --retriever-gpus (the training GPUs of the layout)",
    "trainer.nnodes": "--nodes and --layout (the trainer nodes of the layout)",
    "max_turns": "--max-turns",
    "retriever.topk": "--topk",
    "retriever.url": "--layout (per-node: each node's own server; the other layouts search through +retriever.*)",
}


def retriever_option(key: str) -> str | None:
    """The job option for an override ``retriever.NAME`` of a declared retriever option (medret.config): an engine
    option's flag (else its YAML key); --layout for the transport's, which the layout sets. None for other keys."""
    if not key.startswith("retriever."):
        return None
    name = key.split(".", 1)[1]
    for field, decl in options.declarations(RetrieverConfig).items():
        if name == field or name in decl.keys:
            if field in RUNTIME_SET_BY:
                return RUNTIME_SET_BY[field]
            if field not in options.declarations(EngineOptions):
                return "--layout (the job sets the retriever's transport)"
            return decl.flags[0] if decl.flags else f"{field}: in the --config YAML"
    return None


# Batch sizes that veRL divides by the number of training GPUs (fsdp_workers.py): each must be >= that number.
PER_GPU_KEYS = ("actor_rollout_ref.actor.ppo_mini_batch_size", "actor_rollout_ref.actor.ppo_micro_batch_size",
                "actor_rollout_ref.rollout.log_prob_micro_batch_size",
                "actor_rollout_ref.ref.log_prob_micro_batch_size", "critic.ppo_micro_batch_size")
TRAIN_BATCH = "data.train_batch_size"
N_AGENT = "actor_rollout_ref.rollout.n_agent"
MINI_BATCH = "actor_rollout_ref.actor.ppo_mini_batch_size"

_OVERRIDE = re.compile(r"^([+~]{0,2})([A-Za-z_][A-Za-z0-9_.\[\]-]*)(?:=(.*))?$", re.S)


def recipe_keys(name: str) -> tuple[tuple[str, str], ...]:
    """The (key, value) pairs of a recipe, in its script's order (``none``: no keys)."""
    if name not in RECIPES:
        raise ConfigError(f"recipe (--recipe)={name!r} is invalid: choose one of {', '.join(RECIPES)} (ppo and grpo "
                          "are Search-R1's train_ppo.sh and train_grpo.sh; none passes only the keys medret sets)")
    return {"none": (), "ppo": PPO, "grpo": GRPO}[name]


def bare_key(key: str) -> str:
    """``+trainer.val_only`` / ``~x`` / ``++x`` -> the key without hydra's prefix."""
    return key.lstrip("+~")


def split_override(entry: str) -> tuple[str, str, str | None]:
    """``'+a.b=1'`` -> ``('+', 'a.b', '1')``; ``'~a.b'`` -> ``('~', 'a.b', None)``."""
    m = _OVERRIDE.match(entry)
    if not m or (m.group(3) is None and m.group(1) != "~"):
        raise ConfigError(f"overrides entry {entry!r} is invalid: give hydra overrides as key=value (--override "
                          "key=value), e.g. trainer.total_epochs=15 or +trainer.val_before_train=false, or ~key to "
                          "delete one")
    return m.group(1), m.group(2), m.group(3)


def count_problem(key: str, value: str) -> str | None:
    """Why ``value`` of a batch-size key (:data:`TRAIN_BATCH`, :data:`N_AGENT`, :data:`PER_GPU_KEYS`) is not the
    positive whole number veRL divides (None when it is)."""
    text = str(value).strip().strip("'\"")
    if text.isdigit() and int(text) >= 1:
        return None
    return (f"{key}={value!r} is invalid: veRL needs a positive whole number there (e.g. --override {key}=512); "
            "give one")


COUNT_KEYS = (TRAIN_BATCH, N_AGENT, *PER_GPU_KEYS)


def apply_overrides(recipe: Sequence[tuple[str, str]],
                    overrides: Sequence[str]) -> tuple[list[tuple[str, str]], list[str]]:
    """The recipe's (key, value) pairs with ``overrides`` applied, and the overrides that are not recipe keys.

    An override of a recipe key replaces its value in place (keeping the recipe's ``+`` form, which hydra needs
    for keys its config lacks); ``~key`` removes the recipe's entry and is passed on. An override of a key in
    :data:`SET_BY_MEDRET` is refused with the option that sets it."""
    pairs = [(k, v) for k, v in recipe]
    position = {bare_key(k): i for i, (k, _) in enumerate(pairs)}
    extra: list[str] = []
    removed: set[int] = set()
    for entry in overrides:
        prefix, key, value = split_override(entry)
        if key in SET_BY_MEDRET:
            raise ConfigError(f"overrides entry {entry!r} (--override) sets {key}, which medret sets from the job: "
                              f"use {SET_BY_MEDRET[key]} instead")
        option = retriever_option(key)
        if option:
            raise ConfigError(f"overrides entry {entry!r} (--override) sets {key}, which would reach only the "
                              f"trainer's retriever, not the job's other retriever processes: use the job option "
                              f"{option} instead (it reaches every one)")
        if key in COUNT_KEYS and value is not None and count_problem(key, value):
            raise ConfigError(f"overrides entry {entry!r} (--override): {count_problem(key, value)}")
        i = position.get(key)
        if i is None:
            extra.append(entry)
        elif prefix == "~":
            removed.add(i)
            extra.append(entry)
        else:
            pairs[i] = (pairs[i][0], value if value is not None else "")
    return [p for i, p in enumerate(pairs) if i not in removed], extra


def _int(values: Mapping[str, str], key: str) -> int | None:
    try:
        return int(str(values.get(key, "")).strip())
    except ValueError:
        return None


def fit_train_batch(values: Mapping[str, str], train_gpus: int) -> int | None:
    """The largest ``data.train_batch_size`` <= the recipe's whose rollouts split evenly over ``train_gpus`` GPUs in
    whole PPO mini-batches on each (rows per GPU a multiple of (ppo_mini_batch_size // train_gpus) x n_agent);
    None if none does."""
    b, n, mini = _int(values, TRAIN_BATCH), _int(values, N_AGENT) or 1, _int(values, MINI_BATCH)
    if b is None or mini is None or train_gpus < 1 or mini // train_gpus < 1:
        return None
    for size in range(b, 0, -1):
        if not _uneven(size, n, mini, train_gpus) and (size * n) % train_gpus == 0:
            return size
    return None


def _uneven(b: int, n: int, mini: int, train_gpus: int) -> bool:
    """Rows per GPU (b x n / train_gpus) not a whole number of per-GPU mini-batches ((mini // train_gpus) x n)."""
    rows, per_gpu_mini = (b * n) // train_gpus, (mini // train_gpus) * n
    return per_gpu_mini < 1 or rows % per_gpu_mini != 0


def batch_problems(values: Mapping[str, str], train_gpus: int) -> tuple[list[str], list[str]]:
    """(errors, notes) of the recipe's batch sizes on ``train_gpus`` training GPUs (veRL's arithmetic, above)."""
    errors: list[str] = []
    notes: list[str] = []
    if train_gpus < 1:
        return errors, notes
    b, n, mini = _int(values, TRAIN_BATCH), _int(values, N_AGENT) or 1, _int(values, MINI_BATCH)
    fit = fit_train_batch(values, train_gpus)
    if b is not None and (b * n) % train_gpus:
        hint = f"--override {TRAIN_BATCH}={fit}" if fit else f"a {TRAIN_BATCH} that is a multiple of {train_gpus}"
        errors.append(f"{TRAIN_BATCH}={b} x {N_AGENT}={n} = {b * n} rollouts do not split evenly over the "
                      f"{train_gpus} training GPUs (veRL asserts it when it splits the batch): use {hint}, or a layout "
                      "whose training GPU count divides it")
    for key in PER_GPU_KEYS:
        v = _int(values, key)
        if v is not None and v // train_gpus < 1:
            errors.append(f"{key}={v} is divided by the {train_gpus} training GPUs (veRL) and would be 0: use "
                          f"--override {key}={train_gpus} or more")
    if not errors and b is not None and mini is not None and _uneven(b, n, mini, train_gpus):
        notes.append(f"{TRAIN_BATCH}={b} x {N_AGENT}={n} over {train_gpus} training GPUs gives {b * n // train_gpus} "
                     f"rollouts per GPU, not a whole number of its PPO mini-batches (({MINI_BATCH}={mini} // "
                     f"{train_gpus}) x {n} = {(mini // train_gpus) * n}): the last mini-batch of each step is smaller"
                     + (f" (--override {TRAIN_BATCH}={fit} avoids it)" if fit else ""))
    return errors, notes
