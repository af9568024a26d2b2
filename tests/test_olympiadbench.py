"""OlympiadBench OE_TO_maths_en_COMP: the real file loads (675 rows, the MANIFEST's type counts), every
gold graded correct, near misses wrong, the row tolerance and several-answer golds as its judge has them."""
import re
from collections import Counter

import pytest

from dlm_bench.tasks import get_task
from dlm_bench.tasks.olympiadbench import clean_gold


def _boxed(ans) -> str:
    return f"Let me reason step by step.\nSo the final answer is $\\boxed{{{ans}}}$."


@pytest.fixture(scope="module")
def task():
    return get_task("olympiadbench")


@pytest.fixture(scope="module")
def probs(task):
    return task.load("test")


def test_rows_match_the_manifest(probs):
    assert len(probs) == 675
    assert Counter(p.meta["answer_type"] for p in probs) == {"Numerical": 572, "Expression": 64, "Tuple": 33,
                                                              "Interval": 6}
    assert sum(p.meta["multiple"] for p in probs) == 94
    assert [p.meta["tolerance"] for p in probs if p.meta["tolerance"]] == [0.1]
    assert not any(p.answer.startswith("$") or p.answer.endswith("$") for p in probs)   # delimiters only


def test_oracle_every_gold_correct(task, probs):
    grades = task.grade_many(probs, [_boxed(p.answer) for p in probs])
    assert {p.id: g.reason for p, g in zip(probs, grades) if not g.correct} == {}


def test_integer_golds_off_by_one_wrong(task, probs):
    ints = [p for p in probs if re.fullmatch(r"-?\d+", p.answer)]
    assert len(ints) > 300
    grades = task.grade_many(ints, [_boxed(int(p.answer) + 1) for p in ints])
    assert not any(g.correct for g in grades)


def test_tolerance_row_and_several_answers(task, probs):
    tol = next(p for p in probs if p.meta["tolerance"])
    assert tol.answer == "4.2"
    assert [g.correct for g in task.grade_many([tol] * 3, [_boxed("4.25"), _boxed("4.29"), _boxed("4.4")])] == \
        [True, True, False]
    multi = next(p for p in probs if p.answer == "(1,8,19), (2,7,13), (4,5,7)")
    got = task.grade_many([multi] * 2, [_boxed("(4,5,7), (1,8,19), (2,7,13)"), _boxed("(1,8,19), (2,7,13)")])
    assert [g.correct for g in got] == [True, False]      # any order; every answer needed


def test_gold_cleaning_and_strict_mode(probs):
    assert clean_gold(["$(-\\infty, 0) \\cup\\{1\\}$."]) == "(-\\infty, 0) \\cup\\{1\\}"
    assert clean_gold(["$a=1$,$b=2$"]) == "a=1,b=2"
    strict = get_task("olympiadbench", answer_mode="strict")
    p = next(p for p in probs if p.answer == "2")
    assert strict.grade(p, "so it is 2").reason == "no_answer"
    assert get_task("olympiadbench").grade(p, "so it is $2$").correct
