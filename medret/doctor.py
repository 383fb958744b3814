"""`medret doctor`: check a set-up end to end before a long job starts.

Every check is data: a :class:`Check` with a status (``ok`` / ``warn`` / ``fail``), a one-line title, a detail and
the fix. :func:`run_checks` runs them in order for a :class:`DoctorOptions`; ``exit_status`` is 1 when anything
failed. The checks call the components they check (corpus registry, document store, index loaders, device
resolution, encoder loader, retriever, the Search-R1 patcher's ``check``, the SLURM script checker) rather than
re-deriving their rules, so the doctor and the real run agree.
"""
from __future__ import annotations

import json
import logging
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

from medret.errors import ConfigError, MedretError

logger = logging.getLogger(__name__)

OK, WARN, FAIL = "ok", "warn", "fail"
MIN_PYTHON = (3, 9)  # Search-R1's trainer environment; pyproject's requires-python
# Counting lines of bigger chunk folders takes minutes (PubMed is 70 GB); their row count comes from the store.
COUNT_LINES_MAX_BYTES = 2 * 1024**3
MEMORY_WARN_FRACTION = 0.8


@dataclass(frozen=True)
class Check:
    """One line of the checklist."""

    key: str  # stable identifier: python, packages, torch, gpu, corpus, store, index, memory, encoder, search, ...
    status: str  # ok | warn | fail
    title: str
    detail: str = ""
    fix: str = ""

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass
class DoctorOptions:
    config: Any = None  # medret.config.RetrieverConfig, or None when only environment checks are wanted
    searchr1: str | None = None
    sbatch: str | None = None
    query: str = "What is the first-line treatment of type 2 diabetes?"
    search: bool = True  # load the retriever and run the test query
    deep: bool = False  # hash every file against its manifest, whatever its size (medret.integrity_checks)
    config_error: str | None = None  # the configuration itself was invalid
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_args(cls, args: Any) -> "DoctorOptions":
        """Build from `medret doctor` flags: a --config file first, explicit flags over it."""
        from medret.config import ENCODER_OPTION_NAMES, RetrieverConfig

        data: dict[str, Any] = {}
        error = None
        try:
            if args.config:
                data.update(load_config_file(args.config))
            flags = {"corpus_name": (args.corpus, "sample"), "retriever_name": (args.retriever, "BM25"),
                     "db_dir": (args.db_dir, None), "cache_dir": (args.cache_dir, None),
                     "device": (args.device, None), "gpu_id": (args.gpu_id, None),
                     "allow_cpu_fallback": (args.allow_cpu_fallback, False),
                     "query_model": (args.query_model, None), "doc_model": (args.doc_model, None),
                     "models_dir": (args.models_dir, None),
                     "batch_size": (args.batch_size, 256), "rrf_k": (args.rrf_k, 100),
                     "backend": (args.backend, None), "url": (args.url, None),
                     "address_file": (args.address_file, None)}
            flags.update({k: (getattr(args, k, None), None) for k in ENCODER_OPTION_NAMES})
            for key, (value, default) in flags.items():
                if value != default or (key not in data and default is not None):
                    data[key] = value
            config = RetrieverConfig.from_mapping(data)
        except MedretError as e:
            config, error = None, str(e)
        return cls(config=config, searchr1=args.searchr1, sbatch=args.sbatch, query=args.query,
                   search=not args.no_search, config_error=error, deep=bool(getattr(args, "deep", False)))


def load_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Retriever settings from a YAML/JSON file; a Search-R1/hydra file's ``retriever:`` block is used as is."""
    p = Path(path).expanduser()
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError(f"--config={str(p)!r} cannot be read ({e.strerror}); give a YAML or JSON file") from None
    try:
        if p.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as e:  # noqa: BLE001 - yaml and json raise different types
        raise ConfigError(f"--config={str(p)!r} is not valid YAML/JSON ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config={str(p)!r} must hold a mapping of retriever settings")
    if isinstance(data.get("retriever"), dict):
        data = data["retriever"]
    return dict(data)


# --------------------------------------------------------------------------------------------------------------------
# Environment


def check_python() -> list[Check]:
    v = sys.version_info
    title = f"Python {platform.python_version()} ({sys.executable})"
    if (v.major, v.minor) < MIN_PYTHON:
        return [Check("python", FAIL, title, "medret needs Python >= 3.9",
                      "use a Python 3.9+ environment (e.g. `conda create -n medret python=3.11`)")]
    return [Check("python", OK, title)]


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def needs(config: Any) -> dict[str, str]:
    """The optional packages this configuration uses, with the extra that installs them."""
    out: dict[str, str] = {}
    if config is None:
        return out
    from medret.engine import retriever_parts

    try:
        parts = retriever_parts(config.retriever_name)
    except MedretError:
        parts = ()
    if config.backend == "local" and any(p != "bm25" for p in parts):
        out.update({"torch": "dense", "transformers": "dense", "faiss-cpu": "dense"})
    if config.backend == "ray":
        out["ray"] = "ray"
    return out


