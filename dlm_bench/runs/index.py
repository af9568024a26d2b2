"""Which model made which records: `configs.jsonl` in a run folder holds each cell's resolved config
once (config hash -> method label, model identity, when it was first run).

Records carry only the config hash. With this index, readers that select by method label (`compare`,
`report`) can tell when one label covers several models, e.g. a retrained checkpoint evaluated into
the same folder: they keep the newest model's records and say which ones they left out.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pandas as pd

from dlm_bench.runs.locks import io_lock

INDEX = "configs.jsonl"


def read_index(run_dir: str | Path) -> dict[str, dict]:
    from dlm_bench.runs.store import read_jsonl
    return {r["config_hash"]: r for r in read_jsonl(Path(run_dir) / INDEX)}


def record_cells(run_dir: str | Path, method: str, cells, model_path: str | None = None) -> None:
    """Add the cells of a sweep not yet in the folder's index (the caller holds the folder lock).
    `model_path` (absolute) lets `dlm-bench runs` tell whether the model still exists."""
    from dlm_bench.runs.store import _append_lines
    known = read_index(run_dir)
    now = round(time.time(), 3)
    path = str(Path(model_path).resolve()) if model_path else None
    lines = [json.dumps({"config_hash": c.hash, "method": method, "model": c.config["model"], "time": now,
                         "model_path": path, "config": c.config}, sort_keys=True, default=str)
             for c in cells if c.hash not in known]
    if lines:
        with io_lock(run_dir, shared=True):
            _append_lines(Path(run_dir) / INDEX, lines)


def _model_key(entry: dict | None) -> str:
    return "unknown (no configs.jsonl)" if entry is None else \
        f"{entry['model'].get('name')}@{str(entry['model'].get('hash'))[:8]}"


def newest_model_per_label(df: pd.DataFrame, run_dirs: list[Path]) -> pd.DataFrame:
    """Keep, for each (method label, task), only the records of the model evaluated last under it
    (per-task checkpoints under one label are normal); warn on stderr, one line each, naming the
    models left out."""
    if df.empty:
        return df
    index: dict[str, dict] = {}
    for d in run_dirs:
        index.update(read_index(d))
    model = df["config_hash"].map(lambda h: _model_key(index.get(h)))
    when = df["config_hash"].map(lambda h: index[h]["time"] if h in index else float("-inf"))
    keep = pd.Series(True, index=df.index)
    for (label, task), rows in df.groupby(["method", "task"]).groups.items():
        models = when[rows].groupby(model[rows]).max().sort_values()
        if len(models) > 1:        # one label, one task, several models: a re-evaluated checkpoint
            newest = models.index[-1]
            keep[rows] = (model[rows] == newest).to_numpy()
            print(f"dlm-bench: warning: method {label!r} on {task!r} labels records of {len(models)} models; "
                  f"using the newest, {newest}, and leaving out {', '.join(models.index[:-1])} "
                  "(evaluate each model under its own label to compare them)", file=sys.stderr)
    return df[keep].reset_index(drop=True)
