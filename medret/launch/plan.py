"""The GPU arithmetic of a job: which GPUs train, which retrieve, on which nodes (:func:`plan_job`).

A pure function of the :class:`~medret.launch.spec.JobSpec`: every refusal says what to change.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from medret.errors import ConfigError
from medret.launch import recipes
from medret.launch.retriever import check_retriever
from medret.launch.spec import LAYOUTS, JobSpec, safe_name
from medret.version import __version__

SPEC_FORMAT = "medret-slurm-job"
SPEC_VERSION = 1


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
            "paths_on_compute_nodes": spec.paths_on_compute_nodes,
        }


def plan_job(spec: JobSpec) -> Plan:
    """Check a spec and work out the GPU split; raise :class:`ConfigError` saying what to change if it is wrong."""
    if spec.layout not in LAYOUTS:  # a JobSpec checks its choices; a header read back by `slurm check` may not
        raise ConfigError(f"layout={spec.layout!r} is invalid: choose one of {', '.join(LAYOUTS)}")
    safe_name("corpus_name", spec.corpus, folder=True)  # a corpus folder, a local model folder
    safe_name("retriever_name", spec.retriever, folder=True)
    safe_name("job_name", spec.job_name, folder=False)
    recipe_pairs, _ = recipes.apply_overrides(recipes.recipe_keys(spec.recipe), spec.overrides)
    G, N = spec.gpus_per_node, spec.nodes
    notes: list[str] = []
    if spec.gpus is None:
        if spec.layout == "retriever-node" and N >= 2:
            rg: tuple[int, ...] = tuple(range(G))
        else:
            rg = (G - 1,) if G >= 2 else ()
            if G < 2:
                notes.append("gpus_per_node=1: the retriever runs on CPU so the only GPU trains")
    else:
        rg = spec.gpus
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
    plan = Plan(layout=spec.layout, nodes=N, gpus_per_node=G, retriever_gpus=rg, train_gpus=train,
                train_nodes=train_nodes, tensor_parallel=tp, shards=spec.shards, retriever_node=retriever_node,
                notes=tuple(notes))
    check_retriever(spec, plan)
    return plan


