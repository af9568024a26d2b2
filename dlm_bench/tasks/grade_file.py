"""Grade a JSONL file of completions with a task's grader, and list the tasks with their data.

Input rows: {"problem_id": ..., "completion": ...} or {"index": i, "completion": ...} (i = row position
in the task's eval split). Several rows may name the same problem (n samples per problem for Pass@k).
Every input line that is not blank yields exactly one output row, in order, echoing the input's fields
(all but the completion) plus `correct`, `extracted` and `reason` (and `correct_strict` for tasks with a
strict answer mode, graded flexibly). Completions are cut at the first end-of-turn token, as the sweep
cuts them. A bad line (malformed JSON, unknown id, missing or non-string completion, over-long
completion, bytes that are not UTF-8) gets `reason = "bad_input: ..."` and `correct = false`; it never
stops the rest of the file from being graded. A file with no good line at all is a UserError.
"""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path

from dlm_bench.errors import UserError
from dlm_bench.models import families

MAX_COMPLETION_CHARS = 100_000  # far beyond any real generation; guards the regex/sympy graders
# End-of-text / end-of-turn tokens as decoded text, of every model family's chat format (models/families.py).
# The sweep stops decoding at the first one; `grade` cuts there too, so both grade the same answer.
END_OF_TURN = families.end_texts()
_END_RE = re.compile("|".join(re.escape(t) for t in END_OF_TURN))


def cut_at_end_of_turn(text: str) -> str:
    m = _END_RE.search(text)
    return text[:m.start()] if m else text


def _bad(echo: dict, why: str) -> dict:
    return {**echo, "correct": False, "extracted": None, "reason": f"bad_input: {why}"}