def check_packages(config: Any) -> list[Check]:
    from medret import __version__

    core = ["numpy", "bm25s", "PyStemmer", "orjson", "tqdm", "PyYAML"]
    optional = ["torch", "transformers", "faiss-cpu", "faiss-gpu", "huggingface_hub", "starlette", "uvicorn", "httpx",
                "ray"]
    missing_core = [d for d in core if _version(d) is None]
    wanted = needs(config)
    if "faiss-cpu" in wanted and _version("faiss-gpu") is not None:
        wanted.pop("faiss-cpu")
    missing_needed = [d for d in wanted if _version(d) is None]
    shown = ", ".join(f"{d} {_version(d)}" for d in core + optional if _version(d) is not None)
    if missing_core or missing_needed:
        extras = sorted({wanted[d] for d in missing_needed})
        fix = "pip install 'medret" + (f"[{','.join(extras)}]" if extras else "") + "'"
        return [Check("packages", FAIL, f"missing packages: {', '.join(missing_core + missing_needed)}", shown, fix)]
    return [Check("packages", OK, f"packages: medret {__version__} ({Path(__file__).parent})", shown)]


def check_torch(config: Any) -> list[Check]:
    try:
        import torch
    except ImportError:
        dense = "torch" in needs(config)
        return [Check("torch", FAIL if dense else OK, "PyTorch not installed",
                      "needed only for dense retrievers (MedCPT, Contriever, SPECTER, e5)",
                      "pip install 'medret[dense]'" if dense else "")]
    cuda = getattr(torch.version, "cuda", None)
    try:
        available = bool(torch.cuda.is_available())
        count = int(torch.cuda.device_count()) if available else 0
    except Exception as e:  # noqa: BLE001 - a broken driver raises many things
        return [Check("torch", FAIL, f"torch {torch.__version__}: CUDA probing failed", str(e),
                      "check the NVIDIA driver (`nvidia-smi`) and that torch's CUDA version suits it")]
    if cuda is None:
        return [Check("torch", OK, f"torch {torch.__version__} (CPU-only build)",
                      "dense search runs on CPU; for GPUs install a CUDA build of torch")]
    return [Check("torch", OK, f"torch {torch.__version__}, CUDA {cuda}, {count} GPU(s) usable",
                  f"cuda available: {available}")]


def _visible_gpus() -> list[dict[str, Any]]:
    try:
        import torch

        if not torch.cuda.is_available():
            return []
        out = []
        for i in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(i)
            out.append({"index": i, "name": torch.cuda.get_device_name(i), "free": int(free), "total": int(total)})
        return out
    except Exception:  # noqa: BLE001
        logger.debug("GPU listing failed", exc_info=True)
        return []


def check_gpus(config: Any) -> list[Check]:
    from medret.device import FIX_HINT, parse_visible_devices, resolve_device
    from medret.errors import DeviceError

    raw = os.environ.get("CUDA_VISIBLE_DEVICES")
    visible = parse_visible_devices(raw)
    gpus = _visible_gpus()
    listing = "; ".join(f"cuda:{g['index']} {g['name']} ({_gb(g['free'])} free of {_gb(g['total'])})" for g in gpus)
    cvd = f"CUDA_VISIBLE_DEVICES={raw!r}" if raw is not None else "CUDA_VISIBLE_DEVICES unset"
    device = None
    if config is not None:
        try:
            device = resolve_device(config.device, config.gpu_id, config.allow_cpu_fallback)
        except (DeviceError, ConfigError) as e:
            return [Check("gpu", FAIL, f"{len(gpus)} GPU(s) visible, {cvd}: the configured device is not usable",
                          str(e), FIX_HINT)]
    detail = listing or "no GPU visible"
    if visible == []:
        return [Check("gpu", WARN, f"no GPU visible: {cvd} hides every GPU",
                      "Ray sets it so for tasks and actors without num_gpus; retrieval will run on CPU"
                      + (f" (device {device})" if device else ""), FIX_HINT)]
    title = f"{len(gpus)} GPU(s) visible ({cvd})" + (f"; retrieval device {device}" if device else "")
    return [Check("gpu", OK, title, detail)]


