"""The LLM judge against a fake OpenAI-compatible server on 127.0.0.1 (no network): valid verdicts,
both orders mapped back, position bias cancelled and measured, garbage, server down, retries,
the cache, the prompt template."""
import json
import math
import re
import socket
import time

import pandas as pd
import pytest

from dlm_bench.judge import pairs as P
from dlm_bench.errors import UserError
from dlm_bench.judge.client import Judge, JudgeConfig, JudgeUnreachable, parse_verdict
from dlm_bench.judge.prompt import load_template, parse_template
from fake_openai import FakeServer


@pytest.fixture
def server():
    made = []

    def start(reply, **kw):
        made.append(FakeServer(reply, **kw))
        return made[-1]
    yield start
    for s in made:
        s.close()


def _judge(url, tmp_path=None, **kw):
    cfg = JudgeConfig(**{"model": "fake-judge", "base_url": url, "max_retries": 0, "timeout": 5,
                         "cache_dir": tmp_path, **kw})
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


def test_both_orders_judged_and_mapped_back(server):
    srv = server(_marked_wins)
    out = P.judge_methods(_gens(), "diverse", "narrow", _judge(srv.url), seed=1)
    assert len(out) == 48 and len(srv.requests) == 48
    assert (out.groupby("problem_id")["swapped"].apply(sorted) == pd.Series([[False, True]] * 24)
            .set_axis(sorted(out["problem_id"].unique()))).all()
    # whichever side "diverse" was shown on, the verdict is its win and its approaches are its own
    assert (out["outcome"] == "win").all() and (out["winner"] == "diverse").all()
    assert all(a == ["marked"] and b == ["plain"]
               for a, b in zip(out["approaches_a"], out["approaches_b"]))
    flipped = P.judge_methods(_gens(), "narrow", "diverse", _judge(srv.url), seed=1)
    assert (flipped["outcome"] == "loss").all()
    correct_only = P.judge_methods(_gens(), "diverse", "narrow", _judge(srv.url), only_correct=True)
    assert (correct_only["n_shown_a"] == 2).all()  # sample 1 is incorrect everywhere
    r = P.win_rates(out, n_resamples=500).iloc[0]
    assert (r["win"], r["net"], r["n_judged"]) == (1.0, 1.0, 24)
    assert r["position_bias"] == 0.0 and r["prefers_first"] == 0.5  # a content judge: no bias


def test_balanced_assignment_is_seeded_and_half_each_way(server):
    srv = server(_marked_wins)
    gens = pd.concat([_gens(7), _gens(7).assign(gen_length=512)])
    out = P.judge_methods(gens, "diverse", "narrow", _judge(srv.url), seed=1, orders="balanced")
    assert len(out) == 14 and (out.groupby("gen_length")["swapped"].sum() == 3).all()
    again = P.judge_methods(gens, "diverse", "narrow", _judge(srv.url), seed=1, orders="balanced")
    assert list(again["swapped"]) == list(out["swapped"])
    other = P.judge_methods(gens, "diverse", "narrow", _judge(srv.url), seed=2, orders="balanced")
    assert list(other["swapped"]) != list(out["swapped"])
    rates = P.win_rates(out, n_resamples=200)
    assert math.isnan(rates.iloc[0]["position_bias"]) and (rates["win"] == 1.0).all()
    with pytest.raises(UserError, match="orders"):
        P.judge_methods(gens, "diverse", "narrow", _judge(srv.url), orders="random")


