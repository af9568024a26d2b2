"""The recipe code rewards (tasks/_code_reward.py): format score + test pass rate, as ESPO and JustGRPO
define them; binary stays the grade; ESPO's and JustGRPO's configs select their recipe on code tasks."""
from pathlib import Path

import pytest

from dlm_bench.config import CODE_REWARDS
from dlm_bench.errors import UserError
from dlm_bench.methods import get_method, method_names
from dlm_bench.tasks import get_task, reward_kind
from dlm_bench.tasks import _code_reward as cr
from dlm_bench.tasks.livecodebench import LiveCodeBench, stdout_matches

FIX = Path(__file__).parent / "fixtures" / "livecodebench"
# By the definition: format 1.0 plus every test passed (1.0).
MAX = 1.0 + 1.0


def block(code: str, before: str = "Here is my solution.\n", after: str = "") -> str:
    return f"{before}```python\n{code.rstrip()}\n```{after}"


def local_passes(code: str, tests: list[str], setup: str = "") -> list[bool]:
    """Each assert against our own (trusted) code, in this process: the expected verdicts, found
    without the sandbox or the task's test splitting."""
    out = []
    for t in tests:
        ns: dict = {}
        exec(code, ns)
        exec(setup, ns)
        try:
            exec(t, ns)
            out.append(True)
        except AssertionError:
            out.append(False)
    return out


# ---------------------------------------------------------------------------------------------------
# Format score: exactly the references' shape rule
# ---------------------------------------------------------------------------------------------------

def test_format_score_shapes():
    good = "def f():\n    return 1"
    assert cr.format_score(block(good)) == 1.0
    assert cr.format_score(block(good, before="")) == 1.0
    assert cr.format_score(block(good, after="\n")) == 1.0          # one trailing newline is allowed
    assert cr.format_score(block(good, after="\n\n")) == 0.0        # more is not
    assert cr.format_score(block(good, after="\nThat is all.")) == 0.0  # text after the block
    assert cr.format_score(good) == 0.0                             # no fence at all
    assert cr.format_score(f"```py\n{good}\n```") == 0.0            # the tag must be python
    assert cr.format_score(f"```\n{good}\n```") == 0.0
    assert cr.format_score(block(good, before="```python\nx = 1\n```\n")) == 0.0  # two blocks
    assert cr.format_score(f"```python\n{good}\n") == 0.0           # never closed
    assert cr.format_score(block("def f(:\n    return")) == 0.5     # the shape, but no valid Python
    assert cr.format_score("```python\nx\0\n```") == 0.5            # ast.parse's ValueError counts as invalid
    assert cr.fenced_body(block(good, before="intro\n")) == good + "\n"


# ---------------------------------------------------------------------------------------------------
# MBPP
# ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mbpp():
    task = get_task("mbpp")
    return task, task.load("test")


def test_mbpp_canonical_gets_the_maximum(mbpp):
    task, probs = mbpp
    some = probs[::25]
    golds = [task.sft_target(p) for p in some]
    assert task.rewards(some, golds, kind="espo") == [MAX] * len(some)
    assert task.rewards(some[:4], golds[:4], kind="justgrpo") == [MAX] * 4


def test_mbpp_partial_pass_rate(mbpp):
    task, probs = mbpp
    p = next(q for q in probs if q.id == "mbpp/11")  # remove_Occ: first and last occurrence of ch removed
    tests = p.answer["test_list"]
    # right only for the first assert's input
    code = "def remove_Occ(s, ch):\n    return 'heo' if s == 'hello' else s\n"
    want = local_passes(code, tests, p.answer["test_setup_code"])
    assert 0 < sum(want) < len(tests)
    frac = sum(want) / len(tests)
    for kind in ("espo", "justgrpo"):
        assert task.rewards([p], [block(code)], kind=kind) == [pytest.approx(1.0 + frac)]
    assert task.rewards([p], [block(code)]) == [0.0]      # binary: not every test passes
    # a syntax error keeps the half format score and runs nothing; no fence loses everything
    assert task.rewards([p, p], [block("def remove_Occ(s, ch)\n    return s"), code], kind="espo") == [0.5, 0.0]


def test_mbpp_unformatted_gold_loses_the_format_part(mbpp):
    task, probs = mbpp
    p = probs[0]
    code = p.meta["code"].replace("\r\n", "\n").strip()
    texts = [code, block(code, after="\nThis works because ..."), f"```py\n{code}\n```", block(code)]
    assert task.rewards([p] * 4, texts) == [1.0] * 4  # binary grading reads all of them
    # the recipes give 0 to every shape but the last (no format, so the pass rate is not counted)
    assert task.rewards([p] * 4, texts, kind="espo") == [0.0, 0.0, 0.0, MAX]


def test_recipe_differences_blocklist_and_timeouts(mbpp):
    task, probs = mbpp
    p = next(q for q in probs if q.id == "mbpp/11")
    gold = p.meta["code"].replace("\r\n", "\n").strip()
    # JustGRPO's should_execute refuses code that mentions `import os`: format only. ESPO runs it.
    with_os = "import os\n" + gold
    assert task.rewards([p], [block(with_os)], kind="justgrpo") == [1.0]
    assert task.rewards([p], [block(with_os)], kind="espo") == [MAX]
    # right on the first input, hangs on the others: ESPO's whole rate is void on a timeout,
    # JustGRPO counts only the timed-out cases as failed
    hang = "def remove_Occ(s, ch):\n    if s == 'hello':\n        return 'heo'\n    while True:\n        pass\n"
    frac = 1 / len(p.answer["test_list"])
    assert task.rewards([p], [block(hang)], kind="justgrpo") == [pytest.approx(1.0 + frac)]
    assert task.rewards([p], [block(hang)], kind="espo") == [1.0]


