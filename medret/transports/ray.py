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
import socket
import time
from typing import Any

import numpy as np

from medret import optional, options
from medret.config import RayOptions, RetrieverConfig
from medret.engine import Engine
from medret.errors import (
    ConfigError,
    MedretError,
    MissingDependencyError,
    TransportError,
)
from medret.index.searchers import Shards
from medret.index.sharded import DenseShard
from medret.transports.base import BaseTransport
from medret.transports.local import LocalTransport

logger = logging.getLogger(__name__)

RESOURCE = "medret_retriever"


def job_id() -> str:
    return os.environ.get("MEDRET_RAY_JOB") or os.environ.get("SLURM_JOB_ID") or "default"


def actor_base_name(config: RetrieverConfig, job: str | None = None) -> str:
    """``medret:<corpus>:<retriever>:<job>:<hash>``; the same for every caller with the same configuration.
    The job is ``job``, else ``config.ray_job``, else ``$MEDRET_RAY_JOB`` / ``$SLURM_JOB_ID``."""
    job = job or config.ray_job
    # the options declared identity=True: what changes results, and where and how the actor runs (a sharded or GPU
    # actor is another actor)
    ident = options.identity(config)
    if ident["db_dir"]:
        ident["db_dir"] = os.path.abspath(os.path.expanduser(ident["db_dir"]))
    digest = hashlib.sha1(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:10]
    clean = lambda s: re.sub(r"[^A-Za-z0-9._+-]+", "_", str(s))[:40]  # noqa: E731
    return f"medret:{clean(config.corpus_name)}:{clean(config.retriever_name)}:{clean(job or job_id())}:{digest}"


def _ray() -> Any:
    try:
        return optional.ray()
    except MissingDependencyError:
        raise TransportError("backend='ray' needs Ray: pip install 'medret[ray]'") from None


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
        except Exception:  # noqa: BLE001 - nothing to undo; the connection error below is the one to report
            pass
        raise TransportError(f"cannot connect to the Ray cluster at ray_address={addr!r}: {e}; start one with "
                             "`ray start --head` (or let the SLURM job do it) and pass its address") from None
    return ray


def _match_ray_start_auth() -> None:
    """Use token authentication exactly when `ray start` does: if RAY_AUTH_MODE is unset and a token exists.

    (Recent Ray enables tokens in `ray start` when ~/.ray/auth_token exists, but a driver connecting to an
    explicit address does not, and is then refused by the cluster.) This is the one place medret answers Ray's
    authentication question: with RAY_AUTH_MODE unset and a token present, token mode is chosen here, silently,
    instead of through Ray's helper, which logs "Token authentication is enabled for this Ray cluster" on every
    connection (every `medret ray up/info/down`). A RAY_AUTH_MODE the user set is respected as it is; errors
    (a cluster that refuses the token, a token that is missing) still come from Ray when connecting."""
    mode = os.environ.get("RAY_AUTH_MODE")
    if mode is not None and mode.lower() != "token":
        return
    try:
        auth = optional.load("ray._private.authentication.authentication_token_setup", "ray")
    except MissingDependencyError:  # a Ray without token authentication
        return
    try:
        if mode is None:
            if not auth.AuthenticationTokenLoader.instance().has_token(ignore_auth_mode=True):
                return  # no token: the cluster was started without one (`ray start` does the same)
            logger.debug("Ray: token authentication, as `ray start` chose it (a token exists; set RAY_AUTH_MODE "
                         "to decide otherwise)")
        auth._enable_token_auth()  # sets RAY_AUTH_MODE=token for this process and its children
    except Exception:  # never block a connection on this check
        logger.debug("token auth probe failed", exc_info=True)


def _node_context(ray: Any) -> dict[str, Any]:
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


