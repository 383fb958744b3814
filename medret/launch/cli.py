"""`medret slurm render|check` and `medret ray up|down|wait|info`."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from medret import config_file
from medret.config import EngineOptions, RayOptions, RetrieverConfig
from medret.errors import ConfigError, TransportError
from medret.launch.slurm import JobSpec, check_script, plan_job, read_script, render_job
from medret.options import add_flags, declarations, given
from medret.storage.atomic import atomic_write_text
from medret.transports.ray import RayTransport, kill_actors, wait_for_nodes


def register(sub) -> None:
    p = sub.add_parser("slurm", help="render and check SLURM job scripts for RL training with medret")
    ssub = p.add_subparsers(dest="slurm_command", metavar="SUBCOMMAND", required=True)

    r = ssub.add_parser("render", help="write an sbatch script for a Search-R1 / veRL training job",
                        description="Write an sbatch script. GPU numbers are indices into a node's GPUs. "
                                    "Flags override the --config YAML (same names, with _ or -).")
    r.add_argument("--config", help="YAML file with the job options (flags override it)")
    r.add_argument("-o", "--out", help="write the script here (default: print it)")
    # every job option and every retriever option (EngineOptions), from their declarations
    add_flags(r, JobSpec)
    r.add_argument("--smoke", action="store_const", const="smoke", dest="mode",
                   help="the same as --mode smoke: `medret rollout-smoke` on every trainer node instead of training")
    add_flags(r, EngineOptions, title="the retriever: every process of the job gets these (default corpus MedCorp, "
              "retriever MedCPT; a local model folder: as given to `medret index build`)", show_defaults=False)
    r.add_argument("--quiet", action="store_true", help="do not print the plan")
    r.set_defaults(func=cmd_render)

    c = ssub.add_parser("check", help="validate job scripts: GPU split, tensor parallel, retriever GPU, health check")
    c.add_argument("scripts", nargs="+", metavar="JOB.sbatch", help="job scripts written by `medret slurm render`")
    c.add_argument("--json", action="store_true", help="print the reports as JSON")
    c.add_argument("--paths-on-compute-nodes", action="store_true",
                   help="leave the paths (data, model, db dir) to the job, which checks them on its first node")
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
                                                        "overrides": list})
    try:
        JobSpec.from_mapping(data)
    except ConfigError as e:
        raise config_file.naming(path, e) from None
    return data


def spec_from_args(args: argparse.Namespace) -> JobSpec:
    """The job from --config YAML, the flags given over it (the same names, with _ or -)."""
    data: dict[str, Any] = _load_yaml(args.config) if getattr(args, "config", None) else {}
    data = {str(k).replace("-", "_"): v for k, v in data.items()}
    flags = {**given(args, JobSpec), **given(args, EngineOptions)}
    for name in flags:  # a flag replaces the YAML's value under any of its spellings (corpus / corpus_name)
        decl = declarations(EngineOptions).get(name)
        for key in (name, *(decl.keys if decl else ())):
            data.pop(key, None)
    return JobSpec.from_mapping({**data, **flags})


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
    environ = dict(os.environ)
    for path in args.scripts:
        text = read_script(path)  # a ConfigError (cannot read, not UTF-8) is one `medret: error:` line
        report = check_script(text, path, files=not args.paths_on_compute_nodes, environ=environ)
        if args.paths_on_compute_nodes:
            report.facts["paths"] = "not checked here (--paths-on-compute-nodes): the job checks them on its first node"
        reports.append(report)
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
