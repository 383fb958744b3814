"""`medret bench`: backends (local, http, ray) side by side on one corpus and model.

For each backend: start-up time to first answer (in a fresh child process: ``python -m medret.bench.probe`` for
local and ray, ``medret serve`` for http), then for each batch size p50/p95 latency of ``retrieve(batch, topk)``
and queries/s, the share of time spent in the engine's encoder + index search (local only), and peak RSS.
``dup_ratio`` makes batches repeat queries the way GRPO groups do (a group of rollouts shares its first query).
Results come back as a dict, and are written as JSON, a markdown table and a PNG plot.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from medret import optional, options
from medret.api import Retriever
from medret.config import EngineOptions, RetrieverConfig
from medret.corpus.registry import resolve_corpus
from medret.corpus.store import open_corpus_store
from medret.errors import ConfigError, MissingDependencyError
from medret.storage.atomic import atomic_path, atomic_write_text
from medret.transports import TRANSPORTS, transport_class
from medret.transports.local import LocalTransport
from medret.validate import check_whole

log = logging.getLogger(__name__)

DEFAULT_BATCHES = (1, 8, 64, 512, 2560)


@dataclass
class BenchConfig:
    corpus: str = "sample"
    retriever: str = "BM25"
    db_dir: str | None = None
    backends: Sequence[str] = ("local", "http", "ray")
    batch_sizes: Sequence[int] = DEFAULT_BATCHES
    topk: int = 5
    dup_ratio: float = 0.0
    repeats: int = 5
    min_repeats: int = 1
    max_seconds: float = 20.0  # per (backend, batch size): stop repeating after this, once min_repeats are done
    queries: Sequence[str] | None = None
    seed: int = 0
    measure_startup: bool = True
    startup_timeout: float = 600.0
    options: dict[str, Any] = field(default_factory=dict)  # other RetrieverConfig fields (pooling, device, ...)

    def __post_init__(self) -> None:
        bad = [b for b in self.backends if b not in TRANSPORTS]
        if bad or not self.backends:
            raise ConfigError(f"backends={list(self.backends)!r} is invalid: choose from {', '.join(TRANSPORTS)}")
        if not self.batch_sizes or any(not isinstance(b, int) or b < 1 for b in self.batch_sizes):
            raise ConfigError(f"batch_sizes={list(self.batch_sizes)!r} is invalid: positive whole numbers, e.g. 1,8,64")
        if not 0.0 <= self.dup_ratio < 1.0:
            raise ConfigError(f"dup_ratio={self.dup_ratio!r} is invalid: a fraction from 0 (all queries distinct) "
                              f"to below 1 (e.g. 0.875 for GRPO groups of 8 sharing one query)")
        for name in ("topk", "repeats", "min_repeats"):
            check_whole(name, getattr(self, name))

    def retriever_kwargs(self) -> dict[str, Any]:
        return {"corpus_name": self.corpus, "retriever_name": self.retriever, "db_dir": self.db_dir, **self.options}


# ---------------------------------------------------------------------------------------------- queries


def make_batch(pool: Sequence[str], size: int, dup_ratio: float, start: int = 0) -> list[str]:
    """``size`` queries of which ``ceil(size·(1 − dup_ratio))`` are distinct, each repeated in a consecutive group."""
    if not pool:
        raise ConfigError("the query pool is empty: pass queries or a corpus with text")
    n_unique = max(1, math.ceil(size * (1.0 - dup_ratio) - 1e-9))
    unique = [pool[(start + i) % len(pool)] for i in range(n_unique)]
    base, extra = divmod(size, n_unique)
    out: list[str] = []
    for i, q in enumerate(unique):
        out.extend([q] * (base + (1 if i < extra else 0)))
    return out


def queries_from_corpus(corpus: str, db_dir: str | None, n: int, seed: int = 0) -> list[str]:
    """``n`` distinct pseudo-queries: windows of 5-12 words from random snippets of the corpus."""
    store = open_corpus_store(resolve_corpus(corpus, db_dir))
    try:
        rng = random.Random(seed)
        out: dict[str, None] = {}
        tries = 0
        while len(out) < n and tries < 20 * n:
            tries += 1
            d = store.get([rng.randrange(len(store))])[0]
            words = (d["title"] + " " + d["content"]).split()
            if len(words) < 3:
                continue
            w = rng.randint(5, 12)
            s = rng.randrange(max(1, len(words) - w))
            q = " ".join(words[s:s + w]).strip()
            if q:
                out.setdefault(q, None)
        return list(out)
    finally:
        store.close()


# ---------------------------------------------------------------------------------------------- processes

BENCH_EXTRA = ("psutil", "matplotlib")  # medret[bench]: memory readings and the plot


def require_bench_extra() -> None:
    """Before anything runs: the packages of ``medret[bench]`` are importable, or one error naming the extra."""
    missing = []
    for m in BENCH_EXTRA:
        try:
            importlib.import_module(m)
        except ImportError:
            missing.append(m)
    if missing:
        raise MissingDependencyError(
            f"medret bench needs {' and '.join(missing)} (memory readings, bench.png), not installed here: "
            f"pip install 'medret[bench]'")



def rss_bytes() -> int:
    return int(optional.psutil().Process().memory_info().rss)


def peak_rss_bytes(pid: int | None = None) -> int:
    """Peak resident set size (VmHWM) of a process; of this process by default."""
    try:
        for line in Path(f"/proc/{pid or 'self'}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    if pid is None:  # no /proc: ru_maxrss (KiB on Linux; note it includes the parent's peak before an exec)
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
    return -1


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def probe_startup(kwargs: dict[str, Any], query: str, topk: int, timeout: float) -> dict[str, Any]:
    """Start-up to first answer of a fresh process (interpreter start included) and its peak RSS."""
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "medret.bench.probe", json.dumps(kwargs), query, str(topk)],
                          capture_output=True, text=True, timeout=timeout, env=_child_env())
    if proc.returncode != 0:
        raise RuntimeError(f"start-up probe failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["startup_s"] = out.pop("answered_at") - t0
    return out


class Server:
    """``medret serve`` in a child process, for the http backend."""

    def __init__(self, kwargs: dict[str, Any], timeout: float):
        self.dir = tempfile.TemporaryDirectory(prefix="medret-bench-")
        self.address_file = os.path.join(self.dir.name, "address")
        config = RetrieverConfig.from_mapping(kwargs)
        args = [sys.executable, "-m", "medret.cli", "serve", "--address-file", self.address_file, "--port", "0",
                "--log-level", "warning", "--corpus", config.corpus_name, "--retriever", config.retriever_name,
                *options.argv(EngineOptions.of(config), exclude=("corpus_name", "retriever_name"))]
        self.log = open(os.path.join(self.dir.name, "server.log"), "w")
        self.t0 = time.time()
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, env=_child_env())
        deadline = time.time() + timeout
        while not os.path.exists(self.address_file):
            if self.proc.poll() is not None:
                raise RuntimeError(f"medret serve exited with {self.proc.returncode}: {self.tail()}")
            if time.time() > deadline:
                self.close()
                raise RuntimeError(f"medret serve did not start within {timeout}s: {self.tail()}")
            time.sleep(0.02)

    def tail(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text()[-2000:]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        self.dir.cleanup()


def available(backend: str) -> str | None:
    """None when the backend can run here, else why not: the transport's own packages and, for a remote one, the
    server this benchmark starts for it."""
    cls = transport_class(backend)
    wanted = [(d, f" (pip install 'medret[{extra}]')") for d, extra in cls.needs(dense=False).items()]
    if cls.remote:
        wanted += [(m, "") for m in ("medret.serve.server", "uvicorn", "starlette")]
    for mod, fix in wanted:
        if importlib.util.find_spec(mod) is None:
            return f"{mod} is not installed{fix}"
    return None


# ---------------------------------------------------------------------------------------------- timing


def _percentile(values: list[float], p: float) -> float:
    v = sorted(values)
    if not v:
        return float("nan")
    pos = (len(v) - 1) * p / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


class _EngineClock:
    """Accumulates time spent in ``engine.search_rows`` (encoder + index search + fusion) of a local retriever."""

    def __init__(self, engine: Any):
        self.engine = engine
        self.inner = engine.search_rows
        self.seconds = 0.0

        def timed(queries, k):
            t = time.perf_counter()
            try:
                return self.inner(queries, k)
            finally:
                self.seconds += time.perf_counter() - t

        engine.search_rows = timed

    def restore(self) -> None:
        self.engine.search_rows = self.inner


def time_batches(retriever: Any, cfg: BenchConfig, pool: Sequence[str], engine: Any = None) -> list[dict[str, Any]]:
    rows = []
    clock = _EngineClock(engine) if engine is not None else None
    cursor = 0
    try:
        for b in cfg.batch_sizes:
            lat: list[float] = []
            engine_s = 0.0
            t_start = time.perf_counter()
            while len(lat) < cfg.repeats and (len(lat) < cfg.min_repeats
                                               or time.perf_counter() - t_start < cfg.max_seconds):
                batch = make_batch(pool, b, cfg.dup_ratio, cursor)
                cursor += max(1, math.ceil(b * (1.0 - cfg.dup_ratio)))
                if clock:
                    clock.seconds = 0.0
                t = time.perf_counter()
                res = retriever.retrieve(batch, topk=cfg.topk)
                lat.append(time.perf_counter() - t)
                if clock:
                    engine_s += clock.seconds
                if len(res["result"]) != b:
                    raise RuntimeError(f"backend answered {len(res['result'])} rows for a batch of {b}")
            total = sum(lat)
            row = {"batch": b, "unique": max(1, math.ceil(b * (1.0 - cfg.dup_ratio) - 1e-9)), "runs": len(lat),
                   "p50_ms": 1000 * _percentile(lat, 50), "p95_ms": 1000 * _percentile(lat, 95),
                   "qps": b * len(lat) / total if total > 0 else float("inf"),
                   "latencies_ms": [round(1000 * x, 4) for x in lat]}
            if clock:
                row["engine_frac"] = engine_s / total if total > 0 else float("nan")
            row["unique"] = len(set(batch))
            rows.append(row)
            log.info("bench batch %d: %s", b, row)
    finally:
        if clock:
            clock.restore()
    return rows


# ---------------------------------------------------------------------------------------------- runs


def run_backend(backend: str, cfg: BenchConfig, pool: Sequence[str]) -> dict[str, Any]:
    kwargs = cfg.retriever_kwargs()
    out: dict[str, Any] = {"backend": backend}
    why = available(backend)
    if why:
        out["skipped"] = why
        return out
    server = None
    retriever = None
    try:
        if transport_class(backend).remote:  # a server to search: started here, timed from its start
            server = Server(kwargs, cfg.startup_timeout)
            config = RetrieverConfig.from_mapping({**kwargs, "backend": "http", "address_file": server.address_file,
                                                   "timeout": 600.0})
            retriever = Retriever(config)
            retriever.retrieve([pool[0]], topk=cfg.topk)
            out["startup_s"] = time.time() - server.t0
        else:
            if cfg.measure_startup:
                probe = probe_startup({**kwargs, "backend": backend}, pool[0], cfg.topk, cfg.startup_timeout)
                out["startup_s"] = probe["startup_s"]
                out["startup_peak_rss_bytes"] = probe["peak_rss_bytes"]
            config = RetrieverConfig.from_mapping({**kwargs, "backend": backend})
            t = time.perf_counter()
            retriever = Retriever(config)
            retriever.retrieve([pool[0]], topk=cfg.topk)
            out["inprocess_startup_s"] = time.perf_counter() - t
        retriever.retrieve(make_batch(pool, min(8, len(pool)), 0.0, 1), topk=cfg.topk)  # warm-up
        # the engine share of the time is measured in-process only
        engine = retriever.transport.engine if isinstance(retriever.transport, LocalTransport) else None
        out["info"] = retriever.info()
        out["rows"] = time_batches(retriever, cfg, pool, engine)
        out["client_rss_bytes"] = rss_bytes()
        out["client_peak_rss_bytes"] = peak_rss_bytes()
        if server is not None:
            out["server_peak_rss_bytes"] = peak_rss_bytes(server.proc.pid)
    except Exception as e:  # one backend failing must not lose the others' numbers
        log.exception("bench backend %s failed", backend)
        out["error"] = f"{type(e).__name__}: {e}"
    finally:
        if retriever is not None:
            retriever.close()
        if server is not None:
            server.close()
    return out


def run_bench(cfg: BenchConfig) -> dict[str, Any]:
    """Run every backend in ``cfg`` and return the results (see :func:`format_table`)."""
    need = max(cfg.batch_sizes) * cfg.repeats + 16
    pool = list(dict.fromkeys(cfg.queries)) if cfg.queries else []
    if len(pool) < need:  # top up with pseudo-queries from the corpus so big batches are not silently repeated
        seen = set(pool)
        pool += [q for q in queries_from_corpus(cfg.corpus, cfg.db_dir, need - len(pool), cfg.seed) if q not in seen]
    if not pool:
        raise ConfigError("no queries: pass queries or use a corpus with text")
    # one fixed shuffle: every batch size draws the same mix of given queries and corpus pseudo-queries
    random.Random(cfg.seed).shuffle(pool)
    # build whatever the retriever needs (store, indexes) once, before any start-up is timed
    t = time.perf_counter()
    prep = Retriever(RetrieverConfig.from_mapping({**cfg.retriever_kwargs(), "backend": "local"}))
    prep.retrieve([pool[0]], topk=cfg.topk)
    info = prep.info()
    prep.close()
    prepare_s = time.perf_counter() - t
    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": _machine(),
               "python": platform.python_version(),
               "config": {k: v for k, v in asdict(cfg).items() if k != "queries"}, "query_pool": len(pool),
               "prepare_s": prepare_s, "info": info, "backends": []}
    for b in cfg.backends:
        results["backends"].append(run_backend(b, cfg, pool))
    _overheads(results)
    return results


def _overheads(results: dict[str, Any]) -> None:
    """Relative p50 overhead of each remote backend over local, per batch size."""
    local = next((b for b in results["backends"] if b["backend"] == "local" and "rows" in b), None)
    if not local:
        return
    base = {r["batch"]: r["p50_ms"] for r in local["rows"]}
    for b in results["backends"]:
        if b["backend"] == "local" or "rows" not in b:
            continue
        for r in b["rows"]:
            if base.get(r["batch"]):
                r["overhead_vs_local"] = r["p50_ms"] / base[r["batch"]] - 1.0


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem = f"{optional.psutil().virtual_memory().total / 2**30:.0f} GiB RAM"
    except ImportError:
        mem = ""
    gpu = ""
    try:
        torch = optional.torch()
        if torch.cuda.is_available():
            gpu = ", " + torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return f"{os.cpu_count()} CPUs ({cpu}), {mem}{gpu}"


# ---------------------------------------------------------------------------------------------- output


def _mb(b: Any) -> str:
    return f"{b / 2**20:,.0f}" if isinstance(b, (int, float)) and b >= 0 else "-"


def format_table(results: dict[str, Any]) -> str:
    c = results["config"]
    lines = [f"medret bench — corpus {c['corpus']}, retriever {c['retriever']}, topk {c['topk']}, "
             f"dup_ratio {c['dup_ratio']}, {results['info'].get('n_docs', '?')} docs, device "
             f"{results['info'].get('device', '?')}", f"machine: {results['machine']}", "",
             "| backend | start-up to first answer (s) | batch | unique | runs | p50 ms | p95 ms | queries/s "
             "| engine share | overhead vs local | peak RSS MiB (client / server or start-up) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for b in results["backends"]:
        if "rows" not in b:
            why = "skipped: " + b["skipped"] if "skipped" in b else "error: " + b.get("error", "?")
            lines.append(f"| {b['backend']} | {why} | | | | | | | | | |")
            continue
        other = b.get("server_peak_rss_bytes", b.get("startup_peak_rss_bytes"))
        for i, r in enumerate(b["rows"]):
            su = f"{b['startup_s']:.2f}" if i == 0 and "startup_s" in b else ""
            eng = f"{100 * r['engine_frac']:.1f} %" if "engine_frac" in r else ""
            ov = f"{100 * r['overhead_vs_local']:+.1f} %" if "overhead_vs_local" in r else ""
            rss = f"{_mb(b.get('client_peak_rss_bytes'))} / {_mb(other)}" if i == 0 else ""
            lines.append(f"| {b['backend']} | {su} | {r['batch']} | {r['unique']} | {r['runs']} | {r['p50_ms']:.1f} "
                         f"| {r['p95_ms']:.1f} | {r['qps']:.1f} | {eng} | {ov} | {rss} |")
        if "error" in b:  # failed after its timings: they stand, and the failure is listed with them
            lines.append(f"| {b['backend']} | error after timing: {b['error']} | | | | | | | | | |")
    return "\n".join(lines)


def plot(results: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    plt = optional.pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for b in results["backends"]:
        if "rows" not in b:
            continue
        xs = [r["batch"] for r in b["rows"]]
        a1.plot(xs, [r["p50_ms"] for r in b["rows"]], marker="o", label=b["backend"])
        a2.plot(xs, [r["qps"] for r in b["rows"]], marker="o", label=b["backend"])
    for ax, title, ylab in ((a1, "p50 latency per batch", "ms"), (a2, "throughput", "queries/s")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.set_ylabel(ylab)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    c = results["config"]
    fig.suptitle(f"medret bench: {c['corpus']} / {c['retriever']}, topk {c['topk']}, dup {c['dup_ratio']}")
    fig.tight_layout()

    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


def write_outputs(results: dict[str, Any], out_dir: str | os.PathLike[str], stem: str = "bench") -> dict[str, Path]:
    """Write ``stem``.json, .md and .png; the paths written (no "png" when matplotlib is missing: logged)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{stem}.json", "md": out / f"{stem}.md", "png": out / f"{stem}.png"}
    atomic_write_text(paths["json"], json.dumps(results, indent=2, default=str))
    atomic_write_text(paths["md"], format_table(results) + "\n")
    try:
        plot(results, paths["png"])
    except MissingDependencyError as e:
        log.warning("%s not written: %s", paths.pop("png"), e)
    return paths