def test_constant_judge_is_no_difference_and_fully_position_biased(server):
    """The issue's failure: a judge that always answers "A" must come out as no difference."""
    srv = server(lambda body: (200, _verdict("A")))
    gens = pd.concat([_gens(20), _gens(20).assign(temperature=0.9)])
    out = P.judge_methods(gens, "diverse", "narrow", _judge(srv.url))
    table = P.win_rates(out, n_resamples=1000)
    assert list(table["task"]) == ["gsm8k", "gsm8k", "all"] and table["n_judged"].tolist() == [20, 20, 40]
    for r in table.to_dict("records"):
        assert r["net"] == 0.0 and r["net_ci_low"] <= 0.0 <= r["net_ci_high"]
        assert r["position_bias"] == 1.0 and r["prefers_first"] == 1.0
        # every problem's two verdicts followed the position: ties, the raw shares kept beside them
        assert (r["win"], r["tie"], r["loss"]) == (0.0, 1.0, 0.0)
        assert (r["raw_win"], r["raw_tie"], r["raw_loss"]) == (0.5, 0.0, 0.5)
    md = P.win_rates_markdown(table)
    assert re.search(r"\| all \| all \| all \| 40 / 40 \| 0 \[0, 0\] \| 100 \[100, 100\] \| 0 \[0, 0\] \| "
                     r"0 \[0, 0\] \| 100 \| 50 / 0 / 50 \| 100 \|", md), md


def test_position_following_problems_are_ties_others_as_judged():
    """By hand: p0 follows the position (A both times: one win, one loss), p1 is two wins, p2 a win
    and a tie. Win / Tie / Loss count p0 as a tie; the raw shares and net are the verdicts' own."""
    rows = []
    for pid, verdicts in (("p0", [("A", "win"), ("A", "loss")]), ("p1", [("A", "win"), ("B", "win")]),
                          ("p2", [("A", "win"), ("TIE", "tie")])):
        rows += [dict(task="gsm8k", gen_length=256, temperature=0.6, problem_id=pid, method_a="x",
                      method_b="y", status="ok", position=pos, outcome=o, n_approaches_a=1,
                      n_approaches_b=1, judge_model="fake") for pos, o in verdicts]
    r = P.win_rates(pd.DataFrame(rows), n_resamples=200).iloc[0]
    assert (r["win"], r["tie"], r["loss"]) == pytest.approx(((0 + 1 + 0.5) / 3, (1 + 0 + 0.5) / 3, 0.0))
    assert (r["raw_win"], r["raw_tie"], r["raw_loss"]) == pytest.approx((2 / 3, 1 / 6, 1 / 6))
    assert r["net"] == pytest.approx((0 + 1 + 0.5) / 3) and r["position_bias"] == pytest.approx(1 / 3)


def test_garbage_is_unparseable_and_never_raises(server):
    srv = server(lambda body: (200, "I think set A is nicer. {not json}"))
    j = _judge(srv.url).compare(None, ["a"], ["b"])
    assert j.status == "unparseable" and j.raw.startswith("I think") and j.winner is None
    wrong = server(lambda body: (200, _verdict("C")))  # a winner outside A/B/TIE is garbage too
    assert _judge(wrong.url).compare(None, ["a"], ["b"]).status == "unparseable"


def test_plain_text_fallback_when_response_format_rejected(server, capsys):
    def reply(body):
        if "response_format" in body:
            return 400, "response_format is not supported"
        return 200, "Sure.\n```json\n" + _verdict("TIE") + "\n```"
    srv = server(reply)
    judge = _judge(srv.url)
    assert judge.compare(None, ["a"], ["b"]).winner == "TIE"
    assert judge.compare(None, ["c"], ["d"]).status == "ok"
    assert ["response_format" in b for b in srv.requests] == [True, False, False]
    err = capsys.readouterr().err
    assert err.count("rejected structured output (HTTP 400: ") == 1 and "response_format is not supported" in err


def test_unrelated_400_keeps_structured_output(server, capsys):
    """A 400 that plain text gets too (a prompt too long) is not about the schema: the request fails,
    nothing is announced, and the next request asks for structured output again."""
    srv = server(lambda body: (400, "prompt too long"))
    judge = _judge(srv.url)
    for _ in range(2):
        j = judge.compare(None, ["a"], ["b"])
        assert j.status == "unavailable" and "prompt too long" in j.error
    assert ["response_format" in b for b in srv.requests] == [True, False, True, False]
    assert "structured output" not in capsys.readouterr().err


