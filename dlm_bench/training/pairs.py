"""Preference pairs from a file (`dlm-bench train METHOD --pairs FILE.jsonl`, `TrainConfig.pairs`): two fixed
completions per prompt, the chosen one rewarded 1 and the rejected one 0, in place of the task's sampled
and graded rollouts. VRPO's recipe trains on such data (DARE `recipe/llada/run_vrpo_llada_8b_instruct.sh`,
UltraFeedback pairs); every method that needs no decoding trajectory can train on it as offline rollouts.

The file has one JSON object per line with TRL's preference-dataset keys:

    {"prompt": "What is 2+3?", "chosen": "5", "rejected": "6"}

`prompt` is a user turn (a string) or a list of chat messages; the model's chat template is applied as for
task prompts. `chosen` and `rejected` are tokenised without special tokens and must fit the method's
`gen_length`. Each completion is scored over its own tokens only: the end-of-text padding after it fills
the window but is not scored (DARE's DPO data, `data.add_eos=false`, masks the padding). Prompts are
visited in a shuffled order as task problems are (`batch_prompts` pairs per step, `epochs` passes).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from dlm_bench.errors import UserError
from dlm_bench.tasks import Problem
from dlm_bench.training.trajectories import Trajectory

KEYS = ("prompt", "chosen", "rejected")


@dataclass
class PairsFile:
    """A pairs file in the role of the training task: `load` gives one problem per pair, `prompt` its
    chat messages, `locate` its path (the loop asks a task for nothing else when the rollouts come from a file)."""
    path: str
    name: str = "pairs"
    answer_kind: str = "text"

    def load(self, split: str | None = None) -> list[Problem]:
        p = Path(self.path)
        if not p.is_file():
            raise UserError(f"pairs file {self.path!r} does not exist")
        out = []
        for n, line in enumerate(p.read_text().splitlines(), 1):
            if not line.strip():
                continue
            out.append(_problem(line, n, self.path))
        if not out:
            raise UserError(f"pairs file {self.path!r} holds no pairs")
        return out

    def locate(self, split: str | None = None) -> str:
        """Where the data came from, for the model card."""
        return str(Path(self.path).resolve())

    def prompt(self, problem: Problem):
        q = problem.question
        return [{"role": "user", "content": q}] if isinstance(q, str) else q


def _problem(line: str, n: int, path: str) -> Problem:
    where = f"{path} line {n}"
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as e:
        raise UserError(f"{where} is not JSON: {e.msg}") from None
    if not isinstance(rec, dict) or any(k not in rec for k in KEYS):
        raise UserError(f"{where} must be an object with keys {', '.join(KEYS)}")
    prompt = rec["prompt"]
    ok_prompt = isinstance(prompt, str) or (isinstance(prompt, list) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in prompt))
    if not ok_prompt:
        raise UserError(f"{where}: prompt must be a string or a list of {{role, content}} messages")
    for k in ("chosen", "rejected"):
        if not isinstance(rec[k], str) or not rec[k]:
            raise UserError(f"{where}: {k} must be a non-empty string")
    return Problem(id=f"pairs/{n}", question=prompt, answer=(rec["chosen"], rec["rejected"]), meta={"line": n})


def trajectories(dlm, problems: list[Problem], gen_length: int) -> dict[tuple[int, int], Trajectory]:
    """(problem, 0) -> the chosen completion (reward 1), (problem, 1) -> the rejected one (reward 0): the
    tokens padded with end-of-text to the window, scored over their own length, no decoding steps (-1)."""
    out = {}
    for i, prob in enumerate(problems):
        for j, (text, reward) in enumerate(zip(prob.answer, (1.0, 0.0))):
            ids = dlm.tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(ids) > gen_length:
                raise UserError(f"pairs line {prob.meta['line']}: the {('chosen', 'rejected')[j]} completion has "
                                f"{len(ids)} tokens, more than gen_length {gen_length} (--set gen_length=N)")
            pad = gen_length - len(ids)
            out[(i, j)] = Trajectory(text, ids + [dlm.eos_id] * pad, [-1] * gen_length, reward, scored=len(ids))
    return out
