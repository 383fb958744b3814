"""`medret slurm render --recipe ppo|grpo`: every key Search-R1's train_ppo.sh / train_grpo.sh pass, with their
values, as the trainer receives them (read back from the script's dry run); overrides in place; keys medret sets
from the job refused as overrides; batch sizes that veRL cannot split over the training GPUs refused."""
from __future__ import annotations

import os
import re
import shlex
import subprocess

import pytest

from medret.errors import ConfigError
from medret.launch.slurm import JobSpec, check_script, render_job
from tests.launch.conftest import hydra_text

# Written from reading Search-R1's train_ppo.sh (the reference checkout's scripts), in their order: key -> the value
# the trainer receives. `trainer.logger=['wandb']` stands unquoted in the script, so bash hands hydra `[wandb]`;
# `trainer.default_hdfs_dir=null` is passed twice there, once here; $DATA_DIR, $BASE_MODEL, $WAND_PROJECT and
# $EXPERIMENT_NAME are the script's variables (BASE_MODEL=meta-llama/Llama-3.2-3B, WAND_PROJECT=Search-R1,
# EXPERIMENT_NAME=nq-search-r1-ppo-llama3.2-3b-em).
SEARCH_R1_PPO = """
data.train_files=$DATA_DIR/train.parquet
data.val_files=$DATA_DIR/test.parquet
data.train_data_num=null
data.val_data_num=null
data.train_batch_size=512
data.val_batch_size=256
data.max_prompt_length=4096
data.max_response_length=500
data.max_start_length=2048
data.max_obs_length=500
data.shuffle_train_dataloader=True
algorithm.adv_estimator=gae
actor_rollout_ref.model.path=$BASE_MODEL
actor_rollout_ref.actor.optim.lr=1e-6
actor_rollout_ref.model.enable_gradient_checkpointing=true
actor_rollout_ref.model.use_remove_padding=True
actor_rollout_ref.actor.optim.lr_warmup_steps_ratio=0.285
actor_rollout_ref.actor.ppo_mini_batch_size=256
actor_rollout_ref.actor.ppo_micro_batch_size=64
actor_rollout_ref.actor.fsdp_config.param_offload=true
actor_rollout_ref.actor.fsdp_config.grad_offload=true
actor_rollout_ref.actor.fsdp_config.optimizer_offload=true
actor_rollout_ref.rollout.log_prob_micro_batch_size=128
actor_rollout_ref.rollout.tensor_model_parallel_size=1
actor_rollout_ref.rollout.name=vllm
actor_rollout_ref.rollout.gpu_memory_utilization=0.6
actor_rollout_ref.ref.log_prob_micro_batch_size=128
actor_rollout_ref.ref.fsdp_config.param_offload=True
actor_rollout_ref.rollout.n_agent=1
actor_rollout_ref.rollout.temperature=1
actor_rollout_ref.actor.state_masking=true
critic.optim.lr=1e-5
critic.model.use_remove_padding=True
critic.optim.lr_warmup_steps_ratio=0.015
critic.model.path=$BASE_MODEL
critic.model.enable_gradient_checkpointing=true
critic.ppo_micro_batch_size=8
critic.model.fsdp_config.param_offload=true
critic.model.fsdp_config.grad_offload=true
critic.model.fsdp_config.optimizer_offload=true
algorithm.kl_ctrl.kl_coef=0.001
algorithm.no_think_rl=false
trainer.critic_warmup=0
trainer.logger=[wandb]
+trainer.val_only=false
+trainer.val_before_train=true
trainer.default_hdfs_dir=null
trainer.n_gpus_per_node=8
trainer.nnodes=1
trainer.save_freq=100
trainer.test_freq=50
trainer.project_name=Search-R1
trainer.experiment_name=nq-search-r1-ppo-llama3.2-3b-em
trainer.total_epochs=15
trainer.total_training_steps=1005
trainer.default_local_dir=verl_checkpoints/nq-search-r1-ppo-llama3.2-3b-em
max_turns=2
retriever.url=http://127.0.0.1:8000/retrieve
retriever.topk=3
"""

