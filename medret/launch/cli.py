"""`medret slurm render|check` and `medret ray up|down|wait|info`."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from medret import config_file
from medret.config import DEFAULT_TOPK, EngineOptions, RayOptions, RetrieverConfig
from medret.errors import ConfigError, TransportError
from medret.launch.slurm import RETRIEVER_OPTION_NAMES, JobSpec, check_script, plan_job, render_job
from medret.options import add_flags
from medret.storage.atomic import atomic_write_text
from medret.transports.ray import RayTransport, kill_actors, wait_for_nodes

# flag dest -> JobSpec field (None values are left to the YAML file or the defaults)
_SPEC_FLAGS = {
    "layout": "layout", "nodes": "nodes", "gpus_per_node": "gpus_per_node", "retriever_gpus": "retriever_gpus",
    "tensor_parallel": "tensor_parallel", "corpus": "corpus", "retriever": "retriever", "db_dir": "db_dir",
    "topk": "topk", "shards": "shards", "job_name": "job_name", "partition": "partition", "account": "account",
    "qos": "qos", "time": "time", "mem": "mem", "cpus_per_task": "cpus_per_task", "log": "output",
    "sbatch_extra": "sbatch_extra", "model": "model", "data_dir": "data_dir", "max_turns": "max_turns",
    "override": "overrides", "train_cmd": "train_cmd", "mode": "mode", "smoke_turns": "smoke_turns",
    "health_timeout": "health_timeout", "python": "python", "recipe": "recipe", "train_file": "train_file",
    "val_file": "val_file",
    **{name: name for name in RETRIEVER_OPTION_NAMES},  # model paths and encoder recipe, as declared
}


def register(sub) -> None:
    p = sub.add_parser("slurm", help="render and check SLURM job scripts for RL training with medret")
    ssub = p.add_subparsers(dest="slurm_command", metavar="SUBCOMMAND", required=True)

    r = ssub.add_parser("render", help="write an sbatch script for a Search-R1 / veRL training job",
                        description="Write an sbatch script. GPU numbers are indices into a node's GPUs. "
                                    "Flags override the --config YAML (same names, with _ or -).")
    r.add_argument("--config", help="YAML file with the job options (flags override it)")
    r.add_argument("-o", "--out", help="write the script here (default: print it)")
    r.add_argument("--layout", choices=["local", "per-node", "retriever-node"],
                   help="where the retriever runs: local (in the trainer process, one node; default), per-node "
                   "(a `medret serve` on every node), retriever-node (Ray actors on one node; see `medret plan`)")
    r.add_argument("--nodes", type=int, help="SLURM nodes (default 1)")
    r.add_argument("--gpus-per-node", type=int, help="GPUs on each node (default 4)")
    r.add_argument("--retriever-gpus", help="GPU index/indices that retrieve, e.g. 3 or 2,3; 'none' = CPU "
                   "(default: the last GPU; retriever-node with >=2 nodes: all GPUs of the last node)")
    r.add_argument("--tensor-parallel", "--tp", type=int, dest="tensor_parallel",
                   help="vLLM rollout tensor-parallel size; must divide the training GPUs per node")
    add_flags(r, EngineOptions, only=("corpus_name", "retriever_name", "db_dir"), title="retriever (default "
              "MedCorp, MedCPT)", show_defaults=False, dests={"corpus_name": "corpus", "retriever_name": "retriever"})
    add_flags(r, EngineOptions, only=RETRIEVER_OPTION_NAMES, title="retriever models and encoder recipe (a local "
              "model folder: as given to `medret index build`)", show_defaults=False)
    r.add_argument("--topk", type=int, help=f"passages per query (default {DEFAULT_TOPK})")
    add_flags(r, RayOptions, only=("ray_shards",), title="retriever-node: shard a dense index over the retriever GPUs",
              show_defaults=False, dests={"ray_shards": "shards"})
    g = r.add_argument_group("SLURM")
    g.add_argument("--job-name", help="#SBATCH --job-name (default medret-train)")
    g.add_argument("--partition", help="#SBATCH --partition (default: the cluster's)")
    g.add_argument("--account", help="#SBATCH --account (default: the cluster's)")
    g.add_argument("--qos", help="#SBATCH --qos (default: the cluster's)")
    g.add_argument("--time", help="#SBATCH --time limit, e.g. 24:00:00 (the default) or 2-00:00:00")
    g.add_argument("--mem", help="#SBATCH --mem per node, e.g. 500G (default: the cluster's)")
    g.add_argument("--cpus-per-task", type=int, help="#SBATCH --cpus-per-task (default: the cluster's)")
    g.add_argument("--log", help="#SBATCH --output pattern (default %%x-%%j.out)")
    g.add_argument("--sbatch-extra", action="append", help="another #SBATCH option, e.g. --exclusive (repeatable)")
    t = r.add_argument_group("trainer")
    t.add_argument("--model", help="the policy model: hub id or folder (default Qwen/Qwen2.5-7B)")
    t.add_argument("--data-dir", help="folder of the training data files (default data/nq_search)")
    t.add_argument("--train-file", help="data.train_files, relative to --data-dir unless absolute "
                   "(default train.parquet)")
    t.add_argument("--val-file", help="data.val_files, relative to --data-dir unless absolute (default val.parquet, "
                   "as `medret kare prepare` writes; Search-R1's NQ data: test.parquet)")
    t.add_argument("--recipe", choices=["none", "ppo", "grpo"],
                   help="Search-R1's hyper-parameters: ppo (train_ppo.sh) or grpo (train_grpo.sh), every key of "
                   "the script, --override to change one; none (default): only the keys medret sets")
    t.add_argument("--max-turns", type=int, help="search turns per rollout (Search-R1's max_turns; default 2)")
    t.add_argument("--override", action="append", help="hydra override key=value (repeatable); replaces a "
                   "recipe key in place")
    t.add_argument("--train-cmd", help="run this shell command instead of Search-R1's trainer")
    t.add_argument("--smoke", action="store_const", const="smoke", dest="mode",
                   help="run `medret rollout-smoke` on every trainer node instead of training (CPU tests)")
    t.add_argument("--smoke-turns", type=int, help="search turns of the --smoke rollout (default 2)")
    t.add_argument("--health-timeout", type=int, help="seconds to wait for the retriever (default 900)")
    t.add_argument("--python", help="python of the training environment (default python3)")
    r.add_argument("--quiet", action="store_true", help="do not print the plan")
    r.set_defaults(func=cmd_render)

    c = ssub.add_parser("check", help="validate job scripts: GPU split, tensor parallel, retriever GPU, health check")
    c.add_argument("scripts", nargs="+", metavar="JOB.sbatch", help="job scripts written by `medret slurm render`")
    c.add_argument("--json", action="store_true", help="print the reports as JSON")
    c.set_defaults(func=cmd_check)

    p = sub.add_parser("ray", help="the Ray backend: create, find and stop retriever actors")
    rsub = p.add_subparsers(dest="ray_command", metavar="SUBCOMMAND", required=True)
    # up, down and info take the same flags: an actor is found by the name its options make (options.identity)
    up = rsub.add_parser("up", help="get or create the retriever actor(s) and wait until they answer")
    _ray_flags(up)
    up.set_defaults(func=cmd_ray_up, timeout=600.0)  # a new actor may load a large index
    down = rsub.add_parser("down", help="kill the retriever actor(s) of a job (give the flags `ray up` was given)")
    _ray_flags(down)
    down.set_defaults(func=cmd_ray_down)
    info = rsub.add_parser("info", help="print the actor's info (corpus, node, device)")
    _ray_flags(info)
    info.set_defaults(func=cmd_ray_info)
    w = rsub.add_parser("wait", help="wait until a Ray cluster has N alive nodes")
    w.add_argument("--address", default=None, help="Ray cluster address (default: $RAY_ADDRESS, else the local one)")
    w.add_argument("--nodes", type=int, required=True, help="alive nodes to wait for")
    w.add_argument("--timeout", type=float, default=300.0, help="seconds to wait before failing (default 300)")
    w.set_defaults(func=cmd_ray_wait)


def _ray_flags(p: argparse.ArgumentParser) -> None:
    add_flags(p, EngineOptions)
    add_flags(p, RayOptions)
    p.add_argument("--json", action="store_true", help="print the actor's info as JSON on one line")


# ============================================================================ slurm


def _load_yaml(path: str) -> dict[str, Any]:
    """The job options of a --config file (medret.config_file: scalars as written, no aliases), each checked as
    the job reads it, so that an error names the file."""
    data = config_file.load_mapping(path, "job options (layout: ..., nodes: ...)")
    data = {str(k).replace("-", "_"): v for k, v in data.items()}
    config_file.require_scalars(data, path, containers={"retriever_gpus": list, "sbatch_extra": list,
                                                        "overrides": list, "retriever_options": dict})
    try:
        JobSpec.from_mapping(data)
    except ConfigError as e:
        raise config_file.naming(path, e) from None
    return data


def spec_from_args(args: argparse.Namespace):
    data: dict[str, Any] = _load_yaml(args.config) if getattr(args, "config", None) else {}
    for dest, fname in _SPEC_FLAGS.items():
        v = getattr(args, dest, None)
        if v is not None:
            data[fname] = v
    return JobSpec.from_mapping(data)


def cmd_render(args) -> int:
    spec = spec_from_args(args)
    plan = plan_job(spec)
    text = render_job(spec)
    if args.out:
        atomic_write_text(args.out, text)
        os.chmod(args.out, 0o755)
    else:
        sys.stdout.write(text)
    if not args.quiet:
        out = sys.stderr if not args.out else sys.stdout
        rg = ",".join(map(str, plan.retriever_gpus)) or "CPU"
        print(f"medret slurm render: layout={plan.layout} nodes={plan.nodes} gpus/node={plan.gpus_per_node}: "
              f"training GPUs {','.join(map(str, plan.train_gpus))} on {plan.train_nodes} node(s) "
              f"(tp={plan.tensor_parallel}), retriever on {rg}"
              + (f" of node {plan.retriever_node}" if plan.retriever_node is not None and plan.nodes > 1 else ""),
              file=out)
        for n in plan.notes:
            print(f"  note: {n}", file=out)
        if args.out:
            print(f"wrote {args.out}; submit with `sbatch {args.out}`, dry run with `bash {args.out} --dry-run`",
                  file=out)
    return 0


def cmd_check(args) -> int:
    reports = []
    for path in args.scripts:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as e:
            print(f"{path}: cannot read ({e.strerror})", file=sys.stderr)
            return 2
        reports.append(check_script(text, path))
    if args.json:
        print(json.dumps([{"path": r.path, "ok": r.ok, "errors": r.errors, "warnings": r.warnings,
                           "facts": r.facts} for r in reports], indent=2, default=str))
    else:
        for r in reports:
            print(r.format())
    return 0 if all(r.ok for r in reports) else 1


# ============================================================================ ray


def _ray_config(args: argparse.Namespace) -> RetrieverConfig:
    return RetrieverConfig.from_args(args, backend="ray")


def cmd_ray_up(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    t = RayTransport(_ray_config(args))
    try:
        info = t.info()
    finally:
        t.close()
    info["ready_s"] = round(time.perf_counter() - t0, 3)
    if args.json:
        print(json.dumps(info, default=str))
    else:
        ray_part = info.get("ray", {})
        print(f"medret ray up: actor {ray_part.get('actor')} ready on node {ray_part.get('node_id')} "
              f"({ray_part.get('node_ip')}, host {ray_part.get('hostname')}, slurm node "
              f"{ray_part.get('slurm_node') or '-'}): corpus {info.get('corpus')}, "
              f"retriever {info.get('retriever')}, {info.get('n_docs')} docs, device {info.get('device')}, "
              f"in {info['ready_s']}s")
    return 0


def cmd_ray_info(args: argparse.Namespace) -> int:
    t = RayTransport(_ray_config(args), create=False)
    try:
        info = t.info()
    except TransportError as e:
        print(f"medret ray info: {e}", file=sys.stderr)
        return 1
    finally:
        t.close()
    print(json.dumps(info, default=str, indent=None if args.json else 2))
    return 0


def cmd_ray_down(args: argparse.Namespace) -> int:
    names = kill_actors(_ray_config(args))
    print(f"medret ray down: killed {len(names)} actor(s)" + (f": {', '.join(names)}" if names else ""))
    return 0


def cmd_ray_wait(args: argparse.Namespace) -> int:
    n = wait_for_nodes(args.address, args.nodes, args.timeout)
    print(f"medret ray wait: {n} node(s) alive")
    return 0
