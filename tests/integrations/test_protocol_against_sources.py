"""Cross-check the protocol module against the real Search-R1 / veRL functions, when their sources are at hand.

Set MEDRET_SEARCHR1_CHECKOUT to a Search-R1 checkout and/or MEDRET_VERL_CHECKOUT to a volcengine/verl checkout
(one that has verl/tools/utils/search_r1_like_utils.py). Their functions are read from those files at test time;
nothing of theirs is stored in this repository.
"""
from __future__ import annotations

import ast
import importlib.util
import json
import os
import random
import re
from pathlib import Path

import pytest

from medret.integrations import protocol as p

SEARCHR1 = os.environ.get("MEDRET_SEARCHR1_CHECKOUT")
VERL = os.environ.get("MEDRET_VERL_CHECKOUT")


def random_docs(rng: random.Random, n: int) -> list[dict]:
    pieces = ["Sepsis", '"Quoted title"', "Sjögren", "", " ", "line\twith tab", "x" * 30, "\n", "\n\n", "a\r\nb"]
    docs = []
    for i in range(n):
        contents = "".join(rng.choice(pieces) + rng.choice(["", "\n", " "]) for _ in range(rng.randint(0, 6)))
        docs.append({"document": {"id": str(i), "contents": contents}, "score": rng.random()})
    return docs


def random_responses(rng: random.Random, n: int) -> list[str]:
    pieces = ["<search>", "</search>", "<answer>", "</answer>", " q ", "text\n", "<think>t</think>", "</", "<"]
    return ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 8))) for _ in range(n)]


def searchr1_manager_class():
    source = (Path(SEARCHR1) / "search_r1/llm_agent/generation.py").read_text()
    tree = ast.parse(source)
    mgr = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "LLMGenerationManager")
    wanted = {"_passages2string", "postprocess_predictions", "execute_predictions", "_postprocess_responses"}
    methods = [n for n in mgr.body if isinstance(n, ast.FunctionDef) and n.name in wanted]
    module = ast.Module(body=[ast.ClassDef(name="M", bases=[], keywords=[], body=methods, decorator_list=[])],
                        type_ignores=[])
    namespace: dict = {"re": re, "List": list, "Any": object, "Tuple": tuple, "Dict": dict}
    exec(compile(ast.fix_missing_locations(module), "searchr1_methods", "exec"), namespace)
    return namespace["M"], source


@pytest.mark.skipif(not SEARCHR1, reason="set MEDRET_SEARCHR1_CHECKOUT to cross-check with Search-R1's own code")
def test_against_searchr1_functions():
    M, _ = searchr1_manager_class()
    rng = random.Random(7)
    m = M()
    for _ in range(300):
        docs = random_docs(rng, rng.randint(0, 4))
        assert p.passages_to_string_searchr1(docs) == m._passages2string(docs)
    responses = random_responses(rng, 500)
    actions, contents = m.postprocess_predictions(responses)
    assert [(a.kind, a.content) for a in map(p.parse_action, responses)] == list(zip(actions, contents))

    # the cut in _postprocess_responses: run it with a tokenizer stand-in that returns the strings unchanged
    class Tok:
        def batch_decode(self, x, skip_special_tokens=True):
            return x

    class Cfg:
        no_think_rl = False

    m.tokenizer, m.config = Tok(), Cfg()
    m._batch_tokenize = lambda strs: strs
    _, cut = m._postprocess_responses(responses)
    assert [p.cut_response(r) for r in responses] == cut

    # observations of execute_predictions
    bodies: list[str] = []

    def batch_search(queries):
        out = [p.passages_to_string_searchr1(random_docs(rng, 2)) for _ in queries]
        bodies.extend(out)
        return list(out)

    m.batch_search = batch_search
    obs, dones, valid, is_search = m.execute_predictions(responses, "<pad>", [True] * len(responses))
    body_iter = iter(bodies)
    mine = []
    for r in responses:
        action = p.parse_action(r)
        mine.append(p.observation_for(action, next(body_iter) if action.is_search else None))
    assert mine == obs


