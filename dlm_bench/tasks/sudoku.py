"""4x4 Sudoku, as in d1 / SPG: a 16-character row-major string, '0' = empty; digits 1-4 in every row,
column and 2x2 box.

Splits: `test` = d1's 500 puzzles (d1 evaluates a seeded 256 subset of them), `spg` = SPG's 256-puzzle
re-split (test solutions held out from its training puzzles), `synthetic` = seeded generated puzzles with
a unique solution (d1's training CSV is not available locally), kept disjoint from both test files.

Grade = the whole grid is right: 16 digits 1-4, every row/column/box a permutation, givens kept.
Reward = d1's cell accuracy: the fraction of the originally empty cells that match the solution.
"""
from __future__ import annotations

import random
import re
from functools import lru_cache

from dlm_bench.tasks import data
from dlm_bench.errors import UserError

from . import Grade, Problem, Task, register_task
from ._math import boxed_contents

_UNITS = ([[r * 4 + c for c in range(4)] for r in range(4)]
          + [[r * 4 + c for r in range(4)] for c in range(4)]
          + [[(br + r) * 4 + bc + c for r in range(2) for c in range(2)] for br in (0, 2) for bc in (0, 2)])
_PEERS = [sorted({j for u in _UNITS if i in u for j in u} - {i}) for i in range(16)]


def is_valid_solution(grid: str, puzzle: str) -> bool:
    """16 digits 1-4, each unit a permutation of 1-4, and every given of `puzzle` unchanged."""
    if len(grid) != 16 or any(c not in "1234" for c in grid):
        return False
    if any(p != "0" and p != g for p, g in zip(puzzle, grid)):
        return False
    return all(sorted(grid[i] for i in u) == ["1", "2", "3", "4"] for u in _UNITS)


def count_solutions(puzzle: str, limit: int = 2) -> int:
    """Number of solutions, counting no further than `limit` (2 is enough to test uniqueness)."""
    cells = list(puzzle)
    for i, c in enumerate(cells):  # givens that clash make the puzzle unsolvable
        if c != "0" and any(cells[j] == c for j in _PEERS[i]):
            return 0

    def rec() -> int:
        try:
            i = cells.index("0")
        except ValueError:
            return 1
        total = 0
        for d in "1234":
            if all(cells[j] != d for j in _PEERS[i]):
                cells[i] = d
                total += rec()
                cells[i] = "0"
                if total >= limit:
                    break
        return total

    return rec()


def solve(puzzle: str) -> str | None:
    """The first solution in digit order, or None."""
    cells = list(puzzle)

    def rec() -> bool:
        if "0" not in cells:
            return True
        i = cells.index("0")
        for d in "1234":
            if all(cells[j] != d for j in _PEERS[i]):
                cells[i] = d
                if rec():
                    return True
        cells[i] = "0"
        return False

    return "".join(cells) if rec() else None


@lru_cache(maxsize=1)
def all_grids() -> tuple[str, ...]:
    """Every complete 4x4 grid (there are 288)."""
    out, cells = [], ["0"] * 16

    def rec(i: int) -> None:
        if i == 16:
            out.append("".join(cells))
            return
        for d in "1234":
            if all(cells[j] != d for j in _PEERS[i] if j < i):
                cells[i] = d
                rec(i + 1)
        cells[i] = "0"

    rec(0)
    return tuple(out)


def generate(n: int, seed: int = 0, n_empty: int | tuple[int, int] = 8, exclude=()) -> list[dict]:
    """`n` distinct puzzles {"puzzle", "solution"} with exactly one solution, reproducible from `seed`.

    A random full grid is emptied cell by cell in random order, keeping a removal only while the puzzle
    stays unique, until `n_empty` cells (or a count drawn from the (lo, hi) range) are empty; a grid that
    cannot reach the count is redrawn. d1's test puzzles all have 8 empty cells, SPG's 7-12.
    """
    rng = random.Random(seed)
    grids = all_grids()
    skip, seen, out = set(exclude), set(), []
    while len(out) < n:
        want = n_empty if isinstance(n_empty, int) else rng.randint(*n_empty)
        sol = rng.choice(grids)
        cells = list(sol)
        order = list(range(16))
        rng.shuffle(order)
        empty = 0
        for i in order:
            if empty == want:
                break
            keep, cells[i] = cells[i], "0"
            if count_solutions("".join(cells)) == 1:
                empty += 1
            else:
                cells[i] = keep
        puzzle = "".join(cells)
        if empty != want or puzzle in skip or puzzle in seen:
            continue
        seen.add(puzzle)
        out.append({"puzzle": puzzle, "solution": sol})
    return out


_ANSWER_TAG_RE = re.compile(r"<answer>(.*?)(?:</answer>|$)", re.DOTALL)


def extract_grid(completion: str) -> str | None:
    """The digits of the answer: last <answer> block (d1 keeps only its digits) → last \\boxed{} →
    last 16-digit run → the last four lines of four digits each. None when nothing grid-like is found."""
    tags = [t for t in _ANSWER_TAG_RE.findall(completion) if re.search(r"\d", t)]
    if tags:
        return "".join(c for c in tags[-1] if c.isdigit())
    boxes = [b for b in boxed_contents(completion) if re.search(r"\d", b)]
    if boxes:
        return "".join(c for c in boxes[-1] if c.isdigit())
    runs = re.findall(r"(?<!\d)\d{16}(?!\d)", completion)
    if runs:
        return runs[-1]
    rows = [re.sub(r"\D", "", ln) for ln in completion.splitlines()]
    rows = [r for r in rows if len(r) == 4]
    if len(rows) >= 4:
        return "".join(rows[-4:])
    return None