def _parse_line(raw: bytes, lineno: int, by_id: dict, problems: list):
    """(echo fields, problem, completion) or (output row, None, None) for a bad line."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return _bad({"line": lineno}, "line is not valid UTF-8"), None, None
    try:
        row = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return _bad({"line": lineno}, "malformed JSON"), None, None
    if not isinstance(row, dict):
        return _bad({"line": lineno}, "not a JSON object"), None, None
    echo = {k: v for k, v in row.items() if k != "completion"}
    pid, idx = row.get("problem_id"), row.get("index")
    problem = None
    if idx is not None:
        if not isinstance(idx, int) or isinstance(idx, bool) or not 0 <= idx < len(problems):
            return _bad(echo, f"index {idx!r} is not an integer in 0..{len(problems) - 1}"), None, None
        problem = problems[idx]
        if pid is not None and pid != problem.id:
            return _bad(echo, f"index {idx} is {problem.id!r}, not {pid!r}"), None, None
    elif pid is not None:
        if not isinstance(pid, str) or pid not in by_id:
            return _bad(echo, f"unknown problem_id {pid!r}"), None, None
        problem = by_id[pid]
    else:
        return _bad(echo, "row has neither problem_id nor index"), None, None
    comp = row.get("completion")
    if comp is None:
        return _bad(echo, "missing completion"), None, None
    if not isinstance(comp, str):
        return _bad(echo, f"completion is a {type(comp).__name__}, not a string"), None, None
    if len(comp) > MAX_COMPLETION_CHARS:
        return _bad(echo, f"completion longer than {MAX_COMPLETION_CHARS} characters"), None, None
    if "problem_id" not in echo:
        echo["problem_id"] = problem.id  # index rows also get the stable id
    return echo, problem, cut_at_end_of_turn(comp)


def grade_rows(task, lines: list[bytes]) -> list[dict]:
    """Grade raw JSONL lines (bytes) with `task`; one output row per non-blank line."""
    problems = task.load(task.eval_split)
    by_id = {p.id: p for p in problems}
    out: list[dict | None] = []
    todo: list[tuple[int, dict, object, str]] = []
    for lineno, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        echo, problem, comp = _parse_line(raw.strip(), lineno, by_id, problems)
        if problem is None:
            out.append(echo)
        else:
            todo.append((len(out), echo, problem, comp))
            out.append(None)
    grades = _grade_safely(task, [t[2] for t in todo], [t[3] for t in todo])
    for (pos, echo, _, _), g in zip(todo, grades):
        out[pos] = {**echo, "correct": bool(g.correct), "extracted": g.extracted, "reason": g.reason}
        if hasattr(g, "isolation"):  # code tasks: how the program was confined
            out[pos]["isolation"] = g.isolation
    if task.answer_mode == "flexible" and "strict" in task.answer_modes:
        _add_strict(task, todo, grades, out)
    return out  # type: ignore[return-value]


def _add_strict(task, todo, grades, out) -> None:
    """`correct_strict` on every graded row. Strict only ever takes credit away, so only the rows
    correct under flexible grading are graded again."""
    strict = copy.copy(task).set_answer_mode("strict")
    again = [k for k, g in enumerate(grades) if g.correct]
    regraded = _grade_safely(strict, [todo[k][2] for k in again], [todo[k][3] for k in again])
    ok = {k: bool(g.correct) for k, g in zip(again, regraded)}
    for k, (pos, _, _, _) in enumerate(todo):
        out[pos]["correct_strict"] = ok.get(k, False)


def _grade_safely(task, problems, completions):
    """Batch grading; if the batch raises, grade one by one so one bad row cannot sink the file."""
    from dlm_bench.tasks import Grade
    if not problems:
        return []
    try:
        return task.grade_many(problems, completions)
    except UserError:  # e.g. no sandbox for code: the user must act, no row can be graded
        raise
    except Exception:  # noqa: BLE001
        out = []
        for p, c in zip(problems, completions):
            try:
                out.append(task.grade(p, c))
            except UserError:
                raise
            except Exception as e:  # noqa: BLE001
                out.append(Grade(False, None, f"grader_error: {type(e).__name__}: {e}"[:300]))
        return out


def grade_file(task_name: str, in_path, out_path=None, data_dir=None, answer_mode: str = "flexible") -> dict:
    """Grade `in_path`, write `out_path` (default: `<in>.graded.jsonl`), print and return a summary.

    A file in which every row is bad input (most often: the wrong task name) is a UserError and
    nothing is written; a few bad rows are graded `bad_input` and counted."""
    from dlm_bench.checks import writable_dir
    from dlm_bench.tasks import get_task
    task = get_task(task_name, data_dir=data_dir, answer_mode=answer_mode)
    in_path = Path(in_path)
    if not in_path.is_file():
        raise UserError(f"input file not found: {in_path}")
    out_path = Path(out_path) if out_path else in_path.with_name(in_path.name.removesuffix(".jsonl")
                                                                 + ".graded.jsonl")
    if out_path.resolve() == in_path.resolve():
        raise UserError(f"output would overwrite the input: {out_path}")
    if out_path.is_dir():
        raise UserError(f"output {str(out_path)!r} is a folder, not a file")
    writable_dir(out_path.parent, "output folder")
    rows = grade_rows(task, in_path.read_bytes().split(b"\n"))
    n = len(rows)
    bad = sum(str(r["reason"]).startswith("bad_input") for r in rows)
    if n == 0:
        raise UserError(f"{in_path} has no rows to grade")
    if bad == n:
        raise UserError(f"all {n} rows of {in_path} are bad input (first: {rows[0]['reason'][11:]}); "
                        f"is {task_name!r} the right task?")
    writable_dir(out_path.parent, "output folder", create=True)
    with open(out_path, "w", encoding="utf-8") as f:
        f.write("".join(_json_line(r) for r in rows))
    correct = sum(r["correct"] for r in rows)
    summary = {"task": task_name, "n": n, "correct": correct, "accuracy": correct / n,
               "bad_input": bad, "answer_mode": task.answer_mode, "output": str(out_path)}
    strict = sum(r.get("correct_strict", False) for r in rows)
    differs = any("correct_strict" in r for r in rows) and strict != correct
    if differs:                  # both verdicts, where the answer mode matters
        summary["correct_strict"] = strict
    print(f"{task_name}: n={n} correct={correct} accuracy={summary['accuracy']:.4f}"
          + (f" (strict: correct={strict} accuracy={strict / n:.4f})" if differs else "")
          + (f" bad_input={bad}" if bad else "") + (f" ({task.result_note()})" if task.result_note() else "")
          + f" -> {out_path}")
    if task.result_note():
        summary["note"] = task.result_note()
    return summary


def _json_line(row: dict) -> str:
    """UTF-8 where it can be; a row holding text UTF-8 cannot carry (a lone surrogate) is escaped."""
    text = json.dumps(row, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(row)
    return text + "\n"


def tasks_table(data_dir=None) -> list[tuple[str, str, str]]:
    """(task, "split=size, ...", data location or "missing") for every registered task; tasks that
    declare their data files are located without reading them (`Task.locate`)."""
    from dlm_bench.tasks import get_task, task_names
    rows = []
    for name in task_names():
        task = get_task(name, data_dir=data_dir)
        sizes, where = [], []
        for split, size in task.splits.items():
            try:
                found = task.locate(split)
            except Exception:  # noqa: BLE001 - any failure to find or load means the data is not usable here
                found = f"{split}: missing"
            generated = found is None or (size is None and task.data_files is None)
            sizes.append(f"{split}={size if size is not None else 'n'}" + (" (generated)" if generated else ""))
            if found is not None:
                where.append(found if task.data_files is not None or found.endswith("missing")
                             else f"{split}: {found}")
        uniq = list(dict.fromkeys(where))
        rows.append((name, ", ".join(sizes), "; ".join(uniq) if uniq else "generated"))
    return rows
