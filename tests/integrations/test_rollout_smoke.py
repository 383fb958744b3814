"""`medret rollout-smoke`: a scripted multi-turn rollout prints exactly what the trainer would inject."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from medret import get_retriever
from medret.cli import main
from medret.integrations import rollout


def smoke_json(capsys, *flags: str) -> dict:
    capsys.readouterr()
    assert main(["rollout-smoke", "--json", *flags]) == 0
    return json.loads(capsys.readouterr().out)


def expected_information(helpers, query: str, topk: int) -> str:
    docs = get_retriever(corpus_name="sample", retriever_name="BM25").retrieve([query], topk=topk)["result"][0]
    return "\n\n<information>" + helpers.searchr1_format(docs).strip() + "</information>\n\n"


def check_searchr1_rollout(out: dict, helpers, topk: int, turns: int) -> None:
    questions = out["questions"]
    assert questions == list(rollout.DEFAULT_QUESTIONS)
    steps = out["steps"]
    assert len(steps) == len(questions) * (turns + 1)
    assert out["batches"] == [len(questions)] * turns  # one retrieval call per step, all trajectories batched
    assert (out["searches"], out["answers"], out["invalid"]) == (len(questions) * turns, len(questions), 0)
    for s in steps:
        if s["step"] < turns:
            assert s["action"] == "search"
            assert s["response"].endswith(f"<search> {s['query']} </search>")  # cut after </search>
            assert "<information>" not in s["response"]
            assert s["observation"] == expected_information(helpers, s["query"], topk)
            assert s["n_passages"] == topk
        else:
            assert s["action"] == "answer"
            assert s["response"].endswith("</answer>")
            assert s["observation"] == ""
    first = [s for s in steps if s["trajectory"] == 0]
    assert first[0]["query"] == questions[0]
    assert first[1]["query"] != first[0]["query"]  # the second search is a follow-up query


def test_local_backend(capsys, helpers):
    out = smoke_json(capsys, "--corpus", "sample", "--retriever", "BM25", "--turns", "2", "--topk", "2")
    assert out["backend"] == "local"
    info = out["retriever_info"]
    assert (info["corpus"], info["retriever"], info["device"]) == ("sample", "BM25", "cpu")
    check_searchr1_rollout(out, helpers, topk=2, turns=2)


def test_text_output_shows_observations_verbatim(capsys, helpers):
    assert main(["rollout-smoke", "--turns", "1", "--question", "septic shock vasopressor"]) == 0
    text = capsys.readouterr().out
    assert ">>>" + expected_information(helpers, "septic shock vasopressor", 3) + "<<<" in text
    assert "rollout-smoke: OK: 1 trajectories, 1 searches in 1 batches [1], 1 answers" in text
    assert "rollout-smoke: retriever corpus=sample, retriever=BM25" in text


@pytest.mark.integration
def test_http_backend_gives_the_same_observations(capsys, helpers):
    with helpers.RetrieveServer() as server:
        out = smoke_json(capsys, "--backend", "http", "--url", server.url, "--turns", "2")
        assert len(server.requests) == 2
        assert all(r["topk"] == 3 and r["return_scores"] is True for r in server.requests)
    check_searchr1_rollout(out, helpers, topk=3, turns=2)


@pytest.mark.integration
def test_http_backend_against_medret_serve(capsys, helpers, tmp_path):
    """Search-R1's HTTP path against a real `medret serve` (uvicorn on loopback) gives the local observations."""
    address_file = tmp_path / "address"
    proc = subprocess.Popen([sys.executable, "-m", "medret.cli", "serve", "--corpus", "sample", "--retriever", "BM25",
                             "--port", "0", "--address-file", str(address_file), "--log-level", "warning"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while not address_file.exists():
            if proc.poll() is not None:
                pytest.fail(f"medret serve exited with {proc.returncode}: {proc.stderr.read()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail("medret serve did not write its address file within 90 s")
            time.sleep(0.1)
        url = f"http://{address_file.read_text().strip()}/retrieve"
        out = smoke_json(capsys, "--backend", "http", "--url", url, "--turns", "2")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    check_searchr1_rollout(out, helpers, topk=3, turns=2)


def test_verl_protocol(capsys, helpers):
    out = smoke_json(capsys, "--protocol", "verl", "--turns", "1", "--topk", "2")
    for s in out["steps"]:
        if s["action"] == "search":
            docs = get_retriever(corpus_name="sample", retriever_name="BM25").retrieve([s["query"]], topk=2)
            assert s["observation"] == json.dumps({"result": helpers.verl_format(docs["result"][0])},
                                                  ensure_ascii=False)
    assert out["searches"] == 2


def test_zero_turns_answers_at_once(capsys):
    out = smoke_json(capsys, "--turns", "0")
    assert [s["action"] for s in out["steps"]] == ["answer", "answer"] and out["batches"] == []


def test_unreachable_server_fails(capsys, helpers):
    assert main(["rollout-smoke", "--backend", "http", "--url", helpers.closed_port_url()]) == 1
    err = capsys.readouterr().err
    assert "rollout-smoke: FAILED" in err and "could not be reached" in err


def test_missing_url_and_missing_corpus_fail(capsys, tmp_path):
    assert main(["rollout-smoke", "--backend", "http"]) == 1
    assert "--backend http needs --url" in capsys.readouterr().err
    assert main(["rollout-smoke", "--corpus", str(tmp_path / "nothing-here")]) == 1
    assert "rollout-smoke: FAILED" in capsys.readouterr().err


def test_empty_results_fail(capsys, helpers):
    with helpers.RetrieveServer(raw_body=b'{"result": [[], []]}') as server:
        assert main(["rollout-smoke", "--backend", "http", "--url", server.url]) == 1
    assert "returned no passages" in capsys.readouterr().err


def test_invalid_action_observation_in_the_loop():
    """The loop mirrors the trainer for an invalid response too (the scripted policy never produces one)."""
    calls: list[list[str]] = []

    def search(queries):
        calls.append(queries)
        return [f"Doc 1(Title: T) body of {q}\n" for q in queries]

    def policy(question: str, turn: int, turns: int) -> str:
        if turn == 0:
            return "I forgot the tags"
        return rollout.scripted_response(question, turn - 1, turns - 1)

    result = rollout.run_rollout(["q1"], search, turns=2, policy=policy)
    actions = [s.action for s in result.steps]
    assert actions == [None, "search", "answer"]
    assert result.steps[0].observation.startswith("\nMy previous action is invalid.")
    assert result.steps[1].observation == "\n\n<information>Doc 1(Title: T) body of q1</information>\n\n"
    assert calls == [["q1"]]


@pytest.mark.integration
def test_ray_backend(capsys, helpers):
    pytest.importorskip("ray")
    try:
        import medret.transports.ray  # noqa: F401
    except ImportError as e:
        pytest.skip(f"medret's ray transport is not available here ({e})")
    import ray

    from medret.api import clear_cache

    started_here = not ray.is_initialized()
    try:  # medret's Ray transport joins the running Ray (or starts a local one) and creates its actor there
        out = smoke_json(capsys, "--backend", "ray", "--turns", "1")
        assert out["retriever_info"]["ray"]["actor"].startswith("medret:sample:BM25:")
        check_searchr1_rollout(out, helpers, topk=3, turns=1)
        # the veRL tool on the same Ray actor
        out = smoke_json(capsys, "--backend", "ray", "--turns", "1", "--protocol", "verl")
        local = get_retriever(corpus_name="sample", retriever_name="BM25")
        for s in out["steps"]:
            if s["action"] == "search":
                docs = local.retrieve([s["query"]], topk=3)["result"][0]
                assert s["observation"] == json.dumps({"result": helpers.verl_format(docs)}, ensure_ascii=False)
    finally:
        clear_cache()
        if started_here:
            ray.shutdown()


def test_dense_retriever_from_a_model_folder(capsys, helpers, toy_corpus, tiny_bert_dir):
    """A dense retriever (random-weight BERT saved like a hub model) through the same runtime path."""
    flags = ["--corpus", str(toy_corpus), "--retriever", str(tiny_bert_dir), "--pooling", "cls", "--device", "cpu",
             "--question", "sepsis mortality in elderly patients", "--turns", "1", "--topk", "2"]
    out = smoke_json(capsys, *flags)
    r = get_retriever(corpus_name=str(toy_corpus), retriever_name=str(tiny_bert_dir), pooling="cls", device="cpu")
    search = [s for s in out["steps"] if s["action"] == "search"]
    assert len(search) == 1
    docs = r.retrieve([search[0]["query"]], topk=2)["result"][0]
    assert search[0]["observation"] == "\n\n<information>" + helpers.searchr1_format(docs).strip() + \
        "</information>\n\n"
    assert search[0]["n_passages"] == 2
