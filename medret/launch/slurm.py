"""SLURM job scripts for RL training with medret: plan the GPU split, render the sbatch, check a script.

Everything here is a pure function of its inputs (no SLURM, no files except the packaged templates, and the
paths that ``check_script`` looks for), so every refusal can be tested without a cluster. The parts, by what
they do: :mod:`~medret.launch.spec` (the job's options, declared once, and its retriever configuration),
:mod:`~medret.launch.plan` (the GPU arithmetic), :mod:`~medret.launch.retriever` (one writer per form of the
retriever's configuration), :mod:`~medret.launch.render` (the script), :mod:`~medret.launch.check` and
:mod:`~medret.launch.check_shell` (``slurm check``), :mod:`~medret.launch.paths` (the paths a job reads).
Search-R1's recipes (the hyper-parameters of its train_ppo.sh / train_grpo.sh) are data in
:mod:`medret.launch.recipes`.

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
    resource ``medret_retriever``). ``medret ray up`` creates the actor; the trainer and the smoke run attach
    to it by name and never create one.

GPU numbers in a spec are *indices into the job's GPUs on a node* (0..gpus_per_node-1); at run time they
are mapped through the ``CUDA_VISIBLE_DEVICES`` that SLURM gives the job, so they stay right on clusters
that hand out physical ids.
"""
from __future__ import annotations

from medret.launch.check import CheckReport, check_script, read_script, read_spec_header
from medret.launch.check_shell import LITERAL_WORD, shell_words
from medret.launch.plan import SPEC_FORMAT, SPEC_VERSION, Plan, plan_job
from medret.launch.render import RAY_RESOURCE, SPEC_BEGIN, SPEC_END, TEMPLATE_WORDS, render_job
from medret.launch.retriever import hydra_literal
from medret.launch.spec import (
    LAYOUTS,
    MODES,
    SBATCH_VALUES,
    JobSpec,
    parse_gpu_list,
    python_words,
    sbatch_value_problem,
)

__all__ = ["CheckReport", "JobSpec", "LAYOUTS", "LITERAL_WORD", "MODES", "Plan", "RAY_RESOURCE", "SBATCH_VALUES",
           "SPEC_BEGIN", "SPEC_END", "SPEC_FORMAT", "SPEC_VERSION", "TEMPLATE_WORDS", "check_script", "hydra_literal",
           "parse_gpu_list", "plan_job", "python_words", "read_script", "read_spec_header", "render_job",
           "sbatch_value_problem", "shell_words"]
