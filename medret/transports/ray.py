"""Ray transport: the retriever runs in a named, detached Ray actor that every caller of a job shares.

* **One per job.** The actor's name comes from the configuration (corpus, retriever, a hash of the settings
  that change results) and the job id (``ray_job``, else ``$MEDRET_RAY_JOB``, else ``$SLURM_JOB_ID``, else
  ``default``); the
  first caller creates it (``get_if_exists``, so racing callers still make one), every other caller -- the
  trainer's driver, veRL tool workers, another process -- finds it by name. Nothing is loaded twice.
* **Detached.** ``lifetime="detached"``: the actor outlives the process that created it (veRL's own
  rate-limiter actor died with its owner mid-training). It lives until ``medret ray down`` / :func:`kill_actors`
  or until the Ray cluster stops.
* **Placement** (``ray_placement``): ``any`` (Ray decides; ``ray_num_gpus`` GPUs or CPU), ``per-node`` (one
  actor per node; each caller uses the actor on its own node, pinned with ``NodeAffinitySchedulingStrategy``,
  named with the node id), ``retriever-node`` (on the node that offers the custom resource
  ``medret_retriever``, e.g. ``ray start --resources '{"medret_retriever": 1000}'``).
* **Shards** (``ray_shards > 1``, dense retrievers): the coordinator actor encodes queries and merges, and
  each exact (flat) index is split by rows over ``ray_shards`` shard actors
  (:mod:`medret.index.sharded`), one per GPU: results equal the unsharded index exactly.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from typing import Any

from medret.config import ENCODER_OPTION_NAMES, RetrieverConfig
from medret.errors import ConfigError, TransportError

logger = logging.getLogger(__name__)

RESOURCE = "medret_retriever"
# settings that change which documents come back; they make the actor's name (and nothing else does)
# what changes results, and what changes where and how the actor runs (a sharded or GPU actor is another actor)
_IDENTITY_FIELDS = ("corpus_name", "retriever_name", "db_dir", "query_model", "doc_model", "rrf_k",
                    "fusion_depth", "device", "fp16", "ray_num_gpus", "ray_shards", "nprobe", "ef_search", "rerank",
                    *ENCODER_OPTION_NAMES)


def job_id() -> str:
    return os.environ.get("MEDRET_RAY_JOB") or os.environ.get("SLURM_JOB_ID") or "default"


def actor_base_name(config: RetrieverConfig, job: str | None = None) -> str:
    """``medret:<corpus>:<retriever>:<job>:<hash>``; the same for every caller with the same configuration.
    The job is ``job``, else ``config.ray_job``, else ``$MEDRET_RAY_JOB`` / ``$SLURM_JOB_ID``."""
    job = job or config.ray_job
    ident = {f: getattr(config, f) for f in _IDENTITY_FIELDS}
    if ident["db_dir"]:
        ident["db_dir"] = os.path.abspath(os.path.expanduser(ident["db_dir"]))
    digest = hashlib.sha1(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:10]
    clean = lambda s: re.sub(r"[^A-Za-z0-9._+-]+", "_", str(s))[:40]  # noqa: E731
    return f"medret:{clean(config.corpus_name)}:{clean(config.retriever_name)}:{clean(job or job_id())}:{digest}"


def _ray():
    try:
        import ray
    except ImportError:
        raise TransportError("backend='ray' needs Ray: pip install 'medret[ray]'") from None
    return ray


def connect(address: str | None = None, namespace: str = "medret") -> Any:
    """Connect this process to a Ray cluster (once). ``address``: explicit, else ``$RAY_ADDRESS``, else the
    running local cluster or a new local instance (Ray's own rules)."""
    ray = _ray()
    if ray.is_initialized():  # one process talks to one Ray cluster: the one it joined first
        return ray
    addr = address or os.environ.get("RAY_ADDRESS") or None
    _match_ray_start_auth()
    try:
        ray.init(address=addr, namespace=namespace, logging_level=logging.WARNING, log_to_driver=False,
                 configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as e:
        try:
            ray.shutdown()
        except Exception:  # nothing to undo
            pass
        raise TransportError(f"cannot connect to the Ray cluster at ray_address={addr!r}: {e}; start one with "
                             "`ray start --head` (or let the SLURM job do it) and pass its address") from None
    return ray


def _match_ray_start_auth() -> None:
    """Use token authentication exactly when `ray start` does: if RAY_AUTH_MODE is unset and a token exists.

    (Recent Ray enables tokens in `ray start` when ~/.ray/auth_token exists, but a driver connecting to an
    explicit address does not, and is then refused by the cluster.)"""
    mode = os.environ.get("RAY_AUTH_MODE")
    if mode is not None and mode.lower() != "token":
        return
    try:
        from ray._private.authentication import authentication_token_setup as auth
    except ImportError:  # a Ray without token authentication
        return
    try:
        if mode is None:
            auth.maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
        else:  # re-read the mode: Ray may have been imported before the variable was set
            auth._enable_token_auth()
    except Exception:  # never block a connection on this check
        logger.debug("token auth probe failed", exc_info=True)


def _node_context(ray) -> dict[str, Any]:
    import socket

    ctx = ray.get_runtime_context()
    node_id = ctx.get_node_id()
    ip = None
    for n in ray.nodes():
        if n.get("NodeID") == node_id:
            ip = n.get("NodeManagerAddress")
    return {"node_id": node_id, "node_ip": ip, "hostname": socket.gethostname(), "pid": os.getpid(),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            # the SLURM node whose raylet started this actor (several slurmd may share a host)
            "slurm_node": os.environ.get("SLURMD_NODENAME")}


class RetrieverActor:
    """The engine in a Ray actor. Built through :func:`actor_class` (``ray.remote``)."""

    def __init__(self, config: dict[str, Any], name: str, shard_options: list[dict[str, Any]] | None = None):
        import ray

        from medret.transports.local import LocalTransport

        cfg = RetrieverConfig.from_mapping({**config, "backend": "local"})
        self.name = name
        self.sharded = None
        if cfg.ray_shards > 1:
            self.local, self.sharded = _sharded_engine(cfg, name, shard_options or [])
        else:
            self.local = LocalTransport(cfg)
        self.where = _node_context(ray)

    def search(self, queries: list[str], k: int) -> list[list[dict]]:
        return self.local.search(queries, k)

    def info(self) -> dict[str, Any]:
        info = dict(self.local.info())
        info["ray"] = {"actor": self.name, **self.where}
        if self.sharded:
            info["ray"]["shards"] = [ix.describe() for ix in self.sharded]
        return info

    def ping(self) -> bool:
        return True

    def shutdown(self) -> None:
        for ix in self.sharded or []:
            ix.close()


def _sharded_engine(cfg: RetrieverConfig, name: str, shard_options: list[dict[str, Any]]):
    """An engine whose exact dense indexes are split over shard actors: built on CPU (memory-mapped, nothing
    copied to a GPU), then each index swapped for a :class:`ShardedDenseIndex` and the query encoder moved to
    the requested device."""
    from medret.device import resolve_device
    from medret.index.dense_searcher import DenseSearcher
    from medret.index.sharded import DEFAULT_BLOCK, ShardedDenseIndex
    from medret.transports.local import LocalTransport

    want = resolve_device(cfg.device, cfg.gpu_id, cfg.allow_cpu_fallback)
    local = LocalTransport(cfg.replace(device="cpu", gpu_id=None, ray_shards=1))
    dense = [s for s in local.engine.searchers if isinstance(s, DenseSearcher)]
    if not dense:
        raise ConfigError(f"ray_shards={cfg.ray_shards} is invalid for retriever_name={cfg.retriever_name!r}: "
                          "only dense indexes are sharded; use ray_shards=1")
    sharded = []
    for s in dense:
        new = []
        for offset, ix in s.indexes:
            if getattr(ix, "embeddings", None) is None:
                raise ConfigError(f"ray_shards={cfg.ray_shards} needs exact (flat) dense indexes, but one is "
                                  f"{getattr(ix, 'index_type', '?')}; rebuild with --index-type flat or use ray_shards=1")
            opts = [dict(shard_options[i % len(shard_options)]) if shard_options else {}
                    for i in range(cfg.ray_shards)]
            devices = [o.pop("_device", "cpu") for o in opts]
            for i, o in enumerate(opts):
                o.setdefault("name", f"{name}#shard{len(sharded)}.{i}")
                o.setdefault("lifetime", "detached")
            files = [getattr(e, "filename", None) for e in ix.embeddings]
            ntotal = sum(int(e.shape[0]) for e in ix.embeddings)
            # blocks small enough that every shard gets rows, however small the index
            block = max(1, min(DEFAULT_BLOCK, -(-ntotal // cfg.ray_shards)))
            if all(f and str(f).endswith(".npy") for f in files):
                # memory-mapped .npy segments: each shard maps and loads only its own rows
                sh = ShardedDenseIndex.over_actors(None, cfg.ray_shards, metric=ix.metric, devices=devices,
                                                   actor_options=opts, row_map=ix.row_map, block=block,
                                                   ntotal=ntotal, dim=ix.dim, npy_files=[str(f) for f in files])
            else:
                import numpy as np

                # one segment (e.g. a flat faiss file's vectors, in place) is handed on without a copy
                emb = (np.asarray(ix.embeddings[0]) if len(ix.embeddings) == 1
                       else np.concatenate([np.asarray(e) for e in ix.embeddings], axis=0))
                sh = ShardedDenseIndex.over_actors(emb, cfg.ray_shards, metric=ix.metric, devices=devices,
                                                   actor_options=opts, row_map=ix.row_map, block=block)
            sharded.append(sh)
            new.append((offset, sh))
        s.indexes = new
        if want != "cpu" and hasattr(s.encoder, "device"):
            s.encoder.device = want
            s.device = want
    local.engine.device = want
    return local, sharded


_ACTOR = None


def actor_class():
    global _ACTOR
    if _ACTOR is None:
        _ACTOR = _ray().remote(RetrieverActor)
    return _ACTOR


class RayTransport:
    """``search / info / close`` through the job's retriever actor (created on first use unless ``create=False``)."""

    def __init__(self, config: RetrieverConfig, create: bool = True, ready_timeout: float | None = None):
        if config.ray_placement == "per-node" and config.ray_shards > 1:
            raise ConfigError("ray_shards > 1 with ray_placement='per-node' is not supported: shard one index over "
                              "the retriever node's GPUs with ray_placement='retriever-node'")
        self.config = config
        self.ray = connect(config.ray_address, config.ray_namespace)
        self.namespace = config.ray_namespace
        self.name = actor_base_name(config)
        self.node_id: str | None = None
        if config.ray_placement == "per-node":
            self.node_id = self.ray.get_runtime_context().get_node_id()
            self.name = f"{self.name}@{self.node_id}"
        timeout = config.timeout if ready_timeout is None else ready_timeout
        self.handle = self._get_or_create(create, timeout)

    # ------------------------------------------------------------------ actor lifecycle
    def _lookup(self):
        try:
            return self.ray.get_actor(self.name, namespace=self.namespace)
        except ValueError:
            return None

    def _options(self) -> dict[str, Any]:
        cfg = self.config
        opts: dict[str, Any] = {"name": self.name, "namespace": self.namespace, "lifetime": "detached",
                                "get_if_exists": True, "max_restarts": 0}
        if cfg.ray_num_gpus:
            opts["num_gpus"] = cfg.ray_num_gpus
        if cfg.ray_placement == "retriever-node":
            total = self.ray.cluster_resources().get(RESOURCE, 0)
            if total < 1:
                raise TransportError(
                    f"ray_placement='retriever-node' needs a Ray node offering the resource {RESOURCE!r}, and the "
                    f"cluster has none: start the retriever node with ray start --resources "
                    f"'{{\"{RESOURCE}\": 1000}}' (the rendered SLURM job does this)")
            opts["resources"] = {RESOURCE: 1}
        elif cfg.ray_placement == "per-node":
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id=self.node_id, soft=False)
        return opts

    def _shard_options(self) -> list[dict[str, Any]]:
        cfg = self.config
        if cfg.ray_shards <= 1:
            return []
        cuda = str(cfg.device or "").startswith("cuda") or cfg.gpu_id is not None
        out = []
        for i in range(cfg.ray_shards):
            o: dict[str, Any] = {"namespace": self.namespace}
            if cfg.ray_placement == "retriever-node":
                # that raylet shows its GPUs to every actor (0 Ray GPUs, CUDA_VISIBLE_DEVICES kept): one each
                o["resources"] = {RESOURCE: 1}
                o["_device"] = f"cuda:{i}" if cuda else "cpu"
            elif cuda:
                o["num_gpus"] = 1
                o["_device"] = "cuda:0"
            else:
                o["_device"] = "cpu"
            out.append(o)
        return out

    def _get_or_create(self, create: bool, timeout: float):
        handle = self._lookup()
        if handle is None:
            if not create:
                raise TransportError(f"no retriever actor named {self.name!r} in namespace {self.namespace!r}; "
                                     "create it with `medret ray up` (same corpus/retriever/job)")
            cfg = self.config.to_dict()
            logger.info("creating Ray actor %s (%s)", self.name, self.config.ray_placement)
            handle = actor_class().options(**self._options()).remote(cfg, self.name, self._shard_options())
        t0 = time.perf_counter()
        try:
            self.ray.get(handle.ping.remote(), timeout=timeout)
        except self.ray.exceptions.GetTimeoutError:
            raise TransportError(f"the retriever actor {self.name!r} was not ready within {timeout:.0f}s (still "
                                 "loading, or no node has the resources it asks for: "
                                 f"{ {k: v for k, v in self._options().items() if k in ('num_gpus', 'resources')} })"
                                 ) from None
        except self.ray.exceptions.RayActorError as e:
            raise TransportError(f"the retriever actor {self.name!r} failed to start: {_cause(e)}") from None
        logger.info("Ray actor %s ready in %.2fs", self.name, time.perf_counter() - t0)
        return handle

    # ------------------------------------------------------------------ transport protocol
    def search(self, queries: list[str], k: int) -> list[list[dict]]:
        return self._call("search", queries, k)

    def info(self) -> dict[str, Any]:
        return self._call("info")

    def _call(self, method: str, *args: Any) -> Any:
        try:
            return self.ray.get(getattr(self.handle, method).remote(*args), timeout=self.config.timeout)
        except self.ray.exceptions.GetTimeoutError:
            raise TransportError(f"the retriever actor {self.name!r} did not answer {method} within "
                                 f"{self.config.timeout:.0f}s (timeout=...)") from None
        except self.ray.exceptions.RayActorError as e:
            raise TransportError(f"the retriever actor {self.name!r} is gone: {_cause(e)}") from None
        except self.ray.exceptions.RayTaskError as e:
            cause = e.as_instanceof_cause() if hasattr(e, "as_instanceof_cause") else e
            from medret.errors import MedretError

            if isinstance(cause, MedretError):
                raise cause from None
            raise TransportError(f"the retriever actor {self.name!r} failed in {method}: {_cause(e)}") from None

    def close(self) -> None:
        """Forget the handle; the detached actor keeps serving the job's other callers."""
        self.handle = None


def _cause(e: Exception) -> str:
    text = str(e).strip().splitlines()
    tail = [line for line in text if line.strip()][-3:]
    return " ".join(tail)[:600] or type(e).__name__


def kill_actors(config: RetrieverConfig) -> list[str]:
    """Kill the job's retriever actor(s) for this configuration: all placements, per-node copies and shards."""
    ray = connect(config.ray_address, config.ray_namespace)
    from ray.util import list_named_actors

    base = actor_base_name(config)
    killed = []
    for entry in list_named_actors(all_namespaces=True):
        name = entry["name"] if isinstance(entry, dict) else entry
        ns = entry.get("namespace") if isinstance(entry, dict) else config.ray_namespace
        if ns != config.ray_namespace or not (name == base or name.startswith(base + "@")
                                               or name.startswith(base + "#")):
            continue
        try:
            h = ray.get_actor(name, namespace=ns)
            if "#" not in name:
                try:
                    ray.get(h.shutdown.remote(), timeout=30)
                except Exception:
                    logger.debug("shutdown of %s failed", name, exc_info=True)
            ray.kill(h)
            killed.append(name)
        except ValueError:
            pass
    return killed


def wait_for_nodes(address: str | None, n: int, timeout: float) -> int:
    """Wait until the cluster at ``address`` has ``n`` alive nodes; TransportError on timeout."""
    deadline = time.monotonic() + timeout
    ray = None
    last_err = None
    while ray is None:
        try:
            ray = connect(address)
        except TransportError as e:
            last_err = e
            if time.monotonic() > deadline:
                raise TransportError(f"no Ray cluster at {address!r} within {timeout:.0f}s: {last_err}") from None
            time.sleep(1.0)
    alive = 0
    while True:
        alive = sum(1 for x in ray.nodes() if x.get("Alive"))
        if alive >= n:
            return alive
        if time.monotonic() > deadline:
            raise TransportError(f"the Ray cluster at {address!r} has {alive} alive node(s) after {timeout:.0f}s, "
                                 f"expected {n}")
        time.sleep(0.5)