def _gb(n: float) -> str:
    """A byte count for people: binary units, one decimal."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


# --------------------------------------------------------------------------------------------------------------------
# Corpus, store, indexes, memory


def _corpus(config: Any) -> tuple[Any, Check | None]:
    from medret.corpus.registry import resolve_corpus

    try:
        return resolve_corpus(config.corpus_name, config.db_dir, config.cache_dir), None
    except MedretError as e:
        return None, Check("corpus", FAIL, f"corpus {config.corpus_name!r} not found", str(e),
                           _download_fix(config.corpus_name, config.db_dir))


def _download_fix(name: str, db_dir: str | None) -> str:
    from medret.corpus.registry import DISPLAY, SOURCES

    key = str(name).lower()
    if key in SOURCES:
        return f"medret corpus download {DISPLAY[key]} --db-dir {db_dir or 'DIR'}"
    return "give --corpus one of PubMed, StatPearls, Textbooks, Wikipedia, MedText, MedCorp, sample, or a folder"


def check_corpus(config: Any) -> list[Check]:
    from medret.corpus.download import is_lfs_pointer
    from medret.corpus.reader import count_lines
    from medret.corpus.registry import KNOWN_ROWS

    corpus, err = _corpus(config)
    if err is not None:
        return [err]
    checks = []
    fix = _download_fix(config.corpus_name, config.db_dir)
    for src in corpus.sources:
        files = list(src.chunk_files)
        pointers = [p for p in files if is_lfs_pointer(p)]
        size = sum(p.stat().st_size for p in files)
        where = files[0].parent if files else src.name
        if pointers:
            checks.append(Check(
                "corpus", FAIL, f"corpus {src.name}: {len(pointers)} of {len(files)} chunk files are git-lfs pointers",
                f"e.g. {pointers[0]} holds a pointer, not data (cloned with git, never `git lfs pull`ed)", fix))
            continue
        bad = _first_bad_line(files)
        if bad:
            checks.append(Check("corpus", FAIL, f"corpus {src.name}: chunk file is not MedRAG JSON lines", bad, fix))
            continue
        mismatch = _download_mismatch(src)
        if mismatch:
            checks.append(Check("corpus", FAIL, f"corpus {src.name}: files differ from what was downloaded",
                                mismatch, fix))
            continue
        rows = None
        manifest = src.store_dir / "manifest.json"
        if manifest.is_file():
            try:
                rows = int(json.loads(manifest.read_text())["rows"])
            except (OSError, ValueError, KeyError):
                rows = None
        if rows is None and size <= COUNT_LINES_MAX_BYTES:
            rows = sum(count_lines(p) for p in files)
        expected = KNOWN_ROWS.get(src.name)
        title = f"corpus {src.name}: {len(files)} chunk files, {_gb(size)}, " + (
            f"{rows:,} snippets" if rows is not None else "snippets not counted yet (build the store)")
        if rows is not None and expected and rows != expected:
            checks.append(Check("corpus", WARN, title, f"MedRAG's {src.name} has {expected:,} snippets; this copy "
                                f"has {rows:,} (incomplete download, or another version) in {where}", fix))
        else:
            checks.append(Check("corpus", OK, title, str(where)))
    return checks


def _first_bad_line(files: list[Path]) -> str | None:
    """The first chunk file whose first line is not a JSON object with content(s)."""
    for p in files:
        with open(p, "rb") as f:
            line = f.readline().strip()
        if not line:
            continue
        try:
            obj = json.loads(line)
        except ValueError as e:
            return f"{p}: first line is not JSON ({e})"
        if not isinstance(obj, dict) or not ({"content", "contents"} & set(obj)):
            return f'{p}: first line has no "content"/"contents" field'
    return None


def _download_mismatch(src: Any) -> str | None:
    """Files listed in ``medret corpus download``'s manifest whose size changed since."""
    from medret.corpus.download import MANIFEST

    path = src.root / MANIFEST
    if not path.is_file():
        return None
    try:
        files = json.loads(path.read_text()).get("files", {})
    except (OSError, ValueError):
        return None
    by_name = {p.name: p for p in src.chunk_files}
    bad = []
    for name, entry in files.items():
        p = by_name.get(name)
        if p is None:
            bad.append(f"{name} is missing")
        elif p.stat().st_size != entry.get("size"):
            bad.append(f"{name} has {p.stat().st_size} bytes, the hub's file {entry.get('size')}")
    return "; ".join(bad[:5]) + (f" (and {len(bad) - 5} more)" if len(bad) > 5 else "") if bad else None


@dataclass
class _Need:
    what: str
    nbytes: int
    where: str  # "host" or a device string


