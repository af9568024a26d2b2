"""HumanEval, MBPP and LiveCodeBench graders: gold code passes, broken code fails, data decodes safely."""
import base64
import json
import os
import pickle
import zlib
from pathlib import Path

import pytest

from dlm_bench.errors import UserError
from dlm_bench.tasks import get_task
from dlm_bench.tasks._code import CodeGrade, extract_code
from dlm_bench.tasks.livecodebench import LiveCodeBench, decode_tests, stdout_matches

FIX = Path(__file__).parent / "fixtures" / "livecodebench"


def fenced(code: str) -> str:
    return f"Here is my solution.\n```python\n{code.rstrip()}\n```\nIt works because ..."


# ---------------------------------------------------------------------------------------------------
# Extraction
# ---------------------------------------------------------------------------------------------------

def test_extract_code():
    assert extract_code("") is None and extract_code("   \n") is None
    assert extract_code("```python\ndef f():\n    return 1\n```\n\n```python\nprint(f())\n```",
                        "def f(") == "def f():\n    return 1\n"
    assert extract_code("```python\nx = 1\n```\ntext\n```py\ny = 2\n```") == "y = 2\n"
    assert extract_code("```python\ndef f():\n    return 1") == "def f():\n    return 1"  # cut off
    assert extract_code("```\nz = 3\n```") == "z = 3\n"
    assert extract_code("```bash\nrm -rf /\n```") is None
    assert extract_code("    return x + 1\n") == "    return x + 1\n"  # a raw body keeps its indent


# ---------------------------------------------------------------------------------------------------
# HumanEval
# ---------------------------------------------------------------------------------------------------

def test_humaneval_canonical_and_broken():
    task = get_task("humaneval")
    probs = task.load("test")
    assert len(probs) == 164
    full = [fenced(p.meta["prompt"] + p.meta["canonical_solution"]) for p in probs]
    body = [p.meta["canonical_solution"] for p in probs]
    broken = [fenced(p.meta["prompt"] + "    return None\n") for p in probs]
    grades = task.grade_many(probs * 3, full + body + broken)
    assert all(isinstance(g, CodeGrade) and g.isolation for g in grades)
    n = len(probs)
    bad = [(p.id, g.reason, g.detail) for p, g in zip(probs * 2, grades[:2 * n]) if not g.correct]
    assert bad == []
    assert sum(g.correct for g in grades[2 * n:]) == 0
    assert {g.reason for g in grades[2 * n:]} <= {"wrong", "runtime_error"}


def test_humaneval_prompt_and_reasons():
    task = get_task("humaneval")
    p = task.load("test")[0]
    msgs = task.prompt(p)
    assert msgs[0]["role"] == "user" and "```python\n" + p.question in msgs[0]["content"]
    assert "has_close_elements" in msgs[0]["content"] and task.template_source
    assert isinstance(type(task).__dict__["prompt_template"], str)
    assert task.grade(p, "no code here, sorry").reason == "syntax_error"
    assert task.grade(p, "```cpp\nint main(){}\n```").reason == "no_answer"
    from dlm_bench.tasks.humaneval import HumanEval
    loop = fenced("def has_close_elements(numbers, threshold):\n    while True:\n        pass\n")
    assert HumanEval(timeout=2.0).grade(p, loop).reason == "timeout"
    assert task.reward(p, fenced(p.meta["prompt"] + p.meta["canonical_solution"])) == 1.0
    assert task.reward(p, "") == 0.0
    assert task.rewards([p, p], [fenced(p.meta["prompt"] + p.meta["canonical_solution"]), "x"]) == [1.0, 0.0]


# ---------------------------------------------------------------------------------------------------
# MBPP
# ---------------------------------------------------------------------------------------------------

# Reference solutions that do not pass their own tests on the test split: none. One is slow:
# mbpp/123 (amicable_numbers_sum(9999)) sums divisors in O(n^2) and needs ~5-10 s of CPU, so it
# can time out under the default 10 s limit on a loaded machine; it is graded here with 60 s.
MBPP_BROKEN_REFERENCES: set[str] = set()
MBPP_SLOW_REFERENCES = {"mbpp/123"}


def test_mbpp_reference_code_passes_test_split():
    from dlm_bench.tasks.mbpp import MBPP
    task = MBPP(timeout=60.0)
    probs = task.load("test")
    assert len(probs) == 500 and probs[0].id == "mbpp/11" and probs[-1].id == "mbpp/510"
    grades = task.grade_many(probs, [fenced(p.meta["code"]) for p in probs])
    failing = {p.id: (g.reason, g.detail) for p, g in zip(probs, grades) if not g.correct}
    assert set(failing) == MBPP_BROKEN_REFERENCES, failing