class RayShardHost:
    """Shard workers (:class:`medret.index.sharded.DenseShard`) as detached Ray actors named after the retriever
    actor (``<name>#shard<i>.<j>``), one per GPU: ``shard_options[j]`` are Ray options of shard ``j`` (and its
    device under the key ``_device``)."""

    def __init__(self, name: str, shard_options: list[dict[str, Any]] | None = None,
                 actor_options: dict[str, Any] | None = None):
        self.name = name
        self.shard_options = shard_options or []
        self.actor_options = actor_options or {}
        self.started = 0  # indexes sharded so far: each gets its own actors

    def start(self, shards: list[dict[str, Any]]) -> list[Any]:
        ray = _ray()
        cls = remote_class(DenseShard)
        handles = []
        for j, kw in enumerate(shards):
            opts = dict(self.shard_options[j % len(self.shard_options)]) if self.shard_options else {}
            device = opts.pop("_device", None)
            # a restarted retriever actor (ray_max_restarts) finds its shards, which outlive it, by name
            opts = {"name": f"{self.name}#shard{self.started}.{j}", "lifetime": "detached", "get_if_exists": True,
                    **self.actor_options, **opts}
            if not self.name:
                for key in ("name", "lifetime", "get_if_exists"):
                    opts.pop(key)
            handles.append(cls.options(**opts).remote(**({**kw, "device": device} if device else kw)))
        self.started += 1
        ray.get([h.describe.remote() for h in handles])  # surface construction errors now
        return handles

    def call(self, workers: list[Any], method: str, *args: Any) -> list[Any]:
        ray = _ray()
        refs = [ray.put(a) if isinstance(a, np.ndarray) else a for a in args]  # one copy of the queries for all
        return ray.get([getattr(w, method).remote(*refs) for w in workers])

    def close(self, workers: list[Any]) -> None:
        ray = _ray()
        for w in workers:
            try:
                ray.kill(w)
            except Exception:  # already gone
                logger.debug("shard actor already gone", exc_info=True)


_REMOTE_CLASSES: dict[type, Any] = {}


def remote_class(cls: type) -> Any:
    """``ray.remote(cls)``, made once per class (Ray is imported only when an actor is first needed)."""
    if cls not in _REMOTE_CLASSES:
        _REMOTE_CLASSES[cls] = _ray().remote(cls)
    return _REMOTE_CLASSES[cls]


class RetrieverActor:
    """The engine in a Ray actor (built through :func:`actor_class`). A sharded engine's shard workers are Ray
    actors too (:class:`RayShardHost`); the engine itself decides everything else, as in any process."""

    def __init__(self, config: dict[str, Any], name: str, shard_options: list[dict[str, Any]] | None = None):
        cfg = RetrieverConfig.from_mapping({**config, "backend": "local"})
        self.name = name
        shards = self.shard_plan(cfg, name, shard_options)
        self.local = LocalTransport(cfg, engine=Engine(cfg, shards=shards))
        self.where = _node_context(_ray())

    def shard_plan(self, cfg: RetrieverConfig, name: str, shard_options: list[dict[str, Any]] | None
                   ) -> Shards | None:
        if cfg.ray_shards <= 1:
            return None
        return Shards(cfg.ray_shards, RayShardHost(name, shard_options or []))

    def search(self, queries: list[str], k: int) -> list[list[dict]]:
        return self.local.search(queries, k)

    def info(self) -> dict[str, Any]:
        info = dict(self.local.info())
        info["ray"] = {"actor": self.name, **self.where}
        sharded = self.local.engine.sharded()
        if sharded:
            info["ray"]["shards"] = [ix.describe() for ix in sharded]
        return info

    def ping(self) -> bool:
        return True

    def shutdown(self) -> None:
        for ix in self.local.engine.sharded():
            ix.close()


class RayTransport(BaseTransport):
    """``search / info / close`` through the job's retriever actor (created on first use unless ``create=False``).

    ``config``: the engine the actor runs (and its name); ``options``: the Ray transport's own (address, namespace,
    placement, GPUs, shards, job; default: those in ``config``)."""

    backend = "ray"

    @classmethod
    def from_config(cls, config: Any) -> "RayTransport":
        return cls(config, RayOptions.of(config))

    @classmethod
    def needs(cls, dense: bool) -> dict[str, str]:
        return {"ray": "ray"}  # the actor's own packages are checked where it runs

    @classmethod
    def where(cls, config: Any) -> str:
        return f"{super().where(config)} in Ray actor {actor_base_name(config)}"

    def __init__(self, config: RetrieverConfig, options: RayOptions | None = None, create: bool = True,
                 ready_timeout: float | None = None):
        if options is not None:
            config = config.replace(**options.to_dict())
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
                                "get_if_exists": True, "max_restarts": cfg.ray_max_restarts}
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
            strategies = optional.load("ray.util.scheduling_strategies", "ray")
            opts["scheduling_strategy"] = strategies.NodeAffinitySchedulingStrategy(node_id=self.node_id, soft=False)
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
            actor = remote_class(RetrieverActor)
            handle = actor.options(**self._options()).remote(cfg, self.name, self._shard_options())
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
            cause = e.as_instanceof_cause()
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
    list_named_actors = optional.load("ray.util", "ray").list_named_actors
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