def check_store_and_indexes(config: Any) -> tuple[list[Check], list[_Need], bool]:
    """Store and index lines, the memory each piece takes, and whether a test query can run without building."""
    from medret.corpus.store import DocStore, UnionStore
    from medret.engine import retriever_parts

    corpus, err = _corpus(config)
    if err is not None:
        return [], [], False
    checks: list[Check] = []
    needs_: list[_Need] = []
    ready = True
    name = corpus.display_name
    import shlex

    from medret.config import encoder_argv

    model_flags = [f"--{k.replace('_', '-')}={getattr(config, k)}" for k in ("query_model", "doc_model")
                   if getattr(config, k)] + encoder_argv(config.to_dict())
    build = (f"medret index build --corpus {name} --retriever {config.retriever_name}"
             + (f" --db-dir {config.db_dir}" if config.db_dir else "") + "".join(" " + shlex.quote(f)
                                                                                for f in model_flags))
    stores = []
    for src in corpus.sources:
        try:
            store = DocStore.open(src, build=False)
        except MedretError as e:
            missing = not (src.store_dir / "manifest.json").exists()
            if missing and config.auto_build:
                checks.append(Check("store", WARN, f"document store of {src.name} not built yet",
                                    f"it will be built at {src.store_dir} on first use", build))
            else:
                checks.append(Check("store", FAIL, f"document store of {src.name} is "
                                    + ("missing" if missing else "stale or damaged"), str(e),
                                    build + ("" if missing else " --rebuild")))
            ready = False
            continue
        stores.append(store)
        disk = sum(p.stat().st_size for p in src.store_dir.iterdir() if p.is_file())
        needs_.append(_Need(f"document store {src.name}", disk, "host"))
        checks.append(Check("store", OK, f"document store of {src.name}: {len(store):,} rows, matches the chunk files",
                            f"{src.store_dir} ({_gb(disk)} on disk, read by row)"))
    if not ready:
        for s in stores:
            s.close()
        return checks, needs_, False
    store = stores[0] if len(stores) == 1 else UnionStore(stores)
    try:
        parts = retriever_parts(config.retriever_name)
    except MedretError as e:
        checks.append(Check("index", FAIL, f"retriever {config.retriever_name!r} is unknown", str(e),
                            "give --retriever BM25, MedCPT, Contriever, SPECTER, e5, RRF-2, RRF-4 or a model folder"))
        store.close()
        return checks, needs_, False
    device = _device_or_none(config)
    for part in parts:
        if part == "bm25":
            c, n, ok = _bm25_check(corpus, store, config, build)
        else:
            c, n, ok = _dense_checks(corpus, stores, part, config, build, device)
        checks += c
        needs_ += n
        ready = ready and ok
    store.close()
    return checks, needs_, ready


def _device_or_none(config: Any) -> str | None:
    from medret.device import resolve_device

    try:
        return resolve_device(config.device, config.gpu_id, config.allow_cpu_fallback)
    except MedretError:
        return None


def _bm25_check(corpus: Any, store: Any, config: Any, build: str) -> tuple[list[Check], list[_Need], bool]:
    folder = corpus.artifact_dir / "bm25"
    mpath = folder / "manifest.json"
    if not mpath.is_file():
        if config.auto_build:
            return [Check("index", WARN, f"BM25 index of {corpus.display_name} not built yet",
                          f"it will be built at {folder} on first use", build)], [], False
        return [Check("index", FAIL, f"BM25 index of {corpus.display_name} is missing", str(folder), build)], [], False
    try:
        manifest = json.loads(mpath.read_text())
    except (OSError, ValueError) as e:
        return [Check("index", FAIL, f"BM25 index of {corpus.display_name} is damaged", f"{mpath}: {e}",
                      build + " --rebuild")], [], False
    if manifest.get("store_checksum") != store.checksum or int(manifest.get("rows", -1)) != len(store):
        return [Check("index", FAIL, f"BM25 index of {corpus.display_name} is stale: the corpus changed since it was "
                      "built", f"index: {manifest.get('rows')} rows; corpus now: {len(store)} rows ({folder})",
                      build + " --rebuild")], [], False
    from medret.index.bm25 import check_sizes

    try:
        check_sizes(folder, manifest)
    except MedretError as e:
        return [Check("index", FAIL, f"BM25 index of {corpus.display_name} is damaged", str(e), build + " --rebuild")], \
            [], False
    disk = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    return ([Check("index", OK, f"BM25 index of {corpus.display_name}: {len(store):,} rows, matches the corpus",
                   f"{folder} ({_gb(disk)}, memory-mapped)")], [_Need(f"BM25 {corpus.display_name}", disk, "host")],
            True)


