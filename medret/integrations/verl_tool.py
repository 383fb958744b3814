"""A veRL tool that searches with medret in the rollout worker's process (or a Ray actor) instead of over HTTP.

Drop-in for ``verl.tools.search_tool.SearchTool``: same OpenAI function schema (``query_list``), same answer text
(``{"result": "Doc 1 (Title: …)\\n…"}``, queries joined by ``\\n---\\n``), same error texts, and the same
``create / execute / calc_reward / release`` life cycle. Differences:

* the retriever is built once per process (``medret.get_retriever``'s cache) and shared by every tool object and
  every trajectory, not rebuilt per trajectory; it loads lazily on the first search (``preload: true`` loads it
  when the tool is created);
* searches never block the rollout's event loop: with ``local``/``ray`` they go to a per-retriever micro-batcher
  (:class:`medret.serve.batcher.Batcher`) that merges the queries of concurrent trajectories into one search call
  (``max_batch_queries``, ``max_wait_ms``); with ``http`` they run in a thread pool (``num_workers``);
  ``rate_limit`` (default: none) caps concurrent searches in this process; ``timeout`` bounds one search;
* any failure comes back to the model as text (``{"result": "Search execution failed: …"}``), never as an
  exception into the rollout.

With ``verl`` installed the class subclasses ``verl.tools.base_tool.BaseTool`` (tested against verl 0.9.1 from
PyPI); without it a small stand-in base with the same interface keeps the class importable and usable.
"""
from __future__ import annotations

import asyncio
import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Optional
from uuid import uuid4

from medret.api import Retriever
from medret.config import BACKENDS
from medret.errors import ConfigError
from medret.integrations import protocol, searchr1_runtime
from medret.options import declarations, option, plain_dict
from medret.serve.batcher import Batcher, BatchOptions
from medret.transports import transport_class
from medret.validate import check_number, check_queries, check_whole

logger = logging.getLogger(__name__)

try:  # the real thing when veRL is installed
    from verl.tools.base_tool import BaseTool as _BaseTool
    from verl.tools.schemas import OpenAIFunctionToolSchema, ToolResponse

    try:
        from verl.utils.rollout_trace import rollout_trace_op as _trace
    except ImportError:  # pragma: no cover - older veRL
        def _trace(func: Any) -> Any:
            return func

    VERL_AVAILABLE = True
except ImportError as _verl_import_error:  # a stand-in with BaseTool's interface
    VERL_AVAILABLE = False
    logger.debug("verl is not importable (%s); using medret's stand-in BaseTool", _verl_import_error)

    def _trace(func: Any) -> Any:
        return func

    class _Function:
        def __init__(self, data: dict[str, Any]) -> None:
            self.name: str = data["name"]
            self.description: str = data.get("description", "")
            self.parameters: dict[str, Any] = data.get("parameters", {})

    class OpenAIFunctionToolSchema:  # type: ignore[no-redef]
        """Stand-in for verl.tools.schemas.OpenAIFunctionToolSchema (keeps the dict)."""

        def __init__(self, data: dict[str, Any]) -> None:
            if not isinstance(data, dict) or data.get("type") != "function" or "function" not in data:
                raise ConfigError(f"tool_schema={data!r} is invalid: give an OpenAI function schema "
                                  "({'type': 'function', 'function': {'name': ..., 'parameters': ...}})")
            self._data = data
            self.type = data["type"]
            self.function = _Function(data["function"])

        @classmethod
        def model_validate(cls, data: dict[str, Any]) -> Any:
            return cls(data)

        def model_dump(self, **_: Any) -> dict[str, Any]:
            return json.loads(json.dumps(self._data))

    @dataclass
    class ToolResponse:  # type: ignore[no-redef]
        """Stand-in for verl.tools.schemas.ToolResponse."""

        text: Optional[str] = None
        image: Optional[list] = None
        video: Optional[list] = None

    class _BaseTool:  # type: ignore[no-redef]
        """Stand-in for verl.tools.base_tool.BaseTool: same constructor and async methods."""

        def __init__(self, config: dict, tool_schema: Any) -> None:
            self.config = config
            self.tool_schema = tool_schema or self.get_openai_tool_schema()
            assert self.tool_schema is not None, "Tool schema is not set!"
            self.name = self.tool_schema.function.name

        def get_openai_tool_schema(self) -> Any:
            return self.tool_schema

        async def create(self, instance_id: Optional[str] = None, **kwargs: Any) -> tuple[str, Any]:
            return (instance_id or str(uuid4())), ToolResponse()

        async def execute(self, instance_id: str, parameters: dict[str, Any], **kwargs: Any) -> tuple[Any, float, dict]:
            return ToolResponse(text="Updated the tool state."), 0.0, {}

        async def calc_reward(self, instance_id: str, **kwargs: Any) -> Any:
            return 0.0

        async def release(self, instance_id: str, **kwargs: Any) -> None:
            return None


