"""The recipe training rewards of the code tasks: a format score plus the fraction of test cases passed.

ESPO (github ML-GSAI/ESPO `espo/rewards.py`) and JustGRPO (github LeapLabTHU/JustGRPO `data/code.py`)
define the same reward, with different test runners:
- format (ESPO rewards.py:123-177, JustGRPO code.py:18-46): 1.0 if the completion is exactly some
  text without a fence, one ```python block, then the end (one newline allowed), and the block's
  stripped body parses as Python; 0.5 if it has that shape but does not parse; else 0.0.
- pass rate (ESPO rewards.py:48-119, JustGRPO code.py:61-81 with local_sandbox.py:40-111): the
  block's body is run against each test case on its own; passed / total (0.0 with no tests). It is
  computed only for completions whose format score is 1.0, else it is 0.
- reward = format + pass rate, each with weight 1 (ESPO: two reward functions, rewards.py:422-431,
  summed by espo_trainer.py:691 with trl's default unit reward_weights; JustGRPO code.py:76-80).
So the maximum is 2.0. Binary correctness stays the evaluation grade; these are training rewards only.

Choices where the references are odd or silent:
- The format rule reads the completion only. JustGRPO decodes prompt + completion (grpo.py:17, its
  generate returns the whole sequence), so any prompt holding a fence (ours all do) would score 0
  forever; ESPO scores the completion alone (espo_trainer.py:642-647). We follow ESPO for both.
- ESPO's per-case `python3 -c` and JustGRPO's exec both count "ran without an exception" as a pass;
  here a case passes as the task's grader decides (check mode: the asserts ran to the end in the
  harness; LiveCodeBench: output or return value equal), one sandbox run per case.
- Not modelled: the E2B sandbox's 30 s budget for a whole script (code_providers.py:134).

What a "test case" is per task is the task's `test_cases` (MBPP: one assert of test_list; HumanEval:
one assert-bearing statement of check(); LiveCodeBench: one input/output pair).
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from typing import Callable

from dlm_bench import sandbox

# A test case: the program to run and how to read its result as passed (True) or not.
Case = tuple[sandbox.Program, Callable[[sandbox.RunResult], bool]]


@dataclass(frozen=True)
class RecipeReward:
    name: str
    test_timeout: float          # seconds per test case (process start-up included, as both references)
    timeout_voids: bool          # one test case that times out makes the whole pass rate 0
    blocked: tuple[str, ...]     # substrings of the code that make the pass rate 0 without running it
    source: str


KINDS: dict[str, RecipeReward] = {
    "espo": RecipeReward(
        "espo", 5.0, True, (),
        "ML-GSAI/ESPO espo/rewards.py:48-78 (each case in its own `python3 -c`, timeout 5 s; a "
        "TimeoutExpired is not caught, so the script dies before printing __PASS_RATE__ and "
        "utils/code_providers.py:146-159 score it 0.0); run_code_llada.sh --code_provider e2b, whose "
        "runner has no substring blocklist"),
    "justgrpo": RecipeReward(
        "justgrpo", 1.0, False,
        ("threading", "multiprocess", "multiprocessing", "import os", "from os", "shutil",
         "import torch", "from torch", "import sklearn", "from sklearn"),
        "LeapLabTHU/JustGRPO data/local_sandbox.py:56-111 (max_execution_time 1.0 s per case, a "
        "timed-out case counts 0; should_execute's blocklist gives all cases 0)"),
}

# Some text without a fence, one ```python block, the end (an optional newline): group 1 is the body.
_SHAPE = re.compile(r"(?:(?!```).)*```python\n((?:(?!```).)*)```\n?", re.S)


def fenced_body(completion: str) -> str | None:
    """The body of the completion's single closing ```python block, or None if it has another shape."""
    m = _SHAPE.fullmatch(completion)
    return m.group(1) if m else None


def format_score(completion: str) -> float:
    body = fenced_body(completion)
    if body is None:
        return 0.0
    try:
        ast.parse(body.strip())
    except Exception:  # noqa: BLE001 - SyntaxError, or ValueError for a NUL byte: both "does not parse"
        return 0.5
    return 1.0


def pass_fraction(results: list[sandbox.RunResult], judges: list[Callable], spec: RecipeReward) -> float:
    """The one place a pass rate comes from sandbox results: cases passed / cases."""
    if not results:
        return 0.0
    if spec.timeout_voids and any(r.status == "timeout" for r in results):
        return 0.0
    return sum(bool(judge(r)) for r, judge in zip(results, judges)) / len(results)


def recipe_rewards(task, problems: list, completions: list[str], kind: str) -> list[float]:
    """format + pass rate for each completion, every test case of the batch run in parallel."""
    spec = KINDS[kind]
    sandbox.isolation()  # no sandbox and no explicit opt-out: UserError before anything runs
    fmt = [format_score(c) for c in completions]
    cases: list[list[Case]] = []
    for p, c, f in zip(problems, completions, fmt):
        body = fenced_body(c) if f == 1.0 else None
        if body is None or any(s in body for s in spec.blocked):
            cases.append([])
        else:
            cases.append(task.test_cases(p, body, spec.test_timeout))
    flat = [case for cs in cases for case in cs]
    results = iter(sandbox.run_many([prog for prog, _ in flat]))
    out = []
    for f, cs in zip(fmt, cases):
        mine = [next(results) for _ in cs]
        out.append(f + (pass_fraction(mine, [j for _, j in cs], spec) if f == 1.0 else 0.0))
    return out