# train_grpo.sh (BASE_MODEL=Qwen/Qwen2.5-3B, EXPERIMENT_NAME=nq-search-r1-grpo-qwen2.5-3b-em; its data paths use
# $TRAIN_DATA_DIR / $TEST_DATA_DIR, which the script never sets).
SEARCH_R1_GRPO = """
data.train_files=$TRAIN_DATA_DIR/train.parquet
data.val_files=$TEST_DATA_DIR/test.parquet
data.train_data_num=null
data.val_data_num=null
data.train_batch_size=512
data.val_batch_size=256
data.max_prompt_length=4096
data.max_response_length=500
data.max_start_length=2048
data.max_obs_length=500
data.shuffle_train_dataloader=True
algorithm.adv_estimator=grpo
actor_rollout_ref.model.path=$BASE_MODEL
actor_rollout_ref.model.enable_gradient_checkpointing=true
actor_rollout_ref.model.use_remove_padding=True
actor_rollout_ref.actor.optim.lr=1e-6
actor_rollout_ref.actor.optim.lr_warmup_steps_ratio=0.285
actor_rollout_ref.actor.use_kl_loss=true
actor_rollout_ref.actor.ppo_mini_batch_size=256
actor_rollout_ref.actor.ppo_micro_batch_size=64
actor_rollout_ref.actor.fsdp_config.param_offload=true
actor_rollout_ref.actor.fsdp_config.grad_offload=true
actor_rollout_ref.actor.fsdp_config.optimizer_offload=true
actor_rollout_ref.rollout.log_prob_micro_batch_size=128
actor_rollout_ref.rollout.tensor_model_parallel_size=1
actor_rollout_ref.rollout.name=vllm
actor_rollout_ref.rollout.gpu_memory_utilization=0.6
actor_rollout_ref.ref.log_prob_micro_batch_size=128
actor_rollout_ref.ref.fsdp_config.param_offload=True
actor_rollout_ref.actor.kl_loss_coef=0.001
actor_rollout_ref.actor.kl_loss_type=low_var_kl
algorithm.no_think_rl=false
actor_rollout_ref.rollout.n_agent=5
actor_rollout_ref.rollout.temperature=1
actor_rollout_ref.actor.state_masking=true
trainer.logger=[wandb]
+trainer.val_only=false
+trainer.val_before_train=true
trainer.default_hdfs_dir=null
trainer.n_gpus_per_node=8
trainer.nnodes=1
trainer.save_freq=100
trainer.test_freq=50
trainer.project_name=Search-R1
trainer.experiment_name=nq-search-r1-grpo-qwen2.5-3b-em
trainer.total_epochs=15
trainer.total_training_steps=1005
trainer.default_local_dir=verl_checkpoints/nq-search-r1-grpo-qwen2.5-3b-em
max_turns=2
retriever.url=http://127.0.0.1:8000/retrieve
retriever.topk=3
"""
SCRIPTS = {"ppo": SEARCH_R1_PPO, "grpo": SEARCH_R1_GRPO}
# both scripts: `export VLLM_ATTENTION_BACKEND=XFORMERS` and `PYTHONUNBUFFERED=1 python3 -m verl.trainer.main_ppo`
SCRIPT_ENV = {"VLLM_ATTENTION_BACKEND": "XFORMERS", "PYTHONUNBUFFERED": "1"}


def script_pairs(text):
    return [tuple(line.split("=", 1)) for line in text.strip().splitlines()]


def spec(**kw):
    base = dict(corpus="MedCorp", retriever="MedCPT", db_dir="/data/medrag", model="Qwen/Qwen2.5-7B",
                data_dir="/data/kare", paths_on_compute_nodes=True)  # paths of the compute nodes, checked there
    base.update(kw)
    return JobSpec.from_mapping(base)