def _dense_checks(corpus: Any, stores: list[Any], part: str, config: Any, build: str,
                  device: str | None) -> tuple[list[Check], list[_Need], bool]:
    from medret.encoders.specs import spec_for
    from medret.index.build import load_dense_index
    from medret.index.dense_searcher import legacy_message, locate
    from medret.index.identity import encoder_identity

    try:
        spec = spec_for(part, config)
        identity = encoder_identity(spec, config.doc_model, config.query_model, config.models_dir)
    except MedretError as e:
        return [Check("index", FAIL, f"dense retriever {part!r} cannot be configured", str(e),
                      "give --like e5|MedCPT|Contriever|SPECTER or --pooling cls|mean for a local model folder")], [], False
    except OSError as e:
        return [Check("index", FAIL, f"the model files of {part!r} cannot be read", str(e),
                      "check the model folder's path and permissions")], [], False
    checks, needs_, ready = [], [], True
    where = device or "cpu"
    for src, store in zip(corpus.sources, stores):
        kind, folder = locate(src, len(store), spec, identity, config)
        if kind in ("own", "copy"):
            try:
                ix = load_dense_index(folder, store, spec, mmap=True, corpus_name=corpus.display_name,
                                      identity=identity)
            except MedretError as e:
                checks.append(Check("index", FAIL, f"{spec.name} index of {src.name} does not match the corpus/model",
                                    str(e), build + " --rebuild"))
                ready = False
                continue
            nbytes = ix.memory_bytes()
            needs_.append(_Need(f"{spec.name} index {src.name}", nbytes, where))
            checks.append(Check("index", OK, f"{spec.name} index of {src.name}: {ix.ntotal:,} vectors x {ix.dim} "
                                f"({ix.index_type}), matches the corpus and the model",
                                f"{folder} ({_gb(nbytes)}); model {identity.doc.describe()}"))
        elif kind == "medrag":
            nbytes = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and p.suffix in (".npy", ".index"))
            needs_.append(_Need(f"{spec.name} MedRAG index {src.name}", nbytes, where))
            checks.append(Check("index", OK, f"{spec.name} index of {src.name}: MedRAG's precomputed index",
                                f"{folder} ({_gb(nbytes)})"))
        elif kind in ("build", "build_legacy"):
            aside = " (an index of medret's first layout, which did not record its model, is left aside)" \
                if kind == "build_legacy" else ""
            checks.append(Check("index", WARN, f"{spec.name} index of {src.name} not built yet",
                                f"{len(store):,} rows: it will be encoded at {folder} on first use{aside}", build))
            ready = False
        elif kind == "legacy":
            checks.append(Check("index", FAIL, f"{spec.name} index of {src.name} is in medret's first layout",
                                legacy_message(folder, spec, identity, corpus.display_name, config),
                                build + " --adopt-legacy (only if it was built with this model), else --rebuild"))
            ready = False
        else:
            from medret.corpus.embeddings import fetch_hint

            fetch = fetch_hint(src.name, spec.doc_model, config.db_dir)
            checks.append(Check("index", FAIL, f"{spec.name} index of {src.name} is missing",
                                f"looked for {folder} (and MedRAG's precomputed index)", build + " --device cuda:0"
                                + (f"; or MedRAG's precomputed embeddings: {fetch}" if fetch else "")))
            ready = False
    return checks, needs_, ready


def _host_available() -> int | None:
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_memory(needs_: list[_Need], gpu_free: Callable[[int], int] | None = None,
                 host_free: Callable[[], int | None] | None = None) -> list[Check]:
    """Memory each piece will take against what is free: GPU pieces must fit, host pieces are memory-mapped."""
    if not needs_:
        return []
    out = []
    by_where: dict[str, list[_Need]] = {}
    for n in needs_:
        by_where.setdefault(n.where, []).append(n)
    for where, items in by_where.items():
        total = sum(n.nbytes for n in items)
        parts = ", ".join(f"{n.what} {_gb(n.nbytes)}" for n in items)
        if where.startswith("cuda"):
            idx = int(where.split(":", 1)[1]) if ":" in where else 0
            try:
                free = gpu_free(idx) if gpu_free else _cuda_free(idx)
            except Exception as e:  # noqa: BLE001
                out.append(Check("memory", WARN, f"{where}: free memory unknown ({e})", parts))
                continue
            title = f"{where}: needs {_gb(total)}, {_gb(free)} free"
            if total > free:
                out.append(Check("memory", FAIL, title + ": will not fit", parts,
                                 "free the GPU (other processes: nvidia-smi), pick another with --gpu-id, or build a "
                                 "smaller index (`--index-type ivfpq` / hnsw, fp16)"))
            elif total > MEMORY_WARN_FRACTION * free:
                out.append(Check("memory", WARN, title + ": little room left for the model and batches", parts,
                                 "pick an emptier GPU or a smaller index"))
            else:
                out.append(Check("memory", OK, title, parts))
        else:
            free = host_free() if host_free else _host_available()
            title = f"host memory: {_gb(total)} memory-mapped" + (f", {_gb(free)} available" if free else "")
            if free is not None and total > free:
                out.append(Check("memory", WARN, title + ": pages will be read from disk", parts,
                                 "fine for BM25 and the store on fast disks; for speed use a node with more RAM"))
            else:
                out.append(Check("memory", OK, title, parts))
    return out


def _cuda_free(idx: int) -> int:
    import torch

    return int(torch.cuda.mem_get_info(idx)[0])