def test_retries_vary_seed_and_temperature(server):
    """An unparseable answer is asked again with the next seed and the temperature nudged up; a
    server that honours them can answer; one that repeats itself is left after one retry."""
    def by_seed(body):
        return (200, _verdict("B")) if body["seed"] == 2 else (200, f"garbage for seed {body['seed']}")
    srv = server(by_seed)
    got = _judge(srv.url, max_retries=3, backoff=0).compare(None, ["a"], ["b"])
    assert got.status == "ok" and got.winner == "B" and got.attempts == 3
    assert [(b["seed"], b["temperature"]) for b in srv.requests] == [(0, 0.0), (1, 0.2), (2, 0.4)]
    assert (got.seed, got.temperature) == (2, 0.4) and [t["raw"] for t in got.tries][:2] == [
        "garbage for seed 0", "garbage for seed 1"]
    same = server(lambda body: (200, "the same garbage"))
    got = _judge(same.url, max_retries=3, backoff=0).compare(None, ["a"], ["b"])
    assert got.status == "unparseable" and got.attempts == 2 and len(same.requests) == 2
    assert same.requests[0]["seed"] != same.requests[1]["seed"]


def test_server_down_or_failing_is_unavailable(server):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(JudgeUnreachable, match="cannot be reached"):   # the preflight says so at once
        _judge(f"http://127.0.0.1:{port}/v1").compare(None, ["a"], ["b"])
    j = _judge(f"http://127.0.0.1:{port}/v1", preflight=False).compare(None, ["a"], ["b"])
    assert j.status == "unavailable" and "connection" in j.error
    wrong_model = server(lambda body: (200, _verdict("A")), preflight_status=404)
    with pytest.raises(JudgeUnreachable, match="HTTP 404"):
        _judge(wrong_model.url).compare(None, ["a"], ["b"])
    assert wrong_model.requests == [] and len(wrong_model.preflights) == 1
    srv = server(lambda body: (500, "boom"))   # up (the preflight passes), but failing every request
    out = P.judge_methods(_gens(3), "diverse", "narrow", _judge(srv.url))
    assert (out["status"] == "unavailable").all() and out["error"].str.contains("500").all()
    rates = P.win_rates(out, n_resamples=200)
    assert rates.loc[0, "n_unavailable"] == 6 and math.isnan(rates.loc[0, "win"])
    line, rate = P.summary(out, n_sent=6)
    assert rate == 0.0 and line.startswith("judge: 0 of 6 requests judged") and "HTTP 500" in line
    assert "n/a" in P.win_rates_markdown(rates)


def test_retry_then_timeout(server):
    calls = []

    def flaky(body):
        calls.append(1)
        return (503, "busy") if len(calls) == 1 else (200, _verdict("A"))
    srv = server(flaky)
    j = Judge(JudgeConfig(model="fake-judge", base_url=srv.url, max_retries=1, timeout=5, backoff=0.2))
    t0 = time.monotonic()
    got = j.compare(None, ["a"], ["b"])
    assert got.winner == "A" and got.attempts == 2 and len(calls) == 2  # 503 retried
    assert time.monotonic() - t0 >= 0.2  # after the backoff

    replies = iter([(200, "not json"), (200, _verdict("B"))])
    srv = server(lambda body: next(replies))
    got = _judge(srv.url, max_retries=2, backoff=0).compare(None, ["a"], ["b"])
    assert got.winner == "B" and got.attempts == 2  # a garbled answer is asked again

    srv = server(lambda body: (401, "bad key"))
    got = _judge(srv.url, max_retries=3, backoff=0).compare(None, ["a"], ["b"])
    assert got.status == "unavailable" and got.attempts == 1 and len(srv.requests) == 1  # not retryable

    def slow(body):
        time.sleep(1.0)
        return 200, _verdict("A")
    srv = server(slow)
    out = Judge(JudgeConfig(model="fake-judge", base_url=srv.url, max_retries=0,
                            timeout=0.2)).compare(None, ["a"], ["b"])
    assert out.status == "unavailable" and "timed out" in out.error