#: The schema veRL's search tool uses (``query_list``: a list of strings).
DEFAULT_TOOL_SCHEMA: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "search",
        "description": "Searches medical literature for relevant information based on the given queries.",
        "parameters": {
            "type": "object",
            "properties": {
                "query_list": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "A list of fully-formed semantic queries. The tool will return search results "
                                   "for each query.",
                }
            },
            "required": ["query_list"],
        },
    },
}

#: veRL's message for a call without a usable query_list (kept identical).
MISSING_QUERY_LIST = "Error: 'query_list' is missing, empty, or not a list in parameters."

@dataclass(frozen=True)
class ToolOptions(BatchOptions):
    """The tool's own keys in veRL's tool config, each declared once (the micro-batcher's are
    :class:`medret.serve.batcher.BatchOptions`); every other key is the retriever's block."""

    timeout: float = option(30.0, "seconds one search may take (the answer is then an error text)",
                            check=check_number.positive())
    num_workers: int = option(8, "threads for HTTP searches", check=check_whole)
    rate_limit: int | None = option(None, "most concurrent searches in this process (default: no limit)", kind=int,
                                    check=check_whole.optional("no limit"))
    preload: bool = option(False, "load the retriever when the tool is created, not at the first search")
    retrieval_service_url: str | None = option(None, "the /retrieve address (backend http), as veRL's SearchTool",
                                               kind=str)


# keys of veRL's tool config that are neither the tool's nor the retriever's
_VERL_KEYS = ("type", "enable_global_rate_limit")


@dataclass(frozen=True)
class ToolSettings:
    """The tool's options (``tool``, as declared) and what its config says about the retriever."""

    backend: str
    topk: int
    url: str | None
    tool: ToolOptions
    block: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "ToolSettings":
        config = plain_dict(config)
        own = set(declarations(ToolOptions)) | set(_VERL_KEYS)
        block = {k: v for k, v in config.items() if k not in own}
        tool = ToolOptions.from_mapping({k: v for k, v in config.items() if k in declarations(ToolOptions)})
        url = tool.retrieval_service_url or block.get("url")
        if "backend" not in block and "local" not in block:
            block["backend"] = "http" if url else "local"
        backend = searchr1_runtime.backend_of(block)
        if backend not in BACKENDS:
            raise ConfigError(f"backend={backend!r} is invalid: choose local, ray or http")
        topk = searchr1_runtime.topk_of(block)
        if backend == "http" and not url:
            raise ConfigError("backend='http' needs retrieval_service_url: http://host:port/retrieve")
        searchr1_runtime.validate_block(block)  # every retriever key and value now, not mid-rollout
        return cls(backend=backend, topk=topk, url=url, tool=tool, block=block)


_EXECUTORS: dict[int, ThreadPoolExecutor] = {}
_EXECUTORS_LOCK = threading.Lock()
_SEMAPHORES: dict[tuple[int, int], asyncio.Semaphore] = {}


def _executor(num_workers: int) -> ThreadPoolExecutor:
    with _EXECUTORS_LOCK:
        pool = _EXECUTORS.get(num_workers)
        if pool is None:
            pool = _EXECUTORS[num_workers] = ThreadPoolExecutor(max_workers=num_workers,
                                                                thread_name_prefix="medret-search")
        return pool


@dataclass
class _BatcherEntry:
    retriever: Any
    batcher: Any


class _ScoredItems:
    """What the micro-batcher drives: the public retriever's Search-R1 answer (scored items per query)."""

    def __init__(self, retriever: Retriever):
        self.retriever = retriever

    def search(self, queries: list[str], k: int) -> list[list[dict]]:
        return self.retriever.retrieve(queries, topk=k, return_scores=True)["result"]

    def info(self) -> dict[str, Any]:
        return self.retriever.info()

    def close(self) -> None:
        return None  # the retriever is shared by the process (get_retriever's cache)


_BATCHERS: dict[int, _BatcherEntry] = {}


def _batcher_for(retriever: Retriever, options: BatchOptions) -> Batcher:
    """One micro-batcher per retriever: searches from concurrent trajectories are merged into one call."""
    with _EXECUTORS_LOCK:
        entry = _BATCHERS.get(id(retriever))
        if entry is None or entry.retriever is not retriever:
            # Search-R1's scored items, which are the tool's result as they are
            batcher = Batcher(lambda: _ScoredItems(retriever), options, name="medret-verl-tool",
                              max_batch_queries=min(options.max_batch_queries, retriever.config.max_batch))
            batcher.start()
            entry = _BATCHERS[id(retriever)] = _BatcherEntry(retriever, batcher)
        return entry.batcher