# --------------------------------------------------------------------------------------------------------------------
# Encoder, test query


def check_encoder(config: Any, ready: bool = True) -> list[Check]:
    """Every model of every dense part: where it would load from, that it loads and encodes. The query model's
    lines are ``encoder``; a separate document model's are ``doc-encoder`` (needed to build an index, so a missing
    one fails only while an index still has to be built)."""
    from medret.engine import retriever_parts

    if config.backend not in ("local", "ray"):
        return []
    try:
        parts = [p for p in retriever_parts(config.retriever_name) if p != "bm25"]
    except MedretError:
        return []
    if not parts:
        return [Check("encoder", OK, "encoder: none needed (BM25)")]
    from medret.encoders.locate import model_location
    from medret.encoders.specs import spec_for

    out: list[Check] = []
    device = _device_or_none(config) or "cpu"
    hub: list[str | None] = []  # the hub's reachability, asked at most once
    for part in parts:
        try:
            spec = spec_for(part, config)
        except MedretError as e:
            out.append(Check("encoder", FAIL, f"encoder {part!r} cannot be configured", str(e),
                             "give --like e5|MedCPT|Contriever|SPECTER or --pooling cls|mean for a local model folder"))
            continue
        qloc = model_location(spec.query_model, config.query_model, config.models_dir)
        dloc = model_location(spec.doc_model, config.doc_model, config.models_dir)
        roles = [("query", spec.query_model, qloc)] + ([("doc", spec.doc_model, dloc)] if dloc != qloc else [])
        for role, model, loc in roles:
            out.append(_model_check(spec, role, model, loc, config, device, ready, hub, shared=len(roles) == 1))
    return out


def _model_check(spec: Any, role: str, model: str, loc: str, config: Any, device: str, ready: bool,
                 hub: list[str | None], shared: bool) -> Check:
    from medret.encoders.locate import hub_problem, offline_fix

    key = "encoder" if role == "query" else "doc-encoder"
    what = (f"encoder {spec.name}" if shared else
            f"{'query' if role == 'query' else 'document'} encoder {spec.name}")
    # a missing document model matters only while an index still has to be built
    miss = FAIL if role == "query" or not ready else WARN
    use = "" if role == "query" else " (needed to build or rebuild an index; searching a built one does not load it)"
    state = _model_availability(loc)
    if state == "missing-offline":
        return Check(key, miss, f"{what}: {loc} is not in the Hugging Face cache and HF_HUB_OFFLINE is set" + use,
                     f"cache: {_hf_cache()}", offline_fix(spec.name))
    if state == "missing-online":
        if not hub:
            hub.append(hub_problem(loc))
        if hub[0] is not None:
            return Check(key, miss, f"{what}: {loc} is not downloaded and the hub cannot be reached" + use,
                         hub[0], offline_fix(spec.name))
        return Check(key, WARN, f"{what}: {loc} is not downloaded yet" + use,
                     "it will be downloaded on first use; compute nodes without internet need it beforehand",
                     offline_fix(spec.name))
    try:
        from medret.encoders.hf import Encoder

        t0 = time.perf_counter()
        paths = {"query_model_path": loc} if role == "query" else {"doc_model_path": loc}
        enc = Encoder(spec, device, fp16=config.fp16, load_query=role == "query", **paths)
        if role == "query":
            vec = enc.encode_queries(["doctor test"], batch_size=1)
        else:
            vec = enc.encode_docs([{"title": "doctor", "content": "test"}], batch_size=1)
        dt = time.perf_counter() - t0
    except Exception as e:  # noqa: BLE001 - report whatever the loader raised
        return Check(key, FAIL, f"{what} does not load from {loc}", str(e),
                     "fix the model path, or download the model again: " + offline_fix(spec.name))
    return Check(key, OK, f"{what} loads from {loc} on {device} (dim {vec.shape[-1]}, {dt:.1f}s)", state)


def _hf_cache() -> str:
    from medret.corpus.download import hf_cache_dir

    try:
        return str(hf_cache_dir())
    except ImportError:
        return "(huggingface_hub not installed)"


def _model_availability(loc: str) -> str:
    """'local folder', 'in the Hugging Face cache', 'missing-offline' or 'missing-online'."""
    if Path(loc).expanduser().is_dir():
        return "local folder"
    from medret.corpus.download import hf_cache_dir, hf_offline

    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(loc, "config.json", cache_dir=str(hf_cache_dir()))
    except Exception:  # noqa: BLE001 - an invalid repo id is simply not cached
        cached = None
    if isinstance(cached, str):
        return "in the Hugging Face cache"
    return "missing-offline" if hf_offline() else "missing-online"


