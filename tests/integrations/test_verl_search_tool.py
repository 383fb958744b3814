"""MedretSearchTool: veRL's BaseTool interface (real verl 0.9.1 when installed, else medret's stand-in)."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from medret import get_retriever
from medret.errors import TransportError
from medret.integrations import verl_tool
from medret.integrations.verl_tool import MISSING_QUERY_LIST, MedretSearchTool

TOOL_CONFIG = Path(verl_tool.__file__).with_name("verl_tool_config.yaml")

try:
    import verl.tools.base_tool as verl_base
    from verl.tools.tool_registry import initialize_tools_from_config
except ImportError as e:  # verl is optional: `pip install --no-deps verl==0.9.1` (see docs/verl.md)
    verl_base = None
    # Search-R1's env: verl 0.9.1 requires Python >= 3.10; Search-R1's own verl has no tools
    if sys.version_info < (3, 10):
        VERL_MISSING = (f"veRL's tool API cannot exist on Python {sys.version_info[0]}.{sys.version_info[1]}: "
                        "verl 0.9.1 requires Python >= 3.10 (Search-R1's vendored verl has no tools)")
    else:
        VERL_MISSING = f"verl is not installed ({e}); install it with `pip install --no-deps verl==0.9.1`"
else:
    VERL_MISSING = ""

needs_verl = pytest.mark.skipif(verl_base is None, reason=VERL_MISSING or "verl present")


def run(coro):
    return asyncio.run(coro)


def expected_text(helpers, queries: list[str], topk: int = 3) -> str:
    result = get_retriever(corpus_name="sample", retriever_name="BM25").retrieve(queries, topk=topk)["result"]
    return json.dumps({"result": "\n---\n".join(helpers.verl_format(r) for r in result)}, ensure_ascii=False)


def make_tool(**config) -> MedretSearchTool:
    return MedretSearchTool({"type": "native", "backend": "local", "corpus_name": "sample",
                             "retriever_name": "BM25", **config})


@needs_verl
def test_subclasses_the_real_base_tool_and_loads_from_the_shipped_yaml(helpers):
    assert verl_tool.VERL_AVAILABLE
    assert issubclass(MedretSearchTool, verl_base.BaseTool)
    tools = initialize_tools_from_config(str(TOOL_CONFIG))
    assert len(tools) == 1 and isinstance(tools[0], MedretSearchTool)
    tool = tools[0]
    schema = tool.get_openai_tool_schema().model_dump(exclude_none=True)
    assert schema["function"]["name"] == "search" == tool.name
    assert schema["function"]["parameters"]["required"] == ["query_list"]
    assert schema["function"]["parameters"]["properties"]["query_list"]["type"] == "array"

    async def go():
        instance_id, created = await tool.create()
        response, reward, metrics = await tool.execute(instance_id, {"query_list": ["septic shock", "asthma"]})
        rewards = await tool.calc_reward(instance_id)
        await tool.release(instance_id)
        return created, response, reward, metrics, rewards

    created, response, reward, metrics, rewards = run(go())
    assert type(created).__name__ == "ToolResponse" and created.text is None
    assert type(response) is verl_base.ToolResponse
    assert response.text == expected_text(helpers, ["septic shock", "asthma"])
    assert reward == 0.0
    assert metrics == {"query_count": 2, "status": "success", "total_results": 6, "api_request_error": None}
    assert rewards == [response.text]


def test_default_schema_matches_verls_search_tool():
    tool = make_tool()
    schema = tool.get_openai_tool_schema().model_dump()
    assert schema["type"] == "function"
    fn = schema["function"]
    assert fn["name"] == "search"
    assert fn["parameters"]["type"] == "object"
    assert fn["parameters"]["required"] == ["query_list"]
    assert fn["parameters"]["properties"]["query_list"]["type"] == "array"


def test_execute_matches_verl_formatting(helpers):
    tool = make_tool(topk=2)

    async def go():
        iid, _ = await tool.create("traj-1")
        assert iid == "traj-1"
        return await tool.execute(iid, {"query_list": ["atrial fibrillation anticoagulation"]})

    response, _, metrics = run(go())
    assert response.text == expected_text(helpers, ["atrial fibrillation anticoagulation"], topk=2)
    assert metrics["total_results"] == 2


@pytest.mark.parametrize("params", [{}, {"query_list": []}, {"query_list": "septic shock"}, {"queries": ["x"]}])
def test_bad_parameters_come_back_as_verls_error_text(params):
    response, reward, metrics = run(make_tool().execute("i", params))
    assert response.text == json.dumps({"result": MISSING_QUERY_LIST})
    assert response.text == '{"result": "Error: \'query_list\' is missing, empty, or not a list in parameters."}'
    assert (reward, metrics) == (0.0, {})


def test_retrieval_failures_come_back_as_text(tmp_path):
    tool = make_tool(corpus_name=str(tmp_path / "no-such-corpus"))
    response, reward, metrics = run(tool.execute("i", {"query_list": ["sepsis"]}))
    text = json.loads(response.text)["result"]
    assert text.startswith("Search execution failed: ")
    assert "no-such-corpus" in text
    assert metrics["error"] and reward == 0.0
    # a query the retriever rejects is reported the same way
    response, _, metrics = run(make_tool().execute("i", {"query_list": [None]}))
    assert json.loads(response.text)["result"].startswith("Search execution failed: ")


def test_timeout_comes_back_as_text(helpers):
    with helpers.RetrieveServer(delay=1.5) as server:
        tool = MedretSearchTool({"type": "native", "retrieval_service_url": server.url, "timeout": 0.2})
        assert tool.settings.backend == "http"
        response, _, metrics = run(tool.execute("i", {"query_list": ["sepsis"]}))
    assert json.loads(response.text)["result"] == "Search execution failed: no answer within timeout=0.2 s"
    assert "error" in metrics


def test_http_backend_is_a_drop_in_for_verls_tool(helpers):
    with helpers.RetrieveServer() as server:
        tool = MedretSearchTool({"type": "native", "retrieval_service_url": server.url, "topk": 2})
        response, _, _ = run(tool.execute("i", {"query_list": ["sepsis lactate"]}))
        assert server.requests == [{"queries": ["sepsis lactate"], "topk": 2, "return_scores": True}]
    assert response.text == expected_text(helpers, ["sepsis lactate"], topk=2)


def test_http_failure_names_the_tools_own_setting(helpers):
    """The tool's HTTP path is the HTTP transport at retrieval_service_url (HttpTransport.from_url): its errors
    name that setting, the one a veRL user writes, with its value."""
    url = helpers.closed_port_url()
    tool = MedretSearchTool({"type": "native", "retrieval_service_url": url})
    with pytest.raises(TransportError, match=rf"retrieval_service_url='{url}' could not be reached"):
        tool.search_json(["sepsis"])
    response, _, metrics = run(tool.execute("i", {"query_list": ["sepsis"]}))
    assert f"retrieval_service_url='{url}' could not be reached" in json.loads(response.text)["result"]


def test_retriever_is_shared_per_process_and_concurrent_calls_agree(helpers):
    a, b = make_tool(), make_tool(preload=True)
    assert a._retriever() is b._retriever()
    queries = [f"septic shock {w}" for w in ("lactate", "vasopressin", "fluids", "steroids")] * 5

    async def go():
        async def one(tool, q):
            iid, _ = await tool.create()
            try:
                return (await tool.execute(iid, {"query_list": [q]}))[0].text
            finally:
                await tool.release(iid)
        return await asyncio.gather(*(one(a if i % 2 else b, q) for i, q in enumerate(queries)))

    texts = run(go())
    assert texts == [expected_text(helpers, [q]) for q in queries]
    assert a._instance_dict == {} and b._instance_dict == {}


def test_concurrent_trajectories_are_micro_batched(helpers):
    tool = make_tool(max_wait_ms=300)
    queries = [f"sepsis {w}" for w in ("lactate", "fluids", "antibiotics", "cultures", "source", "steroids")] * 2

    async def go():
        async def one(q):
            iid, _ = await tool.create()
            return (await tool.execute(iid, {"query_list": [q]}))[0].text
        return await asyncio.gather(*(one(q) for q in queries))

    texts = run(go())
    assert texts == [expected_text(helpers, [q]) for q in queries]
    stats = verl_tool._BATCHERS[id(tool._retriever())].batcher.stats
    assert stats.requests_merged == len(queries) and stats.queries_in == len(queries)
    assert stats.batches < len(queries)  # some requests shared a search call
    assert stats.queries_searched <= stats.queries_in  # repeated queries are searched once per batch


def test_rate_limit_serialises_searches(helpers):
    tool = make_tool(rate_limit=1, max_wait_ms=100)
    queries = ["sepsis lactate", "sepsis fluids", "sepsis antibiotics"]

    async def go():
        return await asyncio.gather(*(tool.execute(f"i{n}", {"query_list": [q]}) for n, q in enumerate(queries)))

    texts = [r[0].text for r in run(go())]
    assert texts == [expected_text(helpers, [q]) for q in queries]
    stats = verl_tool._BATCHERS[id(tool._retriever())].batcher.stats
    assert stats.batches == stats.requests_merged == len(queries)  # one at a time: nothing to merge


@pytest.mark.parametrize("config, field", [
    ({"backend": "local", "retreiver_name": "BM25"}, "retreiver_name"),
    ({"backend": "http"}, "retrieval_service_url"),
    ({"backend": "local", "timeout": 0}, "timeout"),
    ({"backend": "local", "num_workers": "many"}, "num_workers"),
    ({"backend": "local", "max_wait_ms": -1}, "max_wait_ms"),
    ({"backend": "local", "rate_limit": 0}, "rate_limit"),
    ({"backend": "sql"}, "backend"),
])
def test_bad_config_fails_at_startup(config, field):
    from medret.errors import ConfigError

    with pytest.raises(ConfigError, match=field):
        MedretSearchTool({"type": "native", **config})


def test_importable_and_usable_without_verl(helpers, tmp_path):
    """With verl absent the class still imports (stand-in BaseTool) and answers identically."""
    script = tmp_path / "no_verl.py"
    script.write_text(
        "import sys, asyncio, json\n"
        "sys.modules['verl'] = None  # makes `import verl...` raise ImportError\n"
        "from medret.integrations import verl_tool\n"
        "assert not verl_tool.VERL_AVAILABLE\n"
        "tool = verl_tool.MedretSearchTool({'type': 'native', 'corpus_name': 'sample', 'retriever_name': 'BM25'})\n"
        "async def go():\n"
        "    iid, _ = await tool.create()\n"
        "    r, reward, m = await tool.execute(iid, {'query_list': ['septic shock']})\n"
        "    return r.text, tool.name, await tool.calc_reward(iid)\n"
        "print(json.dumps(asyncio.run(go())))\n")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr[-2000:]
    text, name, rewards = json.loads(proc.stdout.strip().splitlines()[-1])
    assert name == "search"
    assert text == expected_text(helpers, ["septic shock"])
    assert rewards == [text]