def test_mbpp_splits_prompt_and_broken_code():
    task = get_task("mbpp")
    sizes = {s: len(task.load(s)) for s in ("train", "validation", "prompt")}
    assert sizes == {"train": 374, "validation": 90, "prompt": 10}
    probs = [p for p in task.load("test") if p.id in ("mbpp/11", "mbpp/126", "mbpp/367")]
    msg = task.prompt(probs[0])[0]["content"]
    assert "remove_Occ" in msg and "input_param_1, input_param_2" in msg and "assert remove_Occ" in msg
    assert probs[1].meta["func_name"] == "sum"  # the solution shadows a builtin
    broken = [fenced(p.meta["code"] + f"\n\ndef {p.meta['func_name']}(*args, **kwargs):\n    return None\n")
              for p in probs]
    assert not any(g.correct for g in task.grade_many(probs, broken))
    with pytest.raises(UserError):
        task.load("dev")


# ---------------------------------------------------------------------------------------------------
# LiveCodeBench (fixture in the official code_generation_lite format)
# ---------------------------------------------------------------------------------------------------

GOLD = {
    "fix_stdin_easy": "n = int(input())\nprint(sum(map(int, input().split())))\n",
    "fix_stdin_medium": "n = int(input())\na = list(map(int, input().split()))\nprint(sum(a) / n)\n",
    "fix_stdin_hard": ("import sys\nt = int(sys.stdin.readline())\nfor _ in range(t):\n"
                       "    print(' '.join(w[::-1] for w in sys.stdin.readline().split()))\n"),
    "9001": ("class Solution:\n    def twoSum(self, nums: List[int], target: int) -> List[int]:\n"
             "        seen = {}\n        for i, x in enumerate(nums):\n            if target - x in seen:\n"
             "                return [seen[target - x], i]\n            seen[x] = i\n"),
    "9002": "class Solution:\n    def isPalindrome(self, s: str) -> bool:\n        return s == s[::-1]\n",
    "9003": "class Solution:\n    def sortedSquares(self, nums):\n        return tuple(sorted(x * x for x in nums))\n",
}
WRONG = {  # (code, expected reason)
    "fix_stdin_easy": ("n = int(input())\nprint(max(map(int, input().split())))\n", "wrong"),
    "fix_stdin_medium": ("n = int(input())\nprint(n / 0)\n", "runtime_error"),
    "fix_stdin_hard": ("while True:\n    pass\n", "timeout"),
    "9001": ("class Solution:\n    def twoSum(self, nums, target):\n        return [0, 1]\n", "wrong"),
    "9002": ("class Solution:\n    def isPalindrome(self, s):\n        return len(s) % 2 == 1\n", "wrong"),
    "9003": ("class Solution:\n    def sortedSquares(self, nums):\n        return {x * x for x in nums}\n", "wrong"),
}


def test_livecodebench_gold_and_wrong():
    task = LiveCodeBench(data_dir=str(FIX), test_timeout=1.0)
    probs = task.load()
    assert [p.id for p in probs] == list(GOLD)
    assert all(p.meta["n_private"] >= 2 and not p.meta["public_tests_only"] for p in probs)
    grades = task.grade_many(probs, [fenced(GOLD[p.id]) for p in probs])
    assert [(g.correct, g.reason) for g in grades] == [(True, "correct")] * len(probs)
    grades = task.grade_many(probs, [fenced(WRONG[p.id][0]) for p in probs])
    assert [(g.correct, g.reason) for g in grades] == [(False, WRONG[p.id][1]) for p in probs]


def test_livecodebench_filters_and_prompt():
    assert [p.id for p in LiveCodeBench(data_dir=str(FIX), difficulty="hard").load()] == ["fix_stdin_hard", "9003"]
    window = LiveCodeBench(data_dir=str(FIX), start_date="2024-01-01", end_date="2024-06-30").load()
    assert [p.id for p in window] == ["fix_stdin_medium", "fix_stdin_hard", "9002"]
    with pytest.raises(UserError):
        LiveCodeBench(difficulty="impossible")
    with pytest.raises(UserError):
        LiveCodeBench(data_dir=str(FIX), start_date="2030-01-01").load()
    task = LiveCodeBench(data_dir=str(FIX))
    probs = {p.id: p for p in task.load()}
    sys_msg, user = task.prompt(probs["9001"])
    assert sys_msg["role"] == "system" and "class Solution" in user["content"]
    assert "Read the inputs from stdin" in task.prompt(probs["fix_stdin_easy"])[1]["content"]


