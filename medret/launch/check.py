"""`medret slurm check`: a job script's GPU arithmetic, health checks, batch sizes and paths, from the job-spec
block medret writes (re-checked against the script text) or, for a hand-written script, from its text alone.
Injected lines and values are judged by :mod:`medret.launch.check_shell`.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from medret.errors import ConfigError
from medret.launch import recipes
from medret.launch.check_shell import check_injection
from medret.launch.paths import check_paths
from medret.launch.plan import SPEC_FORMAT, plan_job
from medret.launch.render import SPEC_BEGIN, SPEC_END
from medret.launch.spec import JobSpec


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
    for key, what, ok in _HEADER_FIELDS:
        if key in d or key in _HEADER_REQUIRED:
            if not ok(d.get(key)):
                raise ConfigError(f"the medret job-spec block is damaged: {key}={d.get(key)!r} is not {what}; "
                                  "re-render the script with `medret slurm render`")
    return d


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


# what `slurm check` reads from the job-spec block: (key, what it must be, test)
_HEADER_FIELDS: tuple[tuple[str, str, Any], ...] = (
    ("layout", "a layout (local, per-node, retriever-node)", lambda v: v in ("local", "per-node", "retriever-node")),
    ("nodes", "a whole number", _count), ("gpus_per_node", "a whole number", _count),
    ("train_nodes", "a whole number", _count), ("tensor_parallel", "a whole number", _count),
    ("shards", "a whole number", _count),
    ("retriever_gpus", "a list of GPU indices", lambda v: isinstance(v, list) and all(_count(x) for x in v)),
    ("train_gpus", "a list of GPU indices", lambda v: isinstance(v, list) and all(_count(x) for x in v)),
    ("mode", "train, smoke or custom", lambda v: v in ("train", "smoke", "custom")),
)
_HEADER_REQUIRED = {"layout", "nodes", "gpus_per_node", "train_nodes", "tensor_parallel", "retriever_gpus",
                    "train_gpus"}


def read_script(path: str) -> str:
    """A job script's text exactly as bash reads it (no newline translation: a carriage return stays and is
    reported); ConfigError naming the path if it cannot be read or is not UTF-8 text."""
    try:
        data = open(path, "rb").read()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror}); give the path of a job script") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {data[e.start]:#04x} at offset {e.start}): a job script is "
                          "plain text; re-render it with `medret slurm render`, or convert it (iconv -t UTF-8)"
                          ) from None


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

    check_injection(rep.errors, text, header is not None)
    _check_batches(rep, text, env, n_gpn, nnodes)
    if files and header is not None:
        check_paths(header, text, os.environ if environ is None else environ, cwd, rep.errors, rep.facts)

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
        spec = JobSpec.from_mapping(dict(layout=h["layout"], nodes=N, gpus_per_node=G,
                                         retriever_gpus=list(h["retriever_gpus"]) or "none",
                                         tensor_parallel=int(h["tensor_parallel"]), shards=int(h.get("shards", 1)),
                                         corpus="sample", retriever="BM25", mode="smoke"))
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
        mode = h.get("mode")
        attach = "--ray-attach" if mode == "smoke" else "+retriever.ray_attach=true"
        if mode in ("smoke", "train") and attach not in code:
            rep.errors.append(f"the {'smoke run' if mode == 'smoke' else 'trainer'} does not attach to the job's "
                              f"retriever actor ({attach} missing): where its options differ from `ray up`'s it "
                              "would create a second actor (a second copy of the index). Re-render the script")
    rep.facts["health_check"] = h["layout"] != "local"


def _check_batches(rep: CheckReport, text: str, env: Mapping[str, str], n_gpn: int | None,
                   nnodes: int | None) -> None:
    """Search-R1's batch sizes in the training command against its training GPUs (recipes.batch_problems)."""
    if n_gpn is None:
        return
    keys = (recipes.TRAIN_BATCH, recipes.N_AGENT, recipes.MINI_BATCH, *recipes.PER_GPU_KEYS)
    values = {k: v for k in keys for v in [_hydra_value(text, k, env)] if v is not None}
    for key, value in values.items():
        problem = recipes.count_problem(key, value)
        if problem:
            rep.errors.append(problem)
    if recipes.TRAIN_BATCH in values or any(k in values for k in recipes.PER_GPU_KEYS):
        errors, _ = recipes.batch_problems(values, n_gpn * (nnodes or 1))
        rep.errors += errors


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


