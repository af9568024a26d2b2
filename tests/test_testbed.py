"""The CPU testbed task: enumerated solutions, disjoint splits, a grader that never executes text."""
import ast

from dlm_bench.tasks import get_task
from dlm_bench.tasks.testbed import solutions


def test_every_enumerated_solution_grades_correct_and_is_independently_right():
    task = get_task("testbed")
    for p in task.load("test"):
        sols = solutions(p.meta["numbers"], p.answer)
        assert len(sols) >= 2
        for s in sols:
            assert task.grade(p, s).correct
            tree = ast.parse(s, mode="eval")   # independent check: numbers used once, value by Python
            assert sorted(n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)) == sorted(p.meta["numbers"])
            assert eval(compile(tree, "<expr>", "eval"), {"__builtins__": {}}) == p.answer  # trusted: we built it


def test_splits_are_disjoint_and_fixed():
    task = get_task("testbed")
    test, train = task.load("test"), task.load("train")
    key = lambda p: (tuple(sorted(p.meta["numbers"])), p.answer)
    assert len(test) == 200 and not {key(p) for p in test} & {key(p) for p in train}
    assert [p.question for p in task.load("test")] == [p.question for p in test]


def test_wrong_invalid_and_hostile_answers():
    task = get_task("testbed")
    p = task.load("test")[0]
    a, b, c = p.meta["numbers"]
    assert task.grade(p, "").reason == "no_answer"
    assert task.grade(p, f"{a}+{b}").reason == "invalid"                 # a number unused
    assert task.grade(p, f"{a}+{b}+{c}+{c}").reason == "invalid"         # a number reused
    assert task.grade(p, f"{a}/{b}/{c}").reason == "invalid"             # division is not allowed
    assert task.grade(p, "__import__('os').system('true')").reason == "invalid"
    assert task.grade(p, "((((").reason == "parse_error"
    wrong = [s for s in (f"{a}+{b}+{c}", f"{a}*{b}*{c}", f"{a}*{b}-{c}") if eval(s) != p.answer]  # trusted text
    assert wrong and all(task.grade(p, s).reason == "wrong" for s in wrong)
    assert task.grade(p, task.sft_target(p) + "\nmore text").correct   # only the first line counts