def test_cache_prevents_second_request(server, tmp_path):
    srv = server(_marked_wins)
    first = P.judge_methods(_gens(5), "diverse", "narrow", _judge(srv.url, tmp_path))
    assert len(srv.requests) == 10 and not first["cached"].any()
    second = P.judge_methods(_gens(5), "diverse", "narrow", _judge(srv.url, tmp_path))
    assert len(srv.requests) == 10 and second["cached"].all()
    cols = ["problem_id", "swapped", "winner", "outcome", "reason"]
    pd.testing.assert_frame_equal(first[cols], second[cols])
    other_model = Judge(JudgeConfig(model="another-judge", base_url=srv.url, max_retries=0,
                                    timeout=5, cache_dir=tmp_path))
    P.judge_methods(_gens(5), "diverse", "narrow", other_model)
    assert len(srv.requests) == 20  # the judge model is part of the key
    own = tmp_path / "own.txt"
    own.write_text("[user]\nWhich is more varied?\n{set_a}\n---\n{set_b}\n")
    P.judge_methods(_gens(5), "diverse", "narrow", _judge(srv.url, tmp_path, prompt_file=own))
    assert len(srv.requests) == 30  # and so is the template


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
                           method_a="x", method_b="y", status="ok", outcome=o, position="A",
                           n_approaches_a=2, n_approaches_b=1, judge_model="fake")
                      for i, o in enumerate(outcomes)]
                     + [dict(task="gsm8k", gen_length=256, temperature=0.6, problem_id="p10",
                             method_a="x", method_b="y", status="unparseable", outcome=None, position=None,
                             n_approaches_a=math.nan, n_approaches_b=math.nan,
                             judge_model="fake")])
    r = P.win_rates(j, n_resamples=2000).iloc[0]
    assert (r["n_problems"], r["n_judged"], r["n_unparseable"]) == (11, 10, 1)
    assert (r["win"], r["tie"], r["loss"]) == (0.6, 0.2, 0.2)
    assert r["net"] == pytest.approx(0.4)
    for name in ("win", "tie", "loss", "net"):
        assert r[f"{name}_ci_low"] <= r[name] <= r[f"{name}_ci_high"]
    md = P.win_rates_markdown(P.win_rates(j, n_resamples=500))
    assert re.search(r"\| 10 / 11 \| 60 \[", md) and "(fake)" in md


def test_prompt_template_default_and_own(server, tmp_path):
    default = load_template()
    assert "{set_a}" in default.user and "TIE" in default.user and default.system
    msgs = default.messages(problem="P?", n_a=1, n_b=2, set_a="[A1] x", set_b="[B1] y")
    assert [m["role"] for m in msgs] == ["system", "user"] and "P?" in msgs[1]["content"]
    plain = parse_template('Set one {set_a} set two {set_b}; answer {"winner": "A"}', "mine")
    assert plain.system is None and plain.messages(problem="", n_a=0, n_b=0, set_a="1", set_b="2")[0][
        "content"] == 'Set one 1 set two 2; answer {"winner": "A"}'  # other braces left alone
    with pytest.raises(UserError, match="set_b"):
        parse_template("[user]\nonly {set_a}", "bad")
    with pytest.raises(UserError, match="cannot read"):
        load_template(tmp_path / "missing.txt")
    srv = server(lambda body: (200, _verdict("TIE")))
    own = tmp_path / "own.txt"
    own.write_text("[system]\nBe brief.\n[user]\nQ: {problem}\nA: {set_a}\nB: {set_b}\n")
    _judge(srv.url, prompt_file=own).compare("2+2?", ["four"], ["4"])
    assert srv.requests[0]["messages"] == [{"role": "system", "content": "Be brief."},
                                           {"role": "user", "content": "Q: 2+2?\nA: [A1]\nfour\nB: [B1]\n4"}]


