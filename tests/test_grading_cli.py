"""`dlm-bench grade` / `dlm-bench tasks` and dlm_bench.tasks.grade_file on good and malformed input."""
import json

import pytest

from dlm_bench.tasks import data
from dlm_bench.cli import main
from dlm_bench.errors import UserError
from dlm_bench.tasks.grade_file import MAX_COMPLETION_CHARS, grade_file, tasks_table


def _write(path, lines):
    path.write_bytes(b"\n".join(x if isinstance(x, bytes) else json.dumps(x).encode() for x in lines) + b"\n")
    return path


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


MALFORMED = [
    {"problem_id": "gsm8k/test/0", "completion": "So \\boxed{18}."},          # 1 correct
    {"index": 1, "completion": "The answer is 3.", "sample": 2},             # 2 correct, extra field echoed
    b'{"index": 2, "completion": ',                                          # 3 malformed JSON
    b"\xff\xfe not utf-8",                                                   # 4 bad bytes
    {"problem_id": "gsm8k/test/99999", "completion": "1"},                   # 5 unknown id
    {"index": 1319, "completion": "1"},                                      # 6 index out of range
    {"problem_id": "gsm8k/test/3"},                                          # 7 no completion
    {"index": 4, "completion": ""},                                          # 8 empty: graded, no answer
    {"index": 5, "completion": "9" * (MAX_COMPLETION_CHARS + 1)},            # 9 too long
    [1, 2],                                                                  # 10 not an object
    {"index": 6, "completion": 123},                                         # 11 completion not a string
    b"",                                                                     # blank: not a row
    {"completion": "5"},                                                     # 12 no id at all
    {"index": 0, "problem_id": "gsm8k/test/1", "completion": "18"},          # 13 id and index disagree
    {"index": 0, "completion": "18"},                                        # 14 duplicate problem: fine
]


def test_grade_file_malformed_rows_keep_their_place(tmp_path, capsys):
    src = _write(tmp_path / "in.jsonl", MALFORMED)
    summary = grade_file("gsm8k", src)
    out = _read(tmp_path / "in.graded.jsonl")
    assert len(out) == 14 and summary["n"] == 14 and summary["correct"] == 3 and summary["bad_input"] == 10
    reasons = [r["reason"] for r in out]
    assert reasons[0] == reasons[1] == reasons[13] == "correct"
    assert reasons[7] == "no_answer"
    assert all(reasons[i].startswith("bad_input: ") for i in (2, 3, 4, 5, 6, 8, 9, 10, 11, 12))
    assert "malformed JSON" in reasons[2] and "UTF-8" in reasons[3] and "unknown problem_id" in reasons[4]
    assert "longer than" in reasons[8] and "missing completion" in reasons[6]
    assert out[1]["sample"] == 2 and out[1]["index"] == 1 and out[1]["problem_id"] == "gsm8k/test/1"
    assert out[2] == {"line": 3, "correct": False, "extracted": None, "reason": out[2]["reason"]}
    assert all("completion" not in r for r in out)                 # never echo the completion back
    assert "n=14 correct=3" in capsys.readouterr().out


def test_grade_file_math500_by_index_via_pool(tmp_path):
    src = _write(tmp_path / "m.jsonl", [{"index": 0, "completion": "\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}"},
                                        {"index": 0, "completion": "\\boxed{(3, \\pi)}"}])
    grade_file("math500", src, tmp_path / "out.jsonl")
    out = _read(tmp_path / "out.jsonl")
    assert [r["correct"] for r in out] == [True, False]
    assert out[0]["problem_id"] == "math500/test/precalculus/807.json"


def test_grade_file_user_errors(tmp_path):
    with pytest.raises(UserError, match="unknown task"):
        grade_file("nope", tmp_path / "x.jsonl")
    with pytest.raises(UserError, match="not found"):
        grade_file("gsm8k", tmp_path / "missing.jsonl")
    src = _write(tmp_path / "same.jsonl", [{"index": 0, "completion": "1"}])
    with pytest.raises(UserError, match="overwrite"):
        grade_file("gsm8k", src, src)


def test_cli_grade(tmp_path, capsys):
    src = _write(tmp_path / "c.jsonl", [{"index": 0, "completion": "\\boxed{93 + 30 - 100}"},
                                        {"index": 1, "completion": "I have no idea."}])
    assert main(["grade", "countdown", str(src), "-o", str(tmp_path / "o.jsonl")]) == 0
    assert [r["reason"] for r in _read(tmp_path / "o.jsonl")] == ["correct", "parse_error"]
    assert "countdown: n=2 correct=1 accuracy=0.5000" in capsys.readouterr().out