def _semaphore(limit: int) -> asyncio.Semaphore:
    key = (id(asyncio.get_running_loop()), limit)
    sem = _SEMAPHORES.get(key)
    if sem is None:
        sem = _SEMAPHORES[key] = asyncio.Semaphore(limit)
    return sem


class MedretSearchTool(_BaseTool):
    """veRL ``BaseTool`` that answers ``search(query_list)`` with medret (local or Ray backend, or HTTP)."""

    def __init__(self, config: dict, tool_schema: Any = None) -> None:
        self.settings = ToolSettings.from_config(config or {})
        super().__init__(config, tool_schema)
        self._instance_dict: dict[str, dict[str, Any]] = {}
        if self.settings.tool.preload and not transport_class(self.settings.backend).remote:  # a server preloads itself
            self._retriever()
        logger.info("MedretSearchTool ready: backend=%s topk=%d block=%s", self.settings.backend,
                    self.settings.topk, self.settings.block)

    def get_openai_tool_schema(self) -> Any:
        schema = getattr(self, "tool_schema", None)
        return schema if schema is not None else OpenAIFunctionToolSchema.model_validate(DEFAULT_TOOL_SCHEMA)

    def _retriever(self) -> Any:
        return searchr1_runtime.get_searchr1_retriever(self.settings.block)

    def search_json(self, query_list: list[str]) -> dict:
        """Blocking search: Search-R1's /retrieve JSON for ``query_list``."""
        if self.settings.backend == "http":
            assert self.settings.url is not None
            # the event loop side enforces `timeout`; the socket timeout only stops a thread left waiting
            return searchr1_runtime.http_batch_search(self.settings.url, query_list, self.settings.topk,
                                                      timeout=self.settings.tool.timeout + 5.0)
        return self._retriever().retrieve(query_list, topk=self.settings.topk, return_scores=True)

    async def create(self, instance_id: Optional[str] = None, **kwargs: Any) -> tuple[str, Any]:
        if instance_id is None:
            instance_id = str(uuid4())
        self._instance_dict[instance_id] = {"response": "", "reward": []}
        return instance_id, ToolResponse()

    @_trace
    async def execute(self, instance_id: str, parameters: dict[str, Any], **kwargs: Any) -> tuple[Any, float, dict]:
        query_list = parameters.get("query_list") if isinstance(parameters, dict) else None
        if not query_list or not isinstance(query_list, list):
            logger.error("[MedretSearchTool] %s Received parameters: %s", MISSING_QUERY_LIST, parameters)
            return ToolResponse(text=protocol.verl_error_text(MISSING_QUERY_LIST)), 0.0, {}
        try:
            if self.settings.tool.rate_limit is None:
                results = await self._search(query_list)
            else:
                async with _semaphore(self.settings.tool.rate_limit):
                    results = await self._search(query_list)
            text = protocol.verl_tool_text(results)
        except Exception as e:  # noqa: BLE001 - every failure goes back to the model as text
            logger.error("[MedretSearchTool] Execution failed: %s", e)
            return ToolResponse(text=protocol.verl_error_text(f"Search execution failed: {e}")), 0.0, \
                {"error": str(e)}
        state = self._instance_dict.setdefault(instance_id, {"response": "", "reward": []})
        state["reward"].append(text.strip())
        metrics = {
            "query_count": len(query_list),
            "status": "success" if results else "no_results",
            "total_results": sum(len(r) for r in results),
            "api_request_error": None,
        }
        return ToolResponse(text=text), 0.0, metrics

    async def _search(self, query_list: list) -> list[list[dict]]:
        """Search-R1 result rows for ``query_list``; raises on any failure."""
        loop = asyncio.get_running_loop()
        if self.settings.backend == "http":
            future = loop.run_in_executor(_executor(self.settings.tool.num_workers), self.search_json, query_list)
            return (await self._bounded(future))["result"]
        # loading the index is not bounded by the search timeout (it happens once per process; preload: true
        # moves it to start-up)
        retriever = await loop.run_in_executor(_executor(self.settings.tool.num_workers), self._retriever)
        queries = check_queries(query_list, retriever.config.max_batch, retriever.config.max_query_chars)
        batcher = _batcher_for(retriever, self.settings.tool)
        return await self._bounded(batcher.submit(queries, self.settings.topk))

    async def _bounded(self, awaitable: Any) -> Any:
        try:
            return await asyncio.wait_for(awaitable, timeout=self.settings.tool.timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(f"no answer within timeout={self.settings.tool.timeout:g} s") from None

    async def calc_reward(self, instance_id: str, **kwargs: Any) -> Any:
        return self._instance_dict.get(instance_id, {}).get("reward", [])

    async def release(self, instance_id: str, **kwargs: Any) -> None:
        self._instance_dict.pop(instance_id, None)
