"""`testbed`: a CPU-scale Countdown variant with many correct answers per problem, for `make demo`.

Three numbers from 1..9 (shown sorted) and a target in 1..60; combine all three numbers, each exactly once, with
+ - * and parentheses. Every problem has at least `min_solutions` distinct correct expressions
(commutative variants count), so path diversity is measurable. Generated from a seed: no data files.
The evaluation split (200 problems) and the training split never share a (numbers, target) pair.

Why not d1's Countdown: with numbers up to 100 and division, a ~2M-parameter model needs far more CPU
time than a demo has (see ../shared/reference/cpu-testbed-prototype.md: 30 min of SFT for 15% Pass@1
on an easier variant than d1's). This variant keeps the structure with smaller numbers.
"""
from __future__ import annotations

import ast
import itertools
import math
import random
from functools import lru_cache

from dlm_bench.tasks import Grade, Problem, Task, register_task

OPS = "+-*"
EVAL_SIZE = 200

# The testbed's own training scale (`train_scale`): answers are at most 12 tokens, so rollouts decode a
# 12-token window in 12 steps (one block; left-to-right methods force their own order); 8 prompts x 8
# samples per step and full fine-tuning of the 1.8M-parameter base (LoRA on 8B is what the recipes
# tune). The methods' 8B recipes on this task decode up to 512 tokens for a 12-token answer.
SCALE = {"gen_length": 12, "steps": 12, "block_length": 12, "group_size": 8, "batch_prompts": 8, "lora_r": 0}
# Learning rate: 3e-5 for one optimizer update per rollout batch, divided by sqrt(updates per batch).
# - 3e-5: JustGRPO (one update) keeps its held-out Pass@1 gain under its own decoder with no Pass@8 loss,
#   where 1e-4 (the pre-training's final lr) also gains but cuts Pass@8 from 65% to 45-48% at T = 0.6
#   (../shared/reference/testbed-fidelity.md; `make positive-control` re-measures it on 4 seeds).
# - sqrt: AdamW moves each weight by about lr per update, but successive updates of one batch do not
#   add up coherently. Measured (10 rollout batches from this base, mean |weight change| per batch in
#   units of 3e-5): JustGRPO (1 update) 0.298; with lr / updates, ESPO (2 inner updates, 1.5e-5) 0.242
#   and TraceRL (8 minibatch updates, fresh AdamW per batch, 3.75e-6) 0.117; with lr / sqrt(updates),
#   TraceRL (1.06e-5) 0.299, i.e. the same movement per batch as JustGRPO.
LR_ONE_UPDATE = 3e-5


def _value(node) -> int | None:
    """Integer value of a parsed expression made only of integers, + - * and parentheses."""
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in (ast.Add, ast.Sub, ast.Mult):
        a, b = _value(node.left), _value(node.right)
        if a is None or b is None:
            return None
        return a + b if isinstance(node.op, ast.Add) else a - b if isinstance(node.op, ast.Sub) else a * b
    return None


def _numbers(node) -> list[int]:
    return [n.value for n in ast.walk(node) if isinstance(n, ast.Constant)]


@lru_cache(maxsize=None)
def _table(numbers: tuple[int, ...]) -> dict[int, tuple[str, ...]]:
    """target -> every distinct expression (all orders, operators and both tree shapes) reaching it."""
    found: dict[int, set] = {}
    for a, b, c in itertools.permutations(numbers):
        for o1, o2 in itertools.product(OPS, repeat=2):
            for text in (f"{a}{o1}{b}{o2}{c}", f"({a}{o1}{b}){o2}{c}", f"{a}{o1}({b}{o2}{c})"):
                found.setdefault(_value(ast.parse(text, mode="eval").body), set()).add(_minimal(text))
    return {t: tuple(sorted(v)) for t, v in found.items()}


def solutions(numbers, target: int) -> tuple[str, ...]:
    return _table(tuple(sorted(numbers))).get(target, ())


def _minimal(text: str) -> str:
    """Drop parentheses that do not change the value's parse tree (so '(2*3)+4' becomes '2*3+4')."""
    bare = text.replace("(", "").replace(")", "")
    return bare if ast.dump(ast.parse(bare, mode="eval")) == ast.dump(ast.parse(text, mode="eval")) else text


def all_problems(min_solutions: int = 2) -> list[tuple]:
    """Every ((a, b, c), target) with a <= b <= c in 1..9, target in 1..60 and enough solutions."""
    return [(nums, t) for nums in itertools.combinations_with_replacement(range(1, 10), 3)
            for t in range(1, 61) if len(solutions(nums, t)) >= min_solutions]


def split_problems(seed: int = 1234) -> tuple[list[tuple], list[tuple]]:
    """(test, train): EVAL_SIZE problems drawn from a seed, and every other problem for training."""
    pool = all_problems()
    random.Random(seed).shuffle(pool)
    return pool[:EVAL_SIZE], pool[EVAL_SIZE:]


@register_task
class Testbed(Task):
    name = "testbed"
    answer_kind = "expression"
    splits = {"test": EVAL_SIZE, "train": None}
    data_files = {}          # every split is generated
    prompt_template = "{question}:"
    template_source = "dlm-bench testbed (plain, no chat wrapper: a character-level model)"

    def load(self, split: str) -> list[Problem]:
        if split not in ("test", "train"):
            raise ValueError(f"testbed has splits test and train, not {split!r}")
        rows = split_problems()[0 if split == "test" else 1]
        return [Problem(id=f"testbed/{split}/{i}", question=f"{' '.join(map(str, nums))}>{target}",
                        answer=target, meta={"numbers": list(nums)})
                for i, (nums, target) in enumerate(rows)]

    def grade(self, problem: Problem, completion: str) -> Grade:
        text = completion.strip().split("\n")[0].strip()
        if not text:
            return Grade(False, None, "no_answer")
        try:
            tree = ast.parse(text, mode="eval").body
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            return Grade(False, text, "parse_error")
        value = _value(tree)
        if value is None:
            return Grade(False, text, "invalid")
        if sorted(_numbers(tree)) != sorted(problem.meta["numbers"]):
            return Grade(False, text, "invalid")
        return Grade(value == problem.answer, text, "correct" if value == problem.answer else "wrong")

    @classmethod
    def train_scale(cls, updates_per_batch: int) -> dict:
        """SCALE, and LR_ONE_UPDATE divided by the square root of the optimizer updates per rollout batch."""
        return {**SCALE, "lr": LR_ONE_UPDATE / math.sqrt(max(1, updates_per_batch))}

    def sft_target(self, problem: Problem, rng: random.Random | None = None) -> str:
        """A correct expression: a random one of all solutions when `rng` is given, else the first."""
        sols = solutions(problem.meta["numbers"], problem.answer)
        return rng.choice(sols) if rng else sols[0]