def cell_accuracy(grid: str | None, puzzle: str, solution: str) -> float:
    """d1's reward: fraction of the puzzle's empty cells equal to the solution (grid padded/cut to 16)."""
    if not grid:
        return 0.0
    grid = (grid + "0" * 16)[:16]
    empty = [i for i, c in enumerate(puzzle) if c == "0"]
    return sum(grid[i] == solution[i] for i in empty) / len(empty) if empty else 0.0


def read_puzzles(relpath: str, data_dir) -> list[tuple[str, str]]:
    """(puzzle, solution) strings of a data file (read as text, so leading zeros stay)."""
    rows = [(str(r["Puzzle"]).strip(), str(r["Solution"]).strip())
            for r in data.load_rows(relpath, data_dir, None, "test")]
    for p, s in rows:
        if len(p) != 16 or len(s) != 16 or not p.isdigit() or not s.isdigit():
            raise UserError(f"{relpath}: malformed sudoku row {p!r},{s!r} (expected 16-digit strings)")
    return rows


@register_task
class Sudoku(Task):
    name = "sudoku"
    answer_kind = "grid"
    eval_split = "test"
    train_split = "synthetic"
    splits = {"test": 500, "spg": 256, "synthetic": 10000}
    data_files = {"test": "sudoku/4x4_test_sudoku.csv", "spg": "sudoku/test_sudoku_split_new.csv"}
    synthetic_seed = 0
    synthetic_empty = (6, 10)
    # d1 eval/sudoku.py SUDOKU_SYSTEM_PROMPT + "\n\n" + question, all in the user turn; d1 prefills
    # "<reasoning>" after the chat template. (SPG evaluates its split 3-shot; we use d1's zero-shot.)
    prompt_template = (
        "\nPlease solve the following 4x4 Sudoku puzzle. The puzzle is provided as a 16-character string "
        "reading left-to-right, top-to-bottom, where '0' represents empty cells.\n\nRules:\n"
        "- Fill empty cells with digits 1-4\n- Each row must contain digits 1-4 exactly once\n"
        "- Each column must contain digits 1-4 exactly once\n- Each 2x2 box must contain digits 1-4 exactly "
        "once\n\nImportant: Your solution must be a COMPLETE 16-character string with only the digits 1-4, "
        "representing your final solved grid.\n\nRespond in this exact format:\n<reasoning>\n"
        "Your step-by-step solving process\n</reasoning>\n<answer>\n[16-character solution string with no "
        "spaces or separators]\n</answer>\n\n\nSolve the following Sudoku puzzle: {question}\n")
    template_source = "dllm-reasoning/d1 eval/sudoku.py SUDOKU_SYSTEM_PROMPT (as in xiaohangt/wd1 eval/)"
    assistant_prefill = "<reasoning>"  # d1 appends this after the chat template; for backends that can

    def load(self, split: str) -> list[Problem]:
        if split in self.data_files:
            rows = read_puzzles(self.data_files[split], self.data_dir)
            return [self._problem(f"sudoku/{split}/{i}", p, s) for i, (p, s) in enumerate(rows)]
        if split == "synthetic":
            excl = set()
            for s in self.data_files:  # never train on a puzzle that is in either test file
                try:
                    excl |= {p for p, _ in read_puzzles(self.data_files[s], self.data_dir)}
                except UserError:
                    pass
            rows = generate(self.splits["synthetic"], self.synthetic_seed, self.synthetic_empty, excl)
            return [self._problem(f"sudoku/synthetic/{i}", r["puzzle"], r["solution"])
                    for i, r in enumerate(rows)]
        raise UserError(f"sudoku has no split {split!r}; splits: {', '.join(self.splits)}")

    @staticmethod
    def _problem(pid: str, puzzle: str, solution: str) -> Problem:
        return Problem(id=pid, question=puzzle, answer=solution, meta={"puzzle": puzzle})

    def grade(self, problem: Problem, completion: str) -> Grade:
        grid = extract_grid(completion)
        if not grid:
            return Grade(False, None, "no_answer")
        if len(grid) != 16 or any(c not in "1234" for c in grid):
            return Grade(False, grid, "parse_error")
        ok = is_valid_solution(grid, problem.meta["puzzle"])
        return Grade(ok, grid, "correct" if ok else "wrong")

    def reward(self, problem: Problem, completion: str) -> float:
        return cell_accuracy(extract_grid(completion), problem.meta["puzzle"], str(problem.answer))

    def sft_target(self, problem: Problem) -> str | None:
        sol = str(problem.answer)
        rows = "\n".join(" ".join(sol[r * 4:r * 4 + 4]) for r in range(4))
        return (f"<reasoning>\nFilling each empty cell so that every row, column and 2x2 box holds 1-4 "
                f"gives the grid:\n{rows}\n</reasoning>\n<answer>\n{sol}\n</answer>")
