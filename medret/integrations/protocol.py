"""The Search-R1 action/observation protocol, as a small dependency-free module.

Everything here reproduces, string for string, what the training code does, so that a rollout driven by medret
sees exactly the tokens the trainer would inject:

* Search-R1 (``search_r1/llm_agent/generation.py``)

  - a generated response is cut after the first ``</search>``; if it has none, after the first ``</answer>``
    (``_postprocess_responses``: the ``</search>`` test comes first even when ``</answer>`` appears earlier);
  - the action is the *first* ``<search>…</search>`` or ``<answer>…</answer>`` pair (regex
    ``<(search|answer)>(.*?)</\\1>`` with DOTALL), its content stripped (``postprocess_predictions``);
  - retrieved passages are rendered as ``Doc {i}(Title: {title}) {text}\\n`` per document, where ``title`` is the
    first line of ``contents`` and ``text`` the remaining lines (``_passages2string``);
  - the observation for a search is ``"\\n\\n<information>" + passages.strip() + "</information>\\n\\n"``, for an
    answer the empty string, and for anything else a fixed "invalid action" reminder (``execute_predictions``).

* veRL's search tool (``verl/tools/utils/search_r1_like_utils.py``)

  - per query ``Doc {i} (Title: {title})\\n{text}\\n\\n`` per document, the whole string stripped;
  - several queries joined with ``"\\n---\\n"``; the tool answers ``json.dumps({"result": ...}, ensure_ascii=False)``.

Documents may be given as Search-R1 result items (``{"document": {...}, "score": s}``), as bare document dicts
(``return_scores=False``), or as objects with a ``contents`` attribute (``medret.Hit``).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Iterable, Literal, Sequence

__all__ = [
    "Action",
    "ACTION_PATTERN",
    "INVALID_ACTION_OBSERVATION",
    "VERL_NO_RESULTS",
    "cut_response",
    "parse_action",
    "passages_to_string_searchr1",
    "passages_to_string_verl",
    "verl_tool_text",
    "verl_error_text",
    "wrap_information",
    "observation_for",
    "split_contents",
]

ActionKind = Literal["search", "answer"]

#: The pattern Search-R1 uses to find the action in a response (first match wins).
ACTION_PATTERN = re.compile(r"<(search|answer)>(.*?)</\1>", re.DOTALL)

#: What Search-R1 feeds back when a response contains neither a search nor an answer.
INVALID_ACTION_OBSERVATION = (
    "\nMy previous action is invalid. "
    "If I want to search, I should put the query between <search> and </search>. "
    "If I want to give the final answer, I should put the answer between <answer> and </answer>. "
    "Let me try again.\n"
)

#: veRL's search tool text when the service returned an empty ``result`` list.
VERL_NO_RESULTS = "No search results found."


@dataclass(frozen=True)
class Action:
    """The action found in one response: ``kind`` is ``"search"``, ``"answer"`` or ``None`` (invalid)."""

    kind: ActionKind | None
    content: str

    @property
    def is_search(self) -> bool:
        return self.kind == "search"

    @property
    def is_answer(self) -> bool:
        return self.kind == "answer"


def cut_response(response: str) -> str:
    """Cut a response where Search-R1 stops it: after the first ``</search>``, else after the first ``</answer>``."""
    for closing in ("</search>", "</answer>"):
        head, sep, _ = response.partition(closing)
        if sep:
            return head + closing
    return response


def parse_action(response: str) -> Action:
    """Find the first ``<search>…</search>`` or ``<answer>…</answer>`` in ``response`` (content stripped)."""
    if not isinstance(response, str):
        raise TypeError(f"response must be a str, got {type(response).__name__}")
    match = ACTION_PATTERN.search(response)
    if match is None:
        return Action(kind=None, content="")
    return Action(kind=match.group(1), content=match.group(2).strip())  # type: ignore[arg-type]


def _contents_of(item: Any) -> str:
    if isinstance(item, dict):
        doc = item["document"] if "document" in item else item
        return str(doc["contents"])
    contents = getattr(item, "contents", None)
    if contents is None:
        doc = getattr(item, "document", None)
        if isinstance(doc, dict):
            return str(doc["contents"])
        raise TypeError(f"cannot find 'contents' in a retrieved item of type {type(item).__name__}")
    return str(contents)


def split_contents(contents: str) -> tuple[str, str]:
    """Split a document's ``contents`` into (first line, the remaining lines joined by newlines)."""
    title, _, text = contents.partition("\n")
    return title, text


def passages_to_string_searchr1(result: Iterable[Any]) -> str:
    """Render one query's retrieved documents exactly as Search-R1's ``_passages2string``."""
    parts = []
    for number, item in enumerate(result, start=1):
        title, text = split_contents(_contents_of(item))
        parts.append(f"Doc {number}(Title: {title}) {text}\n")
    return "".join(parts)


def passages_to_string_verl(result: Iterable[Any]) -> str:
    """Render one query's retrieved documents exactly as veRL's search tool (``search_r1_like_utils``)."""
    parts = []
    for number, item in enumerate(result, start=1):
        title, text = split_contents(_contents_of(item))
        parts.append(f"Doc {number} (Title: {title})\n{text}\n\n")
    return "".join(parts).strip()


def verl_tool_text(results: Sequence[Sequence[Any]]) -> str:
    """The text veRL's search tool returns for a batch: the JSON object ``{"result": …}``."""
    if not results:
        return json.dumps({"result": VERL_NO_RESULTS}, ensure_ascii=False)
    body = "\n---\n".join(passages_to_string_verl(r) for r in results)
    return json.dumps({"result": body}, ensure_ascii=False)


def verl_error_text(message: str) -> str:
    """An error handed back to the model the way veRL's search tool does it."""
    return json.dumps({"result": message}, ensure_ascii=False)


def wrap_information(passages: str) -> str:
    """The observation Search-R1 appends after a search turn."""
    return f"\n\n<information>{passages.strip()}</information>\n\n"


def observation_for(action: Action, passages: str | None = None) -> str:
    """The observation Search-R1 injects after ``action`` (``passages`` is the rendered result of a search)."""
    if action.kind == "answer":
        return ""
    if action.kind == "search":
        if passages is None:
            raise ValueError("a search action needs its rendered passages")
        return wrap_information(passages)
    return INVALID_ACTION_OBSERVATION