def test_binary_mode_is_the_old_reward(mbpp):
    task, probs = mbpp
    ps = probs[:3]
    texts = [task.sft_target(ps[0]), "def nope(:", block(ps[2].meta["code"]) + "\ntrailing prose"]
    old = [float(g.correct) for g in task.grade_many(ps, texts)]
    assert task.rewards(ps, texts) == task.rewards(ps, texts, kind="binary") == old
    assert old == [1.0, 0.0, 1.0]


# ---------------------------------------------------------------------------------------------------
# HumanEval: test cases are the assert-bearing statements of check()
# ---------------------------------------------------------------------------------------------------

def test_humaneval_canonical_and_partial():
    from dlm_bench.tasks.humaneval import check_cases
    task = get_task("humaneval")
    probs = task.load("test")
    some = probs[::8]
    assert task.rewards(some, [task.sft_target(p) for p in some], kind="espo") == [MAX] * len(some)
    p = probs[0]  # has_close_elements: every assert compares with True or False
    lines = [ln.strip() for ln in p.answer["test"].splitlines() if ln.strip().startswith("assert ")]
    code = "def has_close_elements(numbers, threshold):\n    return False\n"
    ns: dict = {}
    exec(code, ns)
    want = [_holds(ln, ns["has_close_elements"]) for ln in lines]
    assert len(check_cases(p.answer["test"])) == len(lines) and 0 < sum(want) < len(lines)
    assert task.rewards([p], [block(code)], kind="justgrpo") == [pytest.approx(1.0 + sum(want) / len(lines))]


def _holds(assert_line: str, candidate) -> bool:
    try:
        exec(assert_line, {"candidate": candidate})
        return True
    except AssertionError:
        return False


# ---------------------------------------------------------------------------------------------------
# LiveCodeBench (fixtures): one run per test
# ---------------------------------------------------------------------------------------------------

def test_livecodebench_pass_rate():
    task = LiveCodeBench(data_dir=str(FIX))
    probs = {p.id: p for p in task.load()}
    easy, pal = probs["fix_stdin_easy"], probs["9002"]
    # stdin: right only when there are at most 3 numbers
    code = "n = int(input())\nxs = list(map(int, input().split()))\nprint(sum(xs) if n <= 3 else 0)\n"
    want = [stdout_matches(str(sum(map(int, i.split("\n")[1].split())) if int(i.split("\n")[0]) <= 3 else 0), o)
            for i, o in zip(easy.answer["inputs"], easy.answer["outputs"])]
    assert 0 < sum(want) < len(want)
    # functional: a palindrome test that is wrong on the empty string
    fcode = "class Solution:\n    def isPalindrome(self, s):\n        return bool(s) and s == s[::-1]\n"
    fwant = [bool(s) and s == s[::-1] for s in ("racecar", "ab", "")]
    fwant = [w == e for w, e in zip(fwant, pal.answer["expected"])]
    assert 0 < sum(fwant) < len(fwant)
    got = task.rewards([easy, pal], [block(code), block(fcode)], kind="espo")
    assert got == [pytest.approx(1 + sum(want) / len(want)), pytest.approx(1 + sum(fwant) / len(fwant))]
    assert task.rewards([easy, pal], [block(code), block(fcode)]) == [0.0, 0.0]


# ---------------------------------------------------------------------------------------------------
# Which reward a method trains with
# ---------------------------------------------------------------------------------------------------

def test_methods_select_their_recipe_reward_on_code_tasks():
    assert CODE_REWARDS == ("binary", *cr.KINDS)
    recipe = {"espo": "espo", "justgrpo": "justgrpo"}
    trained = [m for m in method_names() if get_method(m).trains]
    assert set(recipe) <= set(trained)
    for m in trained:
        for task in ("mbpp", "humaneval", "livecodebench"):
            cfg = get_method(m).config_for(task)
            assert cfg.code_reward == recipe.get(m, "binary"), (m, task)
    mbpp, gsm8k = get_task("mbpp"), get_task("gsm8k")
    assert reward_kind(mbpp, get_method("espo").config_for("mbpp").code_reward) == "espo"
    assert reward_kind(gsm8k, get_method("espo").config_for("gsm8k").code_reward) == "binary"  # not a code task
    assert get_method("espo").config_for("mbpp", {"code_reward": "binary"}).code_reward == "binary"
    assert get_method("wd1").config_for("mbpp", {"code_reward": "justgrpo"}).code_reward == "justgrpo"
    with pytest.raises(UserError):
        get_method("espo").config_for("mbpp", {"code_reward": "partial"})
    with pytest.raises(UserError, match="training reward"):
        gsm8k.rewards([], [], kind="espo")


def test_training_plan_asks_for_the_method_reward(tmp_path):
    from dlm_bench.training.loop import TrainConfig, plan
    kinds = {(m, t): plan(TrainConfig(method=m, task=t, model=str(tmp_path))).reward_kind
             for m in ("espo", "justgrpo", "wd1") for t in ("mbpp", "gsm8k")}
    assert kinds == {("espo", "mbpp"): "espo", ("justgrpo", "mbpp"): "justgrpo", ("wd1", "mbpp"): "binary",
                     ("espo", "gsm8k"): "binary", ("justgrpo", "gsm8k"): "binary", ("wd1", "gsm8k"): "binary"}