@pytest.mark.skipif(not VERL, reason="set MEDRET_VERL_CHECKOUT to cross-check with veRL's search tool code")
def test_against_verl_search_utils(helpers):
    path = Path(VERL) / "verl/tools/utils/search_r1_like_utils.py"
    spec = importlib.util.spec_from_file_location("verl_search_utils_under_test", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # it needs only requests
    rng = random.Random(11)
    for _ in range(300):
        docs = random_docs(rng, rng.randint(0, 4))
        assert p.passages_to_string_verl(docs) == mod._passages2string(docs)
    with helpers.RetrieveServer() as server:
        queries = ["septic shock", "atrial fibrillation", "asthma inhaler"]
        text, meta = mod.perform_single_search_batch(retrieval_service_url=server.url, query_list=queries, topk=2)
        assert meta["status"] == "success"
        from medret import get_retriever

        result = get_retriever(corpus_name="sample", retriever_name="BM25").retrieve(queries, topk=2)["result"]
        assert p.verl_tool_text(result) == text
        assert json.loads(text)["result"].count("\n---\n") == 2


TRAINER_STEP = r'''
import json, sys, types
from search_r1.llm_agent.generation import GenerationConfig, LLMGenerationManager

block = json.loads(sys.argv[1])
responses = json.loads(sys.argv[2])
config = GenerationConfig(max_turns=2, max_start_length=64, max_prompt_length=512, max_response_length=64,
                          max_obs_length=512, num_gpus=1, search_url=block.get("url"), topk=block["topk"],
                          retriever=block)
tokenizer = types.SimpleNamespace(pad_token_id=0, pad_token="<pad>")
manager = LLMGenerationManager(tokenizer=tokenizer, actor_rollout_wg=None, config=config)
print(json.dumps(manager.execute_predictions(responses, "<pad>", [True] * len(responses))))
'''


@pytest.mark.integration
@pytest.mark.skipif(not SEARCHR1, reason="set MEDRET_SEARCHR1_CHECKOUT to run Search-R1's own patched code")
def test_real_patched_searchr1_step_uses_medret(tmp_path, helpers):
    """Search-R1's real execute_predictions, patched by medret, searches in-process and injects the expected text."""
    import shutil
    import subprocess
    import sys

    from medret import get_retriever
    from medret.integrations import searchr1_patch

    root = tmp_path / "Search-R1"
    for part in ("search_r1", "verl"):
        shutil.copytree(Path(SEARCHR1) / part, root / part)
    searchr1_patch.patch(root)
    (root / "step.py").write_text(TRAINER_STEP)
    responses = ["<think>a</think><search> septic shock vasopressor </search>", "<answer> 42 </answer>",
                 "no action", "<search>atrial fibrillation</search>"]
    block = {"url": helpers.closed_port_url(), "topk": 2, "backend": "local", "corpus_name": "sample",
             "retriever_name": "BM25"}
    proc = subprocess.run([sys.executable, "step.py", json.dumps(block), json.dumps(responses)], cwd=root,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    next_obs, dones, valid, is_search = json.loads(proc.stdout.strip().splitlines()[-1])
    r = get_retriever(corpus_name="sample", retriever_name="BM25")

    def info(q):
        return "\n\n<information>" + helpers.searchr1_format(r.retrieve([q], topk=2)["result"][0]).strip() + \
            "</information>\n\n"

    assert next_obs[0] == info("septic shock vasopressor")
    assert next_obs[1] == ""
    assert next_obs[2] == p.INVALID_ACTION_OBSERVATION
    assert next_obs[3] == info("atrial fibrillation")
    assert (dones, valid, is_search) == ([0, 1, 0, 0], [1, 1, 0, 1], [1, 0, 0, 1])
