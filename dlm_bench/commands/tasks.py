"""`dlm-bench tasks [--data-dir DIR]`: every task with its splits, sizes and where its data was found."""
from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("--data-dir", default=None, help="folder holding the benchmark data")


def run(args) -> int:
    from dlm_bench.tasks.grade_file import tasks_table
    rows = [("task", "splits", "data")] + tasks_table(args.data_dir)
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    for name, splits, where in rows:
        print(f"{name:<{w0}}  {splits:<{w1}}  {where}")
    return 0
