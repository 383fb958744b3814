"""A multi-turn search rollout with a scripted policy: prove the retrieval set-up before a long training job.

The loop follows Search-R1's ``LLMGenerationManager.run_llm_loop``: at each of ``max_turns`` steps every active
trajectory produces a response, the response is cut after its first ``</search>`` / ``</answer>``, the action is
parsed, all search queries of the step go to the retriever as one batch, and each trajectory receives the
observation the trainer would inject (``\\n\\n<information>…</information>\\n\\n`` after a search, nothing after an
answer, the invalid-action reminder otherwise); a final step without search follows. Only the policy is fake:
fixed responses that search ``turns`` times and then answer.

``protocol="verl"`` runs the same script through :class:`medret.integrations.verl_tool.MedretSearchTool` and shows
the tool's answer text (what veRL's agent loop puts in the tool message) instead.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Literal, Sequence

from medret.errors import MedretError, TransportError
from medret.integrations import protocol
from medret.integrations.searchr1_runtime import backend_of, batch_search
from medret.transports import transport_class

logger = logging.getLogger(__name__)

DEFAULT_QUESTIONS: tuple[str, ...] = (
    "What is the first-line treatment of anaphylaxis?",
    "How is atrial fibrillation rate control achieved?",
)

# one follow-up query per extra turn, appended to the question's topic
_FOLLOW_UPS = ("complications", "treatment", "diagnosis", "prognosis", "mechanism")


class RolloutError(MedretError):
    """The scripted rollout could not complete (retrieval failed or returned nothing)."""


@dataclass
class Step:
    trajectory: int
    step: int
    response: str  # as cut by the trainer
    action: str | None
    query: str
    observation: str  # exactly what the trainer appends after the response
    n_passages: int = 0


@dataclass
class RolloutResult:
    questions: list[str]
    steps: list[Step] = field(default_factory=list)
    batches: list[int] = field(default_factory=list)  # queries per retrieval call

    @property
    def n_searches(self) -> int:
        return sum(1 for s in self.steps if s.action == "search")

    @property
    def n_answers(self) -> int:
        return sum(1 for s in self.steps if s.action == "answer")

    @property
    def n_invalid(self) -> int:
        return sum(1 for s in self.steps if s.action is None)

    def to_dict(self) -> dict[str, Any]:
        return {"questions": self.questions, "batches": self.batches, "steps": [asdict(s) for s in self.steps],
                "searches": self.n_searches, "answers": self.n_answers, "invalid": self.n_invalid}


def search_query(question: str, turn: int) -> str:
    """The query the scripted policy issues at search turn ``turn`` (0-based)."""
    if turn == 0:
        return question
    topic = question.rstrip("?").strip()
    return f"{topic} {_FOLLOW_UPS[(turn - 1) % len(_FOLLOW_UPS)]}"


def scripted_response(question: str, turn: int, turns: int) -> str:
    """The fixed response at turn ``turn``: a search while ``turn < turns``, then an answer.

    Search responses carry text after ``</search>`` (as a real model's often do); the trainer cuts it off.
    """
    if turn < turns:
        query = search_query(question, turn)
        return (f"<think>I need evidence for: {question}</think>\n<search> {query} </search>\n"
                "<information>text the model invented after its query; the trainer cuts this off</information>")
    return (f"<think>The retrieved passages are enough to answer.</think>\n"
            f"<answer> scripted answer to: {question} </answer> trailing words after the answer")


SearchFn = Callable[[list[str]], list[str]]  # queries -> one rendered observation body per query


Policy = Callable[[str, int, int], str]  # (question, turn, turns) -> the response generated at that turn


def run_rollout(questions: Sequence[str], search: SearchFn, turns: int = 2, max_turns: int | None = None,
                wrap: Callable[[protocol.Action, str | None], str] = protocol.observation_for,
                policy: Policy | None = None) -> RolloutResult:
    """Run the scripted rollout. ``search`` gets one batch of queries per step and returns each one's passages;
    ``policy`` produces the responses (default :func:`scripted_response`)."""
    policy = scripted_response if policy is None else policy
    if turns < 0:
        raise RolloutError(f"turns={turns} is invalid: give 0 or more search turns")
    max_turns = turns if max_turns is None else max_turns
    questions = list(questions)
    if not questions:
        raise RolloutError("no questions: give at least one --question")
    result = RolloutResult(questions=questions)
    active = [True] * len(questions)
    turn_of = [0] * len(questions)
    for step in range(max_turns + 1):
        do_search = step < max_turns  # the trainer's final rollout runs without search
        if not any(active):
            break
        actions: dict[int, tuple[str, protocol.Action]] = {}
        for i, q in enumerate(questions):
            if active[i]:
                response = protocol.cut_response(policy(q, turn_of[i], turns))
                actions[i] = (response, protocol.parse_action(response))
        queries = [a.content for _, a in actions.values() if a.is_search]
        if do_search and queries:
            bodies = search(queries)
            if len(bodies) != len(queries):
                raise RolloutError(f"the retriever answered {len(bodies)} results for {len(queries)} queries")
            result.batches.append(len(queries))
        else:
            bodies = [""] * len(queries)
        body_iter = iter(bodies)
        for i, (response, action) in actions.items():
            body = next(body_iter) if action.is_search else None
            observation = wrap(action, body)
            n_passages = _count_passages(body) if body is not None else 0
            result.steps.append(Step(trajectory=i, step=step, response=response, action=action.kind,
                                     query=action.content if action.is_search else "", observation=observation,
                                     n_passages=n_passages))
            if action.is_answer:
                active[i] = False
            turn_of[i] += 1
    return result


def _count_passages(body: str) -> int:
    return body.count("(Title: ")


def searchr1_search_fn(block: dict[str, Any]) -> SearchFn:
    """Search the way a patched Search-R1 trainer does: ``_batch_search`` then ``_passages2string`` per query."""
    def search(queries: list[str]) -> list[str]:
        data = batch_search(block, queries)
        bodies = []
        for query, docs in zip(queries, data["result"]):
            if not docs:
                raise RolloutError(f"retrieval returned no passages for query {query!r}: is the corpus empty?")
            bodies.append(protocol.passages_to_string_searchr1(docs))
        return bodies

    return search


def verl_search_fn(tool_config: dict[str, Any]) -> SearchFn:
    """Search the way veRL's agent loop does: one MedretSearchTool call per trajectory; returns the tool texts."""
    with contextlib.redirect_stdout(sys.stderr):  # veRL's BaseTool prints the schema; keep stdout for the rollout
        # veRL (when installed) comes with the tool; importing it costs seconds: only for protocol="verl"
        from medret.integrations.verl_tool import MedretSearchTool  # noqa: PLC0415 - optional (veRL)

        tool = MedretSearchTool(tool_config)

    async def one(query: str) -> str:
        instance_id, _ = await tool.create()
        try:
            response, _, metrics = await tool.execute(instance_id, {"query_list": [query]})
        finally:
            await tool.release(instance_id)
        if "error" in metrics:
            raise TransportError(f"the tool failed for query {query!r}: {metrics['error']}")
        if not metrics.get("total_results"):
            raise RolloutError(f"retrieval returned no passages for query {query!r}: is the corpus empty?")
        return str(response.text)

    async def batch(queries: list[str]) -> list[str]:
        return list(await asyncio.gather(*(one(q) for q in queries)))

    def search(queries: list[str]) -> list[str]:
        return asyncio.run(batch(queries))

    return search


def verl_observation(action: protocol.Action, body: str | None) -> str:
    """In the veRL protocol the tool's text is the whole observation."""
    if action.is_search:
        assert body is not None
        return body
    return protocol.observation_for(action, body)


def smoke(questions: Sequence[str], block: dict[str, Any], turns: int = 2,
          which: Literal["searchr1", "verl"] = "searchr1") -> RolloutResult:
    """Run the scripted rollout against the backend ``block`` describes (keys as in the trainer's retriever block)."""
    if which == "verl":
        config = dict(block)
        if transport_class(backend_of(config)).at_url:  # the tool's key for the url
            config["retrieval_service_url"] = config.pop("url", None)
        return run_rollout(questions, verl_search_fn(config), turns=turns, wrap=verl_observation)
    return run_rollout(questions, searchr1_search_fn(block), turns=turns)