def check_search(config: Any, query: str, ready: bool) -> list[Check]:
    from medret.api import Retriever

    if config.backend in ("local", "ray") and not ready:
        return [Check("search", WARN, "test query skipped: the store or index is not ready (see above)")]
    cfg = config.replace(auto_build=False) if config.backend in ("local", "ray") else config
    try:
        t0 = time.perf_counter()
        r = Retriever(cfg)
        try:
            res = r.retrieve([query], topk=3, return_scores=True)
        finally:
            r.close()
        dt = time.perf_counter() - t0
    except Exception as e:  # noqa: BLE001 - report whatever the retriever raised
        return [Check("search", FAIL, f"test query failed ({type(e).__name__})", str(e),
                      "fix the lines above; then `medret search QUERY` with the same flags")]
    rows = res.get("result") if isinstance(res, dict) else None
    hits = rows[0] if isinstance(rows, list) and rows else []
    bad = [h for h in hits if not {"id", "contents"} <= set(h.get("document", {}))]  # what Search-R1 reads
    scores = [h.get("score") for h in hits]
    if not hits and not bad and str(config.retriever_name).strip().lower() == "bm25":
        return [Check("search", WARN, f"test query {query!r} matched no snippet (backend {config.backend})",
                      "BM25 returns only snippets that hold a query word (as pyserini / Search-R1)",
                      "run doctor with --query 'words your corpus holds' to test the search")]
    if not hits or bad or scores != sorted(scores, reverse=True):
        return [Check("search", FAIL, "test query returned no results or malformed ones", json.dumps(res)[:300],
                      "check the corpus and the index above")]
    top = hits[0]["document"]
    return [Check("search", OK, f"test query returned {len(hits)} results in {dt:.2f}s (backend {config.backend})",
                  f"top: {top['id']} | {str(top['contents'])[:80]}")]


# --------------------------------------------------------------------------------------------------------------------
# Server, Search-R1, SLURM


def server_url(url: str | None, address_file: str | None) -> tuple[str | None, str | None]:
    """(url, error) from a URL or an address file written by `medret serve --address-file`."""
    if url:
        return url.rstrip("/"), None
    if not address_file:
        return None, None
    p = Path(address_file).expanduser()
    try:
        text = p.read_text().strip()
    except OSError as e:
        return None, f"address file {p} cannot be read ({e.strerror})"
    try:
        data = json.loads(text)
        if isinstance(data, dict):
            text = str(data.get("url") or (f"{data['host']}:{data['port']}" if "host" in data else ""))
    except ValueError:
        pass
    text = text.splitlines()[0].strip() if text else ""
    if not text:
        return None, f"address file {p} is empty"
    if "://" not in text:
        text = "http://" + text
    return text.rstrip("/"), None


def check_server(url: str | None, address_file: str | None, timeout: float = 5.0) -> list[Check]:
    if not url and not address_file:
        return []
    base, err = server_url(url, address_file)
    if err:
        return [Check("server", FAIL, "retrieval server address unknown", err,
                      "start `medret serve ... --address-file FILE` and pass the same FILE")]
    import http.client

    from medret.transports.http import request_once

    try:  # `timeout` bounds the whole exchange: a server that trickles its answer cannot hold doctor
        resp = request_once(f"{base}/health", timeout=timeout)
    except (OSError, http.client.HTTPException, ValueError) as e:
        return [Check("server", FAIL, f"server {base} does not answer /health", f"{type(e).__name__}: {e}",
                      "start it (`medret serve --corpus ... --port ...`), or fix --url / --address-file; from a "
                      "compute node use the server node's hostname, not localhost")]
    status = resp.status_code
    body = resp.content[:4096].decode("utf-8", "replace")
    if status != 200:
        try:
            data = json.loads(body or "{}")
        except ValueError:
            data = {}
        state = data.get("status") if isinstance(data, dict) else None
        if status == 503 and state == "loading":
            return [Check("server", WARN, f"server {base} is still loading its index (/health: 503 loading)",
                          json.dumps(data), "wait until /health answers 200 (a job script waits for --address-file)")]
        return [Check("server", FAIL, f"server {base} answered /health with HTTP {status}"
                      + (f" ({state})" if state else ""), json.dumps(data) if data else body[:200],
                      "read the server's log; fix the error it names and restart `medret serve`")]
    return [Check("server", OK, f"server {base} answers /health (HTTP {status})", body[:200])]


def check_searchr1(path: str | None) -> list[Check]:
    if not path:
        return []
    try:
        from medret.integrations import searchr1_patch as sp
    except ImportError as e:
        return [Check("searchr1", WARN, "Search-R1 patch check unavailable", str(e))]
    try:
        report = sp.check(path)
    except MedretError as e:
        return [Check("searchr1", FAIL, f"Search-R1 checkout {path} cannot be checked", str(e),
                      "give --searchr1 the root of a Search-R1 checkout")]
    detail = report.describe()
    if report.status is sp.Status.PATCHED:
        return [Check("searchr1", OK, f"Search-R1 checkout {report.root} is patched for medret", detail)]
    if report.status is sp.Status.UNPATCHED:
        return [Check("searchr1", FAIL, f"Search-R1 checkout {report.root} is not patched", detail,
                      f"medret searchr1 patch {report.root}")]
    return [Check("searchr1", FAIL, f"Search-R1 checkout {report.root} is an unknown version", detail,
                  "use a Search-R1 version the patcher knows, or call medret from your own code")]


