"""Countdown and 4x4 Sudoku: data, graders (never eval), d1 rewards, generators."""
import pytest

from dlm_bench.tasks import get_task
from dlm_bench.tasks.countdown import Countdown, check_expression, generate, solve
from dlm_bench.tasks.sudoku import (all_grids, cell_accuracy, count_solutions, extract_grid,
                                    generate as sudoku_generate, is_valid_solution)


@pytest.fixture(scope="module")
def countdown():
    return get_task("countdown")


@pytest.fixture(scope="module")
def sudoku():
    return get_task("sudoku")


def cd(numbers, target):
    return Countdown.make_problem("t", numbers, target)


# ------------------------------------------------------------------------------------------ Countdown

def test_countdown_data(countdown):
    test = countdown.load("test")
    assert len(test) == 256 and test[0].answer == {"numbers": [30, 100, 93], "target": 23}
    assert test[0].question == "Numbers: [30, 100, 93]\nTarget: 23"
    train = countdown.load("train")
    assert len(train) == 4926 and all(len(p.answer["numbers"]) == 3 for p in train)
    content = countdown.prompt(test[0])[0]["content"]
    assert content.startswith("Using only the provided numbers") and content.endswith("Target: 23")
    assert "\\boxed{a + b * c}Respond in the following format" in content    # d1's text, verbatim


def test_countdown_every_test_problem_is_solvable(countdown):
    # brute force over all expression trees; d1's 256 test problems all have a solution
    unsolvable = [p.id for p in countdown.load("test") if solve(p.answer["numbers"], p.answer["target"]) is None]
    assert unsolvable == []


def test_countdown_sft_targets_grade_correct(countdown):
    for p in countdown.load("test"):
        t = countdown.sft_target(p)
        assert countdown.grade(p, t).correct and countdown.reward(p, t) == 1.0


@pytest.mark.parametrize("completion,reason", [
    (r"\boxed{3 \times 4 + 2}", "correct"), (r"\boxed{3 \cdot 4 + 2}", "correct"),
    ("<answer>\n2 + 4 * 3\n</answer>", "correct"), ("I think\n3 × 4 + 2", "correct"),
    (r"\boxed{(3 * 4) + 2 = 14}", "correct"), (r"\boxed{14 = 3*4 + 2}", "correct"),
    (r"\boxed{\left(3 \times 4\right) + 2}", "correct"), (r"$\boxed{3*4+2}$.", "correct"),
    (r"\boxed{3*4+2+2}", "invalid"),            # a number reused
    (r"\boxed{3*4}", "invalid"),                # a number unused
    (r"\boxed{3*4+2-1+1}", "invalid"),          # extra numbers
    (r"\boxed{3*4+2.0}", "invalid"),            # a float is not a given number
    (r"\boxed{3 + 4 + 2}", "wrong"),
    (r"\boxed{3 + * 4 2}", "parse_error"), ("", "no_answer"),
])
def test_countdown_grades(countdown, completion, reason):
    g = countdown.grade(cd([3, 4, 2], 14), completion)
    assert g.reason == reason and g.correct is (reason == "correct"), g


def test_countdown_division_and_exactness(countdown):
    assert countdown.grade(cd([4, 2, 3], 6), r"\boxed{4 \div 2 * 3}").correct
    assert countdown.grade(cd([1, 3, 3], 1), r"\boxed{(1 / 3) * 3}").correct        # exact fractions
    assert countdown.grade(cd([5, 5, 1], 0), r"\boxed{1 / (5 - 5)}").reason == "invalid"   # 1/0
    assert countdown.grade(cd([2, 3, 4], 12), r"\boxed{2**3 + 4}").reason == "invalid"     # no powers


INJECTIONS = [
    "__import__('os').system('touch {p}')",
    "open('{p}', 'w').write('x')",
    "(lambda: __import__('os').system('touch {p}'))()",
    "().__class__.__bases__[0].__subclasses__()",
    "[x for x in (3, 4, 2)]",
    "exec(\"open('{p}','w')\")",
]


@pytest.mark.parametrize("payload", INJECTIONS)
def test_countdown_never_executes(countdown, tmp_path, payload):
    marker = tmp_path / "pwned"
    text = payload.format(p=marker)
    for completion in (f"\\boxed{{{text}}}", f"<answer>{text}</answer>", f"reasoning\n{text}"):
        g = countdown.grade(cd([3, 4, 2], 14), completion)
        assert not g.correct and g.reason in ("invalid", "parse_error"), g
    assert not marker.exists()


def test_countdown_reward_follows_d1(countdown):
    p = cd([3, 4, 2], 14)
    assert countdown.reward(p, r"\boxed{3*4+2}") == 1.0
    assert countdown.reward(p, r"\boxed{3+4+2}") == 0.1            # well-formed answer, wrong value
    assert countdown.reward(p, "<answer>3*4+2+2</answer>") == 0.1  # answer given, numbers misused
    assert countdown.reward(p, "no answer at all") == 0.0
    assert countdown.reward(p, "3*4+2") == 1.0                     # right even without the format
    assert countdown.reward(p, "3+4+2") == 0.0                     # ... but no format credit


