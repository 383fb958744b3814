"""The Search-R1 / veRL protocol strings, checked against expected strings written out by hand."""
from __future__ import annotations

import json

import pytest

from medret.api import Hit
from medret.integrations import protocol as p

DOCS = [
    {"document": {"id": "s1", "title": "Sepsis", "content": "Sepsis is bad.\nSecond line.",
                  "contents": '"Sepsis"\nSepsis is bad.\nSecond line.'}, "score": 2.5},
    {"document": {"id": "n1", "title": "", "content": "", "contents": "NoNewline"}, "score": 1.0},
    {"document": {"id": "s2", "title": "Sjögren", "content": "Dry eyes.",
                  "contents": '"Sjögren syndrome"\nDry eyes.\n'}, "score": 0.5},
]


# ---------------------------------------------------------------- Search-R1's _passages2string


def test_searchr1_passages_exact_string():
    expected = ('Doc 1(Title: "Sepsis") Sepsis is bad.\nSecond line.\n'
                'Doc 2(Title: NoNewline) \n'
                'Doc 3(Title: "Sjögren syndrome") Dry eyes.\n\n')
    assert p.passages_to_string_searchr1(DOCS) == expected


def test_searchr1_passages_accepts_documents_and_hits():
    expected = 'Doc 1(Title: "Sepsis") Sepsis is bad.\nSecond line.\n'
    assert p.passages_to_string_searchr1([DOCS[0]["document"]]) == expected  # return_scores=False form
    assert p.passages_to_string_searchr1([Hit(DOCS[0]["document"], 2.5)]) == expected
    assert p.passages_to_string_searchr1([]) == ""


def test_information_wrapper_strips_like_execute_predictions():
    assert p.wrap_information('Doc 1(Title: "A") b\n') == '\n\n<information>Doc 1(Title: "A") b</information>\n\n'
    assert p.wrap_information("") == "\n\n<information></information>\n\n"
    assert p.wrap_information("  x \n\n") == "\n\n<information>x</information>\n\n"


def test_observations_per_action():
    assert p.observation_for(p.Action("answer", "42")) == ""
    assert p.observation_for(p.Action("search", "q"), "Doc 1(Title: T) x\n") == \
        "\n\n<information>Doc 1(Title: T) x</information>\n\n"
    expected_invalid = ("\nMy previous action is invalid. If I want to search, I should put the query between "
                        "<search> and </search>. If I want to give the final answer, I should put the answer "
                        "between <answer> and </answer>. Let me try again.\n")
    assert p.observation_for(p.Action(None, "")) == expected_invalid
    with pytest.raises(ValueError):
        p.observation_for(p.Action("search", "q"))


# ---------------------------------------------------------------- veRL's search tool


def test_verl_passages_exact_string():
    expected = ('Doc 1 (Title: "Sepsis")\nSepsis is bad.\nSecond line.\n\n'
                'Doc 2 (Title: NoNewline)\n\n\n'
                'Doc 3 (Title: "Sjögren syndrome")\nDry eyes.')
    assert p.passages_to_string_verl(DOCS) == expected


def test_verl_tool_text_joins_queries_and_keeps_unicode():
    text = p.verl_tool_text([DOCS[:1], DOCS[2:]])
    expected = ('{"result": "Doc 1 (Title: \\"Sepsis\\")\\nSepsis is bad.\\nSecond line.\\n---\\n'
                'Doc 1 (Title: \\"Sjögren syndrome\\")\\nDry eyes."}')
    assert text == expected
    assert json.loads(text)["result"].count("\n---\n") == 1


def test_verl_tool_text_empty_and_errors():
    assert p.verl_tool_text([]) == '{"result": "No search results found."}'
    assert p.verl_error_text("Search execution failed: boom") == '{"result": "Search execution failed: boom"}'


# ---------------------------------------------------------------- cutting and parsing responses


@pytest.mark.parametrize("response, cut", [
    ("<think>x</think><search> a </search> junk </answer>", "<think>x</think><search> a </search>"),
    ("<answer> b </answer> tail", "<answer> b </answer>"),
    ("no tags at all", "no tags at all"),
    # the </search> test comes first, even when an answer closes earlier (as in Search-R1)
    ("<answer>b</answer> more <search>q</search> rest", "<answer>b</answer> more <search>q</search>"),
    ("<search>one</search><search>two</search>", "<search>one</search>"),
    ("", ""),
])
def test_cut_response(response, cut):
    assert p.cut_response(response) == cut


@pytest.mark.parametrize("response, kind, content", [
    ("<think>t</think>\n<search>  septic shock \n</search>", "search", "septic shock"),
    ("<answer>\n 42\n</answer>", "answer", "42"),
    ("<search>\nmulti\nline </search>", "search", "multi\nline"),
    ("<answer>b</answer> more <search>q</search>", "answer", "b"),  # first match wins
    ("<search>q</answer>", None, ""),  # tags must match
    ("<search>unclosed", None, ""),
    ("<SEARCH>q</SEARCH>", None, ""),  # case-sensitive like the regex Search-R1 uses
    ("<search></search>", "search", ""),
])
def test_parse_action(response, kind, content):
    action = p.parse_action(response)
    assert (action.kind, action.content) == (kind, content)


def test_parse_action_rejects_non_strings():
    with pytest.raises(TypeError):
        p.parse_action(None)  # type: ignore[arg-type]