def check_sbatch(path: str | None) -> list[Check]:
    """The SLURM checker's verdict (``medret slurm check``): one fail line per error, one warn line per warning."""
    if not path:
        return []
    from medret.launch.slurm import check_script

    p = Path(path).expanduser()
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        return [Check("slurm", FAIL, f"job script {p} cannot be read", str(e), "give --sbatch the job script's path")]
    report = check_script(text, str(p))
    out = [Check("slurm", FAIL, f"job script {p}: {msg.split(':', 1)[0][:100]}", msg,
                 "fix the script, or render a checked one with `medret slurm render`") for msg in report.errors]
    out += [Check("slurm", WARN, f"job script {p}: {msg.split(':', 1)[0][:100]}", msg) for msg in report.warnings]
    if not report.errors:
        facts = ", ".join(f"{k} {v}" for k, v in report.facts.items())
        out.insert(0, Check("slurm", OK, f"job script {p} passes the SLURM checks", facts))
    return out


# --------------------------------------------------------------------------------------------------------------------
# All of it


def run_checks(opts: DoctorOptions) -> list[Check]:
    """Every check, in the order a set-up is built; a crash in one check becomes its fail line."""
    config = opts.config
    checks: list[Check] = []

    def add(fn: Callable[..., list[Check]], *a: Any, key: str = "internal") -> Any:
        try:
            out = fn(*a)
        except Exception as e:  # noqa: BLE001 - the doctor must print every line it can
            logger.debug("check %s crashed", key, exc_info=True)
            checks.append(Check(key, FAIL, f"{key} check crashed: {type(e).__name__}", str(e),
                                "report this with `medret doctor -vv` output"))
            return None
        if isinstance(out, tuple):
            checks.extend(out[0])
            return out
        checks.extend(out)
        return out

    if opts.config_error:
        checks.append(Check("config", FAIL, "the retriever configuration is invalid", opts.config_error,
                            "fix the flag or the --config file named in the message"))
    add(check_python, key="python")
    add(check_packages, config, key="packages")
    add(check_torch, config, key="torch")
    add(check_gpus, config, key="gpu")
    if config is not None and config.backend in ("local", "ray"):  # ray actors read the same files
        add(check_corpus, config, key="corpus")
        res = add(check_store_and_indexes, config, key="store")
        needs_, ready = (res[1], res[2]) if res else ([], False)
        from medret.integrity_checks import check_integrity, check_leftovers

        add(check_integrity, config, opts.deep, key="integrity")
        add(check_leftovers, config, key="leftovers")
        add(check_memory, needs_, key="memory")
        if opts.search:
            add(check_encoder, config, ready, key="encoder")
    else:
        ready = True
    add(check_server, config.url if config else None, config.address_file if config else None, key="server")
    blocking = [c for c in checks if (c.status == FAIL and c.key in ("corpus", "store", "index", "server", "gpu",
                                                                      "encoder"))
                or (c.status == WARN and c.key == "encoder")]  # an uncached model would be fetched by the query
    if config is not None and opts.search and not blocking:
        add(check_search, config, opts.query, ready, key="search")
    elif config is not None and opts.search:
        checks.append(Check("search", WARN, "test query skipped until the lines above are fixed"))
    add(check_searchr1, opts.searchr1, key="searchr1")
    add(check_sbatch, opts.sbatch, key="slurm")
    return checks


def exit_status(checks: list[Check]) -> int:
    return 1 if any(c.status == FAIL for c in checks) else 0


def format_checks(checks: list[Check], color: bool = False) -> str:
    tags = {OK: ("  ok", "32"), WARN: ("warn", "33"), FAIL: ("FAIL", "31")}
    lines = []
    for c in checks:
        tag, code = tags.get(c.status, (c.status, "0"))
        shown = f"\033[{code}m{tag}\033[0m" if color else tag
        lines.append(f"[{shown}] {c.title}")
        if c.detail and c.status != OK:
            lines.append(f"       {c.detail}")
        if c.fix and c.status != OK:
            lines.append(f"       fix: {c.fix}")
    n = {s: sum(c.status == s for c in checks) for s in (OK, WARN, FAIL)}
    lines.append(f"{n[OK]} ok, {n[WARN]} warn, {n[FAIL]} fail")
    return "\n".join(lines)