def test_countdown_generator(countdown):
    test_keys = [(p.answer["numbers"], p.answer["target"]) for p in countdown.load("test")]
    rows = generate(300, seed=7, exclude=test_keys)
    assert rows == generate(300, seed=7, exclude=test_keys) and rows != generate(300, seed=8)
    skip = {(tuple(sorted(n)), t) for n, t in test_keys}
    for r in rows:
        assert len(r["numbers"]) == 3 and 10 <= r["target"] <= 100
        assert (tuple(sorted(r["numbers"])), r["target"]) not in skip
        assert check_expression(r["solution"], r["numbers"], r["target"]) == "correct"
    four = generate(20, seed=1, n_numbers=4)
    assert all(len(r["numbers"]) == 4 and solve(r["numbers"], r["target"]) for r in four)


# ------------------------------------------------------------------------------------------ Sudoku

def test_sudoku_data(sudoku):
    test, spg = sudoku.load("test"), sudoku.load("spg")
    assert (len(test), len(spg)) == (500, 256)
    assert spg[0].question == "0310200404001043"                 # leading zero kept
    for p in test + spg:
        assert is_valid_solution(p.answer, p.meta["puzzle"])
    content = sudoku.prompt(test[0])[0]["content"]
    assert content.endswith("Solve the following Sudoku puzzle: 3102200002100320\n")


def test_sudoku_uniqueness_of_test_sets(sudoku):
    # SPG's split is all unique; 124 of d1's 500 test puzzles have 2-4 solutions (115 two, 8 three,
    # 1 four; e.g. sudoku/test/8). grade() accepts any valid grid; d1's cell-accuracy reward compares
    # with the stored solution and so undercounts a valid alternative on those 124.
    counts = [count_solutions(p.meta["puzzle"], limit=10) for p in sudoku.load("test")]
    assert sum(c != 1 for c in counts) == 124 and min(counts) == 1
    assert all(count_solutions(p.meta["puzzle"]) == 1 for p in sudoku.load("spg"))


def test_sudoku_grading(sudoku):
    p = sudoku.load("test")[0]
    puzzle, sol = p.meta["puzzle"], p.answer
    ok = sudoku.grade(p, f"<reasoning>..</reasoning>\n<answer>\n{sol}\n</answer>")
    assert ok.correct and ok.extracted == sol and sudoku.reward(p, f"<answer>{sol}</answer>") == 1.0
    grid_text = "\n".join(" ".join(sol[r * 4:r * 4 + 4]) for r in range(4))
    assert sudoku.grade(p, f"<answer>\n{grid_text}\n</answer>").correct    # separators ignored
    assert sudoku.grade(p, f"The grid is:\n{grid_text}").correct           # rows without tags
    assert sudoku.grade(p, f"so the solution is {sol}.").correct
    swapped = sol[4:8] + sol[0:4] + sol[8:]                                 # valid grid, givens broken
    assert sudoku.grade(p, f"<answer>{swapped}</answer>").reason == "wrong"
    assert sudoku.grade(p, f"<answer>{sol[:15]}5</answer>").reason == "parse_error"
    assert sudoku.grade(p, f"<answer>{sol[:12]}</answer>").reason == "parse_error"
    assert sudoku.grade(p, "no idea").reason == "no_answer"
    # d1 cell accuracy: only originally empty cells count; short answers are padded
    empty = [i for i, c in enumerate(puzzle) if c == "0"]
    half = list(sol)
    for i in empty[: len(empty) // 2]:
        half[i] = "0"
    assert cell_accuracy("".join(half), puzzle, sol) == pytest.approx(0.5)
    assert cell_accuracy(sol[:8], puzzle, sol) == pytest.approx(sum(i < 8 for i in empty) / len(empty))
    assert cell_accuracy(None, puzzle, sol) == 0.0


def test_sudoku_alternative_solution_accepted(sudoku):
    p = next(q for q in sudoku.load("test") if count_solutions(q.meta["puzzle"]) == 2)
    other = next(g for g in all_grids() if is_valid_solution(g, p.meta["puzzle"]) and g != p.answer)
    assert sudoku.grade(p, f"<answer>{other}</answer>").correct
    assert sudoku.reward(p, f"<answer>{other}</answer>") < 1.0   # d1's reward, kept as published


def test_sudoku_generator_unique_and_reproducible(sudoku):
    assert len(all_grids()) == 288
    excl = {p.meta["puzzle"] for p in sudoku.load("test")}
    rows = sudoku_generate(300, seed=3, n_empty=(6, 10), exclude=excl)
    assert rows == sudoku_generate(300, seed=3, n_empty=(6, 10), exclude=excl)
    assert len({r["puzzle"] for r in rows}) == 300
    for r in rows:
        assert count_solutions(r["puzzle"]) == 1 and is_valid_solution(r["solution"], r["puzzle"])
        assert 6 <= r["puzzle"].count("0") <= 10 and r["puzzle"] not in excl
    assert all(r["puzzle"].count("0") == 8 for r in sudoku_generate(50, seed=0))
    p = sudoku._problem("s", rows[0]["puzzle"], rows[0]["solution"])
    assert sudoku.grade(p, sudoku.sft_target(p)).correct


@pytest.mark.slow
def test_synthetic_splits_full_size(countdown, sudoku):
    assert len(countdown.load("synthetic")) == 10000
    rows = sudoku.load("synthetic")
    assert len(rows) == 10000 and all(count_solutions(p.meta["puzzle"]) == 1 for p in rows)
    assert extract_grid(sudoku.sft_target(rows[0])) == rows[0].answer
