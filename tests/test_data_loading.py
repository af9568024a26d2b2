"""tasks/data.py reads every task's data through `datasets.load_dataset`: the rows equal what the json and
csv modules read, a parquet copy (a file, a folder of shards, or the hub's download layout) loads to the
same rows, and an unreachable hub is one line."""
import csv
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dlm_bench.errors import UserError
from dlm_bench.tasks import data, get_task
from shared_files import missing


def _shared_files() -> list[Path]:
    """Every local file a registered task reads (LiveCodeBench: its public-tests copy)."""
    from dlm_bench.tasks import task_names
    from dlm_bench.tasks.livecodebench import PUBLIC_COPY
    rels = {PUBLIC_COPY} | {rel for name in task_names() for rel in (get_task(name).data_files or {}).values()}
    found = []
    for rel in sorted(rels):
        try:
            found.append(data.find_file(rel))
        except UserError:
            pass
    if not found:
        missing("benchmark data absent (../shared/data or $DLM_BENCH_DATA)")
    return found


def _plain(path: Path) -> list[dict]:
    """The rows as the standard library (pyarrow for parquet) reads them: the readers data.py replaced."""
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if path.suffix == ".json":
        return json.loads(path.read_text(encoding="utf-8"))
    if path.suffix == ".parquet":
        return pq.read_table(path).to_pylist()
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _to_parquet(rows: list[dict], dest: Path, shards: int = 1) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    step = -(-len(rows) // shards)
    for k in range(shards):
        part = dest if shards == 1 else dest / f"part-{k:05d}.parquet"
        part.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows[k * step:(k + 1) * step]), part)


def test_every_shared_file_reads_as_the_standard_library_does():
    for path in _shared_files():
        assert data.read_files([path]) == _plain(path), path


def test_parquet_copies_load_to_the_same_rows(tmp_path):
    for path in _shared_files():
        if path.suffix in (".csv", ".parquet"):   # csv: text columns, tested below; parquet already
            continue
        rows = _plain(path)
        copy = tmp_path / path.parent.name / (path.stem + ".parquet")
        _to_parquet(rows, copy)
        assert data.read_files([copy]) == rows, path


def test_gsm8k_loads_from_a_parquet_copy(tmp_path):
    """The Done-when of issue 27: a user's parquet copy of GSM8K, in each layout, gives the same problems."""
    reference = get_task("gsm8k").load("test")
    rows = _plain(data.find_file("gsm8k/test.jsonl"))
    _to_parquet(rows, tmp_path / "flat" / "gsm8k" / "test.parquet")             # same name, parquet
    _to_parquet(rows, tmp_path / "shards" / "gsm8k" / "test", shards=3)          # a folder of shards
    _to_parquet(rows, tmp_path / "hub" / "main" / "test-00000-of-00001.parquet")  # as downloaded from the hub
    for layout in ("flat", "shards", "hub"):
        assert get_task("gsm8k", data_dir=str(tmp_path / layout)).load("test") == reference, layout


def test_csv_keeps_text_and_json_copy_loads(tmp_path):
    (tmp_path / "sudoku").mkdir()
    (tmp_path / "sudoku" / "4x4_test_sudoku.csv").write_text("Puzzle,Solution\n0102000000000000,3142243142131324\n")
    assert data.read_files([tmp_path / "sudoku" / "4x4_test_sudoku.csv"]) == [
        {"Puzzle": "0102000000000000", "Solution": "3142243142131324"}]
    rows = [{"question": "1+1?", "answer": "so\n#### 2"}]
    (tmp_path / "gsm8k").mkdir()
    (tmp_path / "gsm8k" / "test.json").write_text(json.dumps(rows))
    assert [p.answer for p in get_task("gsm8k", data_dir=str(tmp_path)).load("test")] == ["2"]


def test_bad_file_and_unreachable_hub_are_one_line(tmp_path, monkeypatch):
    (tmp_path / "gsm8k").mkdir()
    (tmp_path / "gsm8k" / "test.jsonl").write_text('{"question": 1, "answer": "x"}\n{not json\n')
    with pytest.raises(UserError) as bad:
        get_task("gsm8k", data_dir=str(tmp_path)).load("test")
    assert "cannot read" in str(bad.value) and "\n" not in str(bad.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setattr(data, "candidate_dirs", lambda data_dir=None: [empty])
    monkeypatch.setattr(data, "_hub_resolves", lambda: False)
    with pytest.raises(UserError) as hub:
        get_task("gsm8k").load("test")
    text = str(hub.value)
    assert "\n" not in text and "gsm8k/test.jsonl" in text
    assert "hub cannot be reached from here and 'openai/gsm8k' is not in the local cache" in text