def test_cli_errors_are_one_line_exit_2(tmp_path, capsys):
    assert main(["grade", "nope", str(tmp_path / "x.jsonl")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dlm-bench grade: error: unknown task") and "\n" not in err
    assert main(["grade", "gsm8k", str(tmp_path / "missing.jsonl")]) == 2
    assert "not found" in capsys.readouterr().err


@pytest.fixture
def no_data(tmp_path, monkeypatch):
    """Make every data look-up fail: only an empty folder is searched."""
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setattr(data, "candidate_dirs", lambda data_dir=None: [empty])
    monkeypatch.setattr(data, "hub_dataset", _no_hub)
    return empty


def _no_hub(dataset_id, split, config=None):
    raise UserError(f"hub unreachable for {dataset_id}")


def test_tasks_table_and_cli(capsys):
    from shared_files import missing, shared_data_present
    if not shared_data_present():
        missing("benchmark data absent (../shared/data or $DLM_BENCH_DATA)")
    rows = {name: (splits, where) for name, splits, where in tasks_table()}
    assert {"gsm8k", "math500", "minerva", "countdown", "sudoku"} <= set(rows)
    assert rows["gsm8k"][0] == "test=1319, train=7473" and "missing" not in rows["gsm8k"][1]
    assert "synthetic=10000 (generated)" in rows["sudoku"][0]
    assert main(["tasks"]) == 0
    assert "minerva" in capsys.readouterr().out


def test_missing_data_is_reported_not_raised(no_data, tmp_path, capsys):
    rows = {name: where for name, _, where in tasks_table()}
    assert "missing" in rows["gsm8k"] and "missing" in rows["sudoku"]
    src = _write(tmp_path / "g.jsonl", [{"index": 0, "completion": "1"}])
    with pytest.raises(UserError) as exc:       # the local error, not the hub's, names where it looked
        grade_file("gsm8k", src)
    assert "gsm8k/test.jsonl" in str(exc.value) and str(no_data) in str(exc.value)
    assert main(["grade", "minerva", str(src)]) == 2
    assert "minerva_math/test.jsonl" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------
# Code tasks: no silent unisolated runs; hostile rows fail alone
# ---------------------------------------------------------------------------------------------------

def _canonical_rows(n=2):
    from dlm_bench.tasks import get_task
    probs = get_task("humaneval").load("test")[:n]
    return [{"problem_id": p.id, "completion": p.meta["canonical_solution"]} for p in probs]


def test_code_tasks_refuse_without_bubblewrap(tmp_path, capsys, monkeypatch):
    from dlm_bench import sandbox as sb
    from dlm_bench.sandbox import launch
    monkeypatch.setattr(launch, "_bwrap_problem", lambda: "bwrap not found on PATH")
    monkeypatch.setenv(sb.ENV_VAR, "")
    src = _write(tmp_path / "h.jsonl", _canonical_rows())
    for env in ("", "bwrap"):
        monkeypatch.setattr(launch, "_ISO", None)
        monkeypatch.setenv(sb.ENV_VAR, env)
        assert main(["grade", "humaneval", str(src), "-o", str(tmp_path / "refused.jsonl")]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "bubblewrap" in err and "--unsafe-no-isolation" in err
        assert not (tmp_path / "refused.jsonl").exists()
    monkeypatch.setattr(launch, "_ISO", None)
    monkeypatch.setenv(sb.ENV_VAR, "")
    assert main(["grade", "humaneval", str(src), "-o", str(tmp_path / "o.jsonl"), "--unsafe-no-isolation"]) == 0
    out = _read(tmp_path / "o.jsonl")
    assert [(r["correct"], r["isolation"]) for r in out] == [(True, sb.RLIMITS_ONLY)] * 2
    assert "WARNING" in capsys.readouterr().err


def test_hostile_completions_fail_alone(tmp_path):
    rows = _canonical_rows(1)
    pid = rows[0]["problem_id"]
    fence = lambda code: "```python\n" + code + "\n```"
    hostile = [fence("def has_close_elements(a, b):\n    return '\ud800'"),      # lone surrogate
               fence("def has_close_elements(a, b):\n    return 1\x00"),          # NUL byte
               fence("x = " + "(" * 5000 + "1" + ")" * 5000),                    # deep nesting
               fence("def has_close_elements(a, b):\n    x = []\n    for _ in range(9000):\n"
                     "        x = [x]\n    return x"),                            # deep result
               "y" * (MAX_COMPLETION_CHARS + 10)]                                # 10 MB-ish
    lines = [{"problem_id": pid, "completion": c} for c in hostile] + rows
    src = _write(tmp_path / "h.jsonl", lines[:4] + [b'{"problem_id": "%s", "completion": "\\ud800 \xff"}' % pid.encode()]
                 + lines[4:])
    summary = grade_file("humaneval", src, tmp_path / "o.jsonl")
    out = _read(tmp_path / "o.jsonl")
    assert summary["n"] == 7 and [r["correct"] for r in out] == [False] * 6 + [True]
    assert [r["reason"].split(":")[0] for r in out] == [
        "syntax_error", "syntax_error", "syntax_error", "wrong", "bad_input", "bad_input", "correct"]
    from dlm_bench.tasks import get_task  # the Python API: a 10 MB completion is just wrong
    task = get_task("humaneval")
    assert not task.grade(task.load("test")[0], fence("def has_close_elements(a, b):\n    return 1\n# " + "z" * (10 << 20))).correct