# --------------------------------------------------------------------------- the command, as the README runs it

def _testbed_runs(root, n_problems=6):
    """A store with two methods on real testbed problems (statements the CLI must load itself)."""
    from dlm_bench.runs.store import Store
    from dlm_bench.tasks import get_task
    problems = get_task("testbed").load("test")[:n_problems]
    for method in ("trafl", "espo"):
        for temp in (0.6, 0.9):
            rows = [dict(method=method, task="testbed", temperature=temp, gen_length=12,
                         problem_id=p.id, sample=s, seed=s, config_hash=f"{method}-{temp}",
                         prompt_hash="ph", text=f"{p.id} {method} try {s}", tokens=[1], nfe=12,
                         length=5, seconds=0.0, correct=bool(s % 2), extracted="1+1", reason="")
                    for p in problems for s in range(3)]
            Store(root / method / f"T{temp}").append("scores", rows)
    return {p.id: p.question for p in problems}


def _cli(args, cwd):
    """`dlm-bench ...` through the installed console script, from a folder outside the checkout, so
    an import that only works from the repository root fails here as it does for users."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path
    exe = Path(sys.executable).with_name("dlm-bench")
    cmd = [str(exe)] if exe.exists() else [shutil.which("dlm-bench") or "dlm-bench"]
    return subprocess.run(cmd + args, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_readme_judge_command_with_problems_and_constant_judge(server, tmp_path):
    statements = _testbed_runs(tmp_path / "runs")
    srv = server(lambda body: (200, _verdict("A")))
    res = _cli(["judge", "trafl", "espo", "--runs", str(tmp_path / "runs"), "--judge-url", srv.url,
                "--judge-model", "fake", "--retries", "0", "--resamples", "500",
                "--save", str(tmp_path / "j.csv")], cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert len(srv.requests) == 6 * 2 * 2  # problems x temperatures x both orders
    for body in srv.requests:  # each request shows the statement of the problem its samples solve
        user = body["messages"][-1]["content"]
        pid = re.search(r"\[A1\]\n(\S+) ", user).group(1)
        assert f"Problem:\n{statements[pid]}\n" in user
    assert re.search(r"\| all \| all \| all \| 12 / 12 \| 0 \[0, 0\] \| 100 \[100, 100\] \| 0 \[0, 0\] \| "
                     r"0 \[0, 0\] \| 100 \| 50 / 0 / 50 \| 100 \|", res.stdout), res.stdout
    assert "judge: 24 of 24 requests judged (100%; 0 from the cache, 25 sent" in res.stdout
    assert len(srv.preflights) == 1 and "judge: 100%" in res.stderr     # one preflight; a progress bar
    saved = pd.read_csv(tmp_path / "j.csv")
    assert len(saved) == 24 and (saved["position"] == "A").all()
    assert set(saved.groupby("problem_id")["outcome"].apply(lambda s: tuple(sorted(s)))) == {
        ("loss", "loss", "win", "win")}  # each problem: a win in one order, a loss in the other


def test_judge_command_fails_when_the_judge_is_down(server, tmp_path):
    """A closed port: exit 1 after the one preflight request, with one line. The retries and
    backoff given here would keep the old per-request retries waiting for over 10 minutes."""
    _testbed_runs(tmp_path / "runs", n_problems=2)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    res = _cli(["judge", "trafl", "espo", "--runs", str(tmp_path / "runs"), "--judge-url",
                f"http://127.0.0.1:{port}/v1", "--judge-model", "none", "--retries", "3",
                "--backoff", "100", "--temps", "0.6"], cwd=tmp_path)
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    (line,) = [x for x in res.stderr.splitlines() if x.startswith("dlm-bench judge:")]
    assert f"judge endpoint http://127.0.0.1:{port}/v1 (model none) cannot be reached" in line
    srv = server(lambda body: (200, _verdict("A")), preflight_status=401)
    res = _cli(["judge", "trafl", "espo", "--runs", str(tmp_path / "runs"), "--judge-url", srv.url,
                "--judge-model", "none", "--temps", "0.6"], cwd=tmp_path)
    assert res.returncode == 1 and "refused the preflight request: HTTP 401" in res.stderr
    assert srv.requests == []
    bad = tmp_path / "bad.txt"
    bad.write_text("no placeholders")
    res = _cli(["judge", "trafl", "espo", "--runs", str(tmp_path / "runs"), "--judge-url",
                f"http://127.0.0.1:{port}/v1", "--judge-model", "none", "--prompt-file", str(bad)],
               cwd=tmp_path)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1 and "{set_a}" in res.stderr


def test_cached_rerun_needs_no_endpoint(server, tmp_path, capsys):
    """With a cache, the preflight comes before the first request the cache cannot answer, so a
    fully cached rerun works with the server gone (the library, then the command)."""
    from dlm_bench.cli import main
    srv = server(_marked_wins)
    first = P.judge_methods(_gens(3), "diverse", "narrow", _judge(srv.url, tmp_path))
    _testbed_runs(tmp_path / "runs", n_problems=2)
    flags = ["--runs", str(tmp_path / "runs"), "--judge-model", "fake", "--temps", "0.6", "--resamples",
             "200", "--cache", str(tmp_path / "cache")]
    assert main(["judge", "trafl", "espo", "--judge-url", srv.url] + flags) == 0
    srv.close()
    again = P.judge_methods(_gens(3), "diverse", "narrow", _judge(srv.url, tmp_path))
    assert again["cached"].all() and list(again["outcome"]) == list(first["outcome"])
    capsys.readouterr()
    assert main(["judge", "trafl", "espo", "--judge-url", srv.url] + flags) == 0
    assert "judge: 4 of 4 requests judged (100%; 4 from the cache, 0 sent" in capsys.readouterr().out


def test_save_keeps_raw_answers_of_every_request(server, tmp_path):
    """--save: garbled and failed requests are rows too, with the raw answer and every try."""
    _testbed_runs(tmp_path / "runs", n_problems=3)

    def mixed(body):
        pid = re.search(r"\[A1\]\n(\S+) ", body["messages"][-1]["content"]).group(1)
        return {0: (200, _verdict("TIE")), 1: (200, "no idea, sorry")}.get(
            sorted(_testbed_ids()).index(pid), (503, "overloaded"))
    srv = server(mixed)
    res = _cli(["judge", "trafl", "espo", "--runs", str(tmp_path / "runs"), "--judge-url", srv.url,
                "--judge-model", "fake", "--retries", "1", "--backoff", "0", "--temps", "0.6",
                "--min-success", "0", "--resamples", "200", "--save", str(tmp_path / "j.csv")], cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    saved = pd.read_csv(tmp_path / "j.csv")
    assert sorted(saved["status"]) == ["ok"] * 2 + ["unavailable"] * 2 + ["unparseable"] * 2
    for r in saved.to_dict("records"):
        tries = json.loads(r["tries"])
        assert len(tries) == r["attempts"] == 2 - (r["status"] == "ok")
        if r["status"] == "unparseable":   # the same garbage twice: the retry at seed 1, T 0.2 stopped it
            assert r["raw"] == "no idea, sorry" and [t["raw"] for t in tries] == [r["raw"]] * 2
            assert [(t["seed"], t["temperature"]) for t in tries] == [(0, 0.0), (1, 0.2)]
            assert "same answer as an earlier try" in r["error"]
        elif r["status"] == "unavailable":  # a failed request is retried as it was
            assert all("HTTP 503" in t["error"] and t["raw"] is None for t in tries)
            assert [(t["seed"], t["temperature"]) for t in tries] == [(0, 0.0)] * 2
        else:
            assert json.loads(r["raw"])["winner"] == "TIE" and r["judge_temperature"] == 0.0


def _testbed_ids():
    from dlm_bench.tasks import get_task
    return [p.id for p in get_task("testbed").load("test")[:3]]