def test_livecodebench_public_only_copies_are_marked():
    task = LiveCodeBench(files=[str(FIX / "public_only.jsonl")])
    probs = task.load()
    assert [p.meta["public_tests_only"] for p in probs] == [True, True]
    g = task.grade(probs[1], fenced(GOLD["9001"]))
    assert g.correct and g.public_tests_only
    conv = LiveCodeBench(files=[str(FIX / "public_conversion.json")]).load()
    assert [p.answer["func_name"] for p in conv] == [None, "twoSum"]
    assert all(p.meta["public_tests_only"] for p in conv)
    assert LiveCodeBench(files=[str(FIX / "public_conversion.json")]).grade(conv[0], fenced(GOLD["fix_stdin_easy"])).correct
    with pytest.raises(UserError):  # no difficulty labels in this conversion
        LiveCodeBench(files=[str(FIX / "public_conversion.json")], difficulty="easy").load()


def test_livecodebench_malicious_pickle_refused():
    marker = "/tmp/dlm_bench_lcb_pickle_pwned"
    with pytest.raises(UserError, match=r"fix_malicious.*unsafe pickle.*system"):
        LiveCodeBench(files=[str(FIX / "malicious.jsonl")]).load()
    assert not os.path.exists(marker)


def test_private_tests_decoding():
    tests = [{"input": "1\n", "output": "2\n", "testtype": "stdin"}]
    official = base64.b64encode(zlib.compress(pickle.dumps(json.dumps(tests)))).decode()
    assert decode_tests(official, "x") == tests
    assert decode_tests(json.dumps(tests), "x") == tests and decode_tests("", "x") == []
    not_a_string = base64.b64encode(zlib.compress(pickle.dumps({"a": 1}))).decode()
    with pytest.raises(UserError, match="not a JSON string"):
        decode_tests(not_a_string, "x")
    with pytest.raises(UserError, match="cannot decode"):
        decode_tests("@@not base64@@", "x")


def test_stdout_comparison_like_lcb():
    assert stdout_matches("2.5\n", "2.50\n") and stdout_matches("1 2\n3\n\n", "1  2\n3")
    assert stdout_matches("  YES \n", "YES") and not stdout_matches("YES\n", "yes")
    assert not stdout_matches("1\n2\n", "1\n") and not stdout_matches("1e0", "2")


@pytest.mark.slow
def test_mbpp_reference_code_passes_every_split():
    from dlm_bench.tasks.mbpp import MBPP
    task = MBPP(timeout=60.0)
    for split in ("train", "validation", "prompt"):
        probs = task.load(split)
        grades = task.grade_many(probs, [fenced(p.meta["code"]) for p in probs])
        assert {p.id: g.detail for p, g in zip(probs, grades) if not g.correct} == {}


def test_livecodebench_hostile_answers_fail_alone(monkeypatch):
    task = LiveCodeBench(data_dir=str(FIX), test_timeout=1.0)
    probs = {p.id: p for p in task.load()}
    deep = ("class Solution:\n    def twoSum(self, nums, target):\n        x = [0, 1]\n"
            "        for _ in range(5000):\n            x = [x]\n        return x\n")
    odd = ("import types\nclass Solution:\n    def isPalindrome(self, s):\n"
           "        return types.MappingProxyType({})\n")
    monkeypatch.setattr(LiveCodeBench, "grade", lambda *a: pytest.fail("graded one by one"))
    grades = task.grade_many([probs["9001"], probs["9002"], probs["9001"]],
                             [fenced(deep), fenced(odd), fenced(GOLD["9001"])])
    assert [(g.correct, g.reason) for g in grades] == [(False, "wrong"), (False, "wrong"), (True, "correct")]
    assert "plain data" in grades[0].detail


def test_sweep_score_records_say_how_code_ran(tmp_path):
    from dlm_bench import evaluate
    from dlm_bench import sandbox
    from dlm_bench.runs.store import GEN_FIELDS, Store
    task = get_task("humaneval")
    probs = task.load("test")[:2]
    gens = [{**{f: 0 for f in GEN_FIELDS}, "method": "m", "task": "humaneval", "config_hash": "h",
             "problem_id": p.id, "sample": 0, "text": fenced(p.meta["prompt"] + p.meta["canonical_solution"]),
             "tokens": []} for p in probs]
    store = Store(tmp_path)
    evaluate._grade_and_store(store, task, probs, gens)
    rows = store.read("scores")
    assert [(r["correct"], r["isolation"]) for r in rows] == [(True, sandbox.isolation())] * 2