def dry_run_argv(text, tmp_path, **env):
    """The training command the job would run, as argv words: the dry run prints it %q-quoted, one key a line."""
    job = tmp_path / "job.sbatch"
    job.write_text(text)
    environ = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "LANG": "C.UTF-8", **env}
    r = subprocess.run(["bash", str(job), "--dry-run"], capture_output=True, text=True, cwd=tmp_path, env=environ,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    start = r.stdout.index("\nenv ") + 1 if "\nenv " in r.stdout else r.stdout.index("python3 -m verl")
    return shlex.split(r.stdout[start:].replace("\\\n", " "))


def hydra_pairs(argv):
    """(key, value) of every hydra word after `-m verl.trainer.main_ppo`."""
    i = argv.index("verl.trainer.main_ppo")
    return [(w.split("=", 1)[0], hydra_text(w.split("=", 1)[1])) if "=" in w else (w, None) for w in argv[i + 1:]]


# The keys medret sets from the job, and what it sets them to in the jobs below (local layout, 8 GPUs, retriever
# on CPU: the same 8 training GPUs as Search-R1's scripts; data and model from the job's options).
def medret_values(recipe, job):
    return {"data.train_files": f"{job.data_dir}/{job.train_file}", "data.val_files": f"{job.data_dir}/{job.val_file}",
            "actor_rollout_ref.model.path": job.model, "critic.model.path": job.model,
            "actor_rollout_ref.rollout.tensor_model_parallel_size": "1", "trainer.n_gpus_per_node": "8",
            "trainer.nnodes": "1", "max_turns": "2", "retriever.topk": "3"}


@pytest.mark.parametrize("recipe", ["ppo", "grpo"])
def test_rendered_job_carries_every_key_of_search_r1s_script(recipe, tmp_path):
    job = spec(layout="local", gpus_per_node=8, retriever_gpus="none", recipe=recipe)
    argv = dry_run_argv(render_job(job), tmp_path)
    # the scripts' environment, unless the submitting shell has it
    assert argv[:3] == ["env", "PYTHONUNBUFFERED=1", "VLLM_ATTENTION_BACKEND=XFORMERS"]
    assert argv[3:6] == ["python3", "-m", "verl.trainer.main_ppo"]
    rendered = hydra_pairs(argv)
    keys = [k for k, _ in rendered]
    assert len(keys) == len(set(keys)), "each key once"
    expected = script_pairs(SCRIPTS[recipe])
    ours = medret_values(recipe, job)
    got = dict(rendered)
    for key, value in expected:
        if key == "retriever.url":  # local layout: in-process search instead of Search-R1's server
            assert key not in got
            continue
        assert key in got, key
        assert got[key] == ours.get(key, value), (key, got[key], value)
    # in the script's order, with the in-process retriever keys where the script has retriever.url
    script_keys = [k for k, _ in expected if k != "retriever.url"]
    assert [k for k in keys if k in set(script_keys)] == script_keys
    extra = [k for k in keys if k not in set(script_keys)]
    assert extra == ["+retriever.backend", "+retriever.corpus_name", "+retriever.retriever_name",
                     "+retriever.device", "+retriever.db_dir"], extra  # the options, then the run-time ones
    assert got["+retriever.backend"] == "local" and got["+retriever.corpus_name"] == "MedCorp"
    assert got["+retriever.device"] == "cpu" and got["+retriever.db_dir"] == "/data/medrag"
    assert ("critic.model.path" in got) == (recipe == "ppo")  # GRPO has no critic


def test_environment_and_layout_values_come_from_the_job(tmp_path):
    """Per-node, 2 nodes x 4 GPUs: 3 training GPUs each (6 in all); the batch fitted to them by an override."""
    job = spec(layout="per-node", nodes=2, gpus_per_node=4, recipe="ppo",
               overrides=["data.train_batch_size=504"])
    argv = dry_run_argv(render_job(job), tmp_path, VLLM_ATTENTION_BACKEND="FLASH_ATTN")
    assert argv[1:3] == ["PYTHONUNBUFFERED=1", "VLLM_ATTENTION_BACKEND=FLASH_ATTN"]  # the submitter's wins
    got = dict(hydra_pairs(argv))
    assert got["trainer.n_gpus_per_node"] == "3" and got["trainer.nnodes"] == "2"
    assert got["data.train_batch_size"] == "504"
    assert got["retriever.url"].startswith("http://127.0.0.1:") and got["retriever.url"].endswith("/retrieve")


def test_overrides_replace_recipe_keys_in_place(tmp_path):
    job = spec(layout="local", gpus_per_node=8, retriever_gpus="none", recipe="ppo", overrides=[
        "actor_rollout_ref.actor.optim.lr=3e-7",      # a recipe key: its value, at its place
        "trainer.val_before_train=false",             # the recipe's +key form is kept
        "+trainer.my_extra=1",                         # not in the recipe: appended
        "~trainer.logger",                             # removed from the recipe, passed on
    ])
    argv = dry_run_argv(render_job(job), tmp_path)
    words = argv[argv.index("verl.trainer.main_ppo") + 1:]
    pairs = hydra_pairs(argv)
    keys = [k for k, _ in pairs]
    recipe_keys = [k for k, _ in script_pairs(SEARCH_R1_PPO)]
    assert keys.index("actor_rollout_ref.actor.optim.lr") == recipe_keys.index("actor_rollout_ref.actor.optim.lr")
    got = dict(pairs)
    assert got["actor_rollout_ref.actor.optim.lr"] == "3e-7"
    assert got["+trainer.val_before_train"] == "false" and "trainer.val_before_train" not in got
    assert words[-2:] == ["+trainer.my_extra=1", "~trainer.logger"]
    assert "trainer.logger" not in got and got["~trainer.logger"] is None


@pytest.mark.parametrize("override,flag", [
    ("trainer.n_gpus_per_node=8", "--gpus-per-node"), ("trainer.nnodes=2", "--nodes"),
    ("data.val_files=/x/test.parquet", "--val-file"), ("data.train_files=/x/a.parquet", "--train-file"),
    ("actor_rollout_ref.model.path=/m", "--model"), ("critic.model.path=/m", "--model"),
    ("actor_rollout_ref.rollout.tensor_model_parallel_size=2", "--tp"), ("max_turns=4", "--max-turns"),
    ("retriever.topk=5", "--topk"), ("+retriever.gpu_id=0", "--retriever-gpus"), ("retriever.url=http://x", "--layout"),
])
@pytest.mark.parametrize("recipe", ["none", "ppo"])
def test_an_override_of_a_key_medret_sets_is_refused(override, flag, recipe):
    with pytest.raises(ConfigError) as e:
        render_job(spec(layout="local", gpus_per_node=8, retriever_gpus="none", recipe=recipe, overrides=[override]))
    assert f"overrides entry {override!r}" in str(e.value) and flag in str(e.value)


def test_a_batch_the_training_gpus_cannot_split_is_refused_with_the_fix(tmp_path):
    """4 GPUs, retriever on one: 3 training GPUs; 512 rollouts do not split into 3 (veRL's DataProto.chunk asserts)."""
    with pytest.raises(ConfigError) as e:
        render_job(spec(layout="local", recipe="ppo"))
    msg = str(e.value)
    assert "data.train_batch_size=512" in msg and "3 training GPUs" in msg
    assert "--override data.train_batch_size=510" in msg  # 510 = 3 x 170, 170 = 2 x (256 // 3 = 85)
    # two 8-GPU trainer nodes: PPO's critic micro batch 8 // 16 GPUs would be 0
    with pytest.raises(ConfigError, match=r"critic.ppo_micro_batch_size=8 is divided by the 16 training GPUs"):
        render_job(spec(layout="retriever-node", nodes=3, gpus_per_node=8, recipe="ppo"))
    text = render_job(spec(layout="local", recipe="ppo", overrides=["data.train_batch_size=510"]))
    assert check_script(text).ok
    # the checker does the same arithmetic on any script
    rep = check_script(text.replace("data.train_batch_size=510", "data.train_batch_size=512"))
    assert not rep.ok and any("do not split evenly over the 3 training GPUs" in e for e in rep.errors)
    # smoke runs and custom commands do not train with the recipe
    assert render_job(spec(layout="local", recipe="ppo", mode="smoke"))
    assert render_job(spec(layout="local", recipe="ppo", train_cmd="echo hi"))


def test_unknown_recipe_is_refused_naming_the_option():
    with pytest.raises(ConfigError, match=r"recipe='dpo' is invalid: choose one of none, ppo, grpo"):
        render_job(spec(recipe="dpo"))


HOSTILE = ["$(touch {c})", "x`touch {c}`", "x; touch {c}", "x' ; touch {c} ; '", 'x" ; touch {c} ; "']


def test_hostile_values_in_recipe_overrides_reach_the_trainer_quoted(tmp_path):
    canary = tmp_path / "canary"
    for template in HOSTILE:
        value = template.format(c=canary)
        job = spec(layout="local", gpus_per_node=8, retriever_gpus="none", recipe="grpo",
                   overrides=[f"trainer.experiment_name={value}", f"+trainer.note={value}"])
        text = render_job(job)
        assert check_script(text).ok, check_script(text).format()
        got = dict(hydra_pairs(dry_run_argv(text, tmp_path)))
        assert not canary.exists(), value
        assert got["trainer.experiment_name"] == value and got["+trainer.note"] == value
        assert re.search(r"^\s*'trainer\.experiment_name=", text, re.M), "rendered as one single-quoted word"
