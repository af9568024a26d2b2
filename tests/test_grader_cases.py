"""Grader cases reported on real LLaDA-8B-Instruct output (issue 11), rebuilt around each failing pattern
and graded through `dlm-bench grade`,
plus the answer modes and a regression guard over every GSM8K reference solution."""
import json

import pytest

from dlm_bench.cli import main
from dlm_bench.tasks import get_task
from dlm_bench.tasks.math500 import prediction_text


def _grade(tmp_path, task, rows, *extra):
    src = tmp_path / f"{task}.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / f"{task}.graded.jsonl"
    assert main(["grade", task, str(src), "-o", str(out), *extra]) == 0
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_gsm8k_cases_from_real_output(tmp_path, capsys):
    rows = [
        # gold 2: the latest start time, written as a clock time in the box
        {"problem_id": "gsm8k/test/1001", "completion": "She must start 3 hours 0 minutes before 5:00 pm, "
                                                        "so the latest start is \\boxed{2:00 pm}."},
        # gold 20: the model kept writing after its end-of-turn token; the sweep never sees that tail
        {"problem_id": "gsm8k/test/4", "completion": "so \\boxed{20}</answer><|eot_id|>\\boxed{0}"},
        # gold 18: no box, only a last number glued to a parenthesis
        {"problem_id": "gsm8k/test/0", "completion": "16 - 3 - 4 = 9 eggs, 9 * 2 = 88)18"},
    ]
    got = _grade(tmp_path, "gsm8k", rows)
    assert [r["correct"] for r in got] == [True, True, True]
    assert [r["extracted"] for r in got] == ["2", "20", "18"]
    assert [r["correct_strict"] for r in got] == [True, True, False]   # strict: only \boxed{} counts
    assert "(strict: correct=2 " in capsys.readouterr().out
    strict = _grade(tmp_path, "gsm8k", rows, "--answer-mode", "strict")
    assert [r["correct"] for r in strict] == [True, True, False] and strict[2]["reason"] == "no_answer"


def test_math500_placeholder_box_is_no_answer(tmp_path):
    pid = "math500/test/algebra/2584.json"       # gold \frac{14}{3}
    rows = [
        # the reasoning holds the right value, but the final box is a placeholder: not an answer
        {"problem_id": pid, "completion": "First $x = \\frac{14}{3}$, then we simplify further and "
                                          "the final answer is $\\boxed{...}$"},
        {"problem_id": pid, "completion": "Thus $x = 1$. The answer is $\\boxed{\\frac{14}{3}}$"},
        {"problem_id": pid, "completion": "Thus $x = \\frac{14}{3}$."},          # no box: flexible only
    ]
    got = _grade(tmp_path, "math500", rows)
    assert [r["correct"] for r in got] == [False, True, True]
    assert got[0]["reason"] == "no_answer" and got[0]["extracted"] == "..."
    assert got[1]["extracted"] == "\\frac{14}{3}"        # what was graded is what is shown
    assert [r["correct_strict"] for r in got] == [False, True, False]


@pytest.mark.parametrize("box", ["...", "\\ldots", " \\cdots ", "", "?"])
def test_placeholder_boxes(box):
    text, grade = prediction_text(f"x = 3 so \\boxed{{{box}}}", "flexible")
    assert text is None and grade.reason == "no_answer"
    assert prediction_text("x = 3 so \\boxed{3}", "strict") == ("$\\boxed{3}$", None)
    assert prediction_text("x = 3", "strict")[1].reason == "no_answer"


def test_every_gsm8k_reference_answer_grades_right_in_both_modes():
    """The training-target format (a boxed gold after the reference reasoning) on all 1,319 test
    problems: a grader change that breaks any of them fails here."""
    for mode in ("flexible", "strict"):
        task = get_task("gsm8k", answer_mode=mode)
        wrong = [p.id for p in task.load("test") if not task.grade(p, task.sft_target(p)).correct]
        assert wrong == [], (mode, wrong[:5])


def test_answer_mode_and_version_are_in_the_config_hash(tiny_dir):
    from dlm_bench.evaluate import SweepConfig, plan, sampling_hash

    def cells(**kw):
        cfg = SweepConfig(model=tiny_dir, method="m", task="gsm8k", ks=(1,), n=1, temperatures=(0.5,),
                          lengths=(8,), block_length=8, limit=1, **kw)
        return plan(cfg)[4]

    flex, strict = cells()[0], cells(answer_mode="strict")[0]
    assert flex.config["grader"] == {"version": 2, "answer_mode": "flexible"}
    assert flex.hash != strict.hash                                  # records never mix the modes
    assert flex.seed_hash == strict.seed_hash == sampling_hash(strict.config)   # same samples
    with pytest.raises(Exception, match="no answer mode"):
        get_task("testbed", answer_mode="strict")
