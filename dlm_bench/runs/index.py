"""Which model made which records, and which of them count: `configs.jsonl` in a run folder holds each
cell's resolved config once (config hash -> method label, model identity, when it was first run).

Records carry only the config hash. One label can cover several models (a retrained checkpoint
evaluated into the same folder, or a newer sweep elsewhere). `current` is the ONE rule that says which
model is current for a (label, task, training seed): `compare`, `report` and `runs` all call it.
The rule: the newest model among those with a complete sweep (results.json says complete); a model
with only incomplete sweeps is current only where no complete one exists, or when the caller opts in
(`include_incomplete_newer`), so a complete run is never dropped for a newer partial one.
"""
from __future__ import annotations

import json
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

from dlm_bench.errors import UserError
from dlm_bench.runs.files import append_lines, read_jsonl
from dlm_bench.runs.locks import io_lock
from dlm_bench.runs.store import KEY, RESULTS, read_scores, run_dirs

INDEX = "configs.jsonl"
SEED_DIR = re.compile(r"^seed-(\d+)$")     # training-seed folders: RUNS/METHOD/seed-K/<run dirs>
UNKNOWN = "unknown"          # records whose config hash no folder names
UNSEEDED = -1                # train_seed of the runs outside every seed-K folder (the untrained base)
DECODER_FILE = "decoder.json"   # ROOT/DECODER/decoder.json: the sweeps under one training decoder (protocol.sweep)


def read_index(run_dir: str | Path) -> dict[str, dict]:
    return {r["config_hash"]: r for r in read_jsonl(Path(run_dir) / INDEX)}


def record_cells(run_dir: str | Path, method: str, cells, model_path: str | None = None) -> None:
    """Add the cells of a sweep not yet in the folder's index (the caller holds the folder lock).
    `model_path` (absolute) lets `dlm-bench runs` tell whether the model still exists."""
    known = read_index(run_dir)
    now = round(time.time(), 3)
    path = str(Path(model_path).resolve()) if model_path else None
    lines = [json.dumps({"config_hash": c.hash, "method": method, "model": c.config["model"], "time": now,
                         "model_path": path, "config": c.config}, sort_keys=True, default=str)
             for c in cells if c.hash not in known]
    if lines:
        with io_lock(run_dir, shared=True):
            append_lines(Path(run_dir) / INDEX, lines)


def folder_cells(folder: Path) -> dict[str, dict]:
    """config hash -> {label, task, model, name, time, path} for the cells of a run folder: from
    configs.jsonl, or for a folder from before it, from results.json (time: the folder's mtime)."""
    index = read_index(folder)
    if index:
        return {h: {"label": e["method"], "task": e["config"].get("task"), "model": str(e["model"].get("hash")),
                    "name": str(e["model"].get("name")), "time": float(e["time"]), "path": e.get("model_path")}
                for h, e in index.items()}
    try:
        results = json.loads((folder / RESULTS).read_text())
    except (OSError, ValueError):
        return {}
    return {c["config_hash"]: {"label": results.get("method"), "task": c["config"].get("task"),
                               "model": str(c["config"]["model"].get("hash")),
                               "name": str(c["config"]["model"].get("name")), "time": folder.stat().st_mtime,
                               "path": results.get("config", {}).get("model")}
            for c in results.get("cells", []) if "config_hash" in c}


def seed_part(folder: Path, root: Path) -> str:
    """The `seed-K` folder `folder` lies in below `root`, or '' outside every seed folder."""
    try:
        parts = folder.resolve().relative_to(root.resolve()).parts
    except ValueError:
        return ""
    return next((p for p in parts if SEED_DIR.match(p)), "")


def sweep_complete(folder: Path) -> bool:
    p = folder / RESULTS
    try:
        return bool(json.loads(p.read_text()).get("complete")) if p.is_file() else False
    except ValueError:
        return False


@dataclass(frozen=True)
class Evaluation:
    """One model evaluated under one method label on one task in one run folder."""
    label: str
    task: str
    seed: str            # the seed-K folder part, '' outside seed folders
    model: str           # model hash (the model's fingerprint)
    name: str
    time: float          # when its newest cell was first run
    folder: Path
    complete: bool

    @property
    def key(self) -> tuple[str, str, str]:
        return self.label, self.task, self.seed

    @property
    def text(self) -> str:
        return f"{self.name}@{self.model[:8]}"


def evaluations(folders: list[Path], root: Path) -> list[Evaluation]:
    """Every (label, task, seed, model) evaluated in `folders`, from their configs.jsonl."""
    found: dict[tuple, Evaluation] = {}
    for d in folders:
        complete, seed = sweep_complete(d), seed_part(d, root)
        for e in folder_cells(d).values():
            ev = Evaluation(e["label"], e["task"], seed, e["model"], e["name"], e["time"], d, complete)
            k = (ev.key, ev.model, d)
            if k not in found or found[k].time < ev.time:
                found[k] = ev
    return list(found.values())


def current(evals: list[Evaluation], include_incomplete_newer: bool = False) -> dict[tuple, Evaluation]:
    """The current evaluation per (label, task, seed): the newest complete one, else the newest
    (the newest whatever its state with `include_incomplete_newer`)."""
    best: dict[tuple, Evaluation] = {}
    for ev in evals:
        b = best.get(ev.key)
        rank = (include_incomplete_newer or ev.complete, ev.time)
        if b is None or rank > (include_incomplete_newer or b.complete, b.time):
            best[ev.key] = ev
    return best


def select_current(df: pd.DataFrame, folders: list[Path], root: Path) -> pd.DataFrame:
    """Keep only the records of each (label, task, seed)'s current model; one warning line on stderr
    per label that covers several models, naming the ones left out and why."""
    if df.empty:
        return df
    evals = evaluations(folders, root)
    cur = current(evals)
    model_of = {h: (e["model"], seed_part(d, root)) for d in folders for h, e in folder_cells(d).items()}
    model, seed = zip(*df["config_hash"].map(lambda h: model_of.get(h, (UNKNOWN, ""))))
    chosen = [cur.get(k) for k in zip(df["method"], df["task"], seed)]
    keep = [c is None or c.model == m for c, m in zip(chosen, model)]
    for label, task in sorted(set(zip(df["method"], df["task"]))):
        _warn_left_out(label, task, [e for e in evals if e.label == label and e.task == task], cur)
    return df[keep].reset_index(drop=True)


def _warn_left_out(label: str, task: str, evals: list[Evaluation], cur: dict) -> None:
    out = sorted({(e.text, "incomplete" if not e.complete and cur[e.key].time < e.time else "older")
                  for e in evals if cur[e.key].model != e.model})
    if out:
        used = sorted({cur[e.key].text for e in evals})
        n = len({e.model for e in evals})
        print(f"dlm-bench: warning: method {label!r} on {task!r} labels records of {n} models; using "
              f"{', '.join(used)} and leaving out {', '.join(f'{t} ({why})' for t, why in out)} "
              "(evaluate each model under its own label to compare them)", file=sys.stderr)


def read_all_scores(root: str | Path) -> pd.DataFrame:
    """Scores of every run under `root`, concatenated (a record present in two runs is kept once),
    only the current model's records per (label, task, seed) (`current`)."""
    root = Path(root)
    dirs = run_dirs(root)
    frames = [f for f in (read_scores(d) for d in dirs) if not f.empty]
    if not frames:
        raise UserError(f"no scores.jsonl with records under {str(root)!r}")
    import pandas as pd          # not at import: `dlm-bench runs --help` stays fast
    df = pd.concat(frames, ignore_index=True)
    df = df.drop_duplicates(list(KEY), keep="first").reset_index(drop=True)
    return select_current(df, dirs, root)


def decoder_folders(root) -> list[tuple[Path, dict]]:
    """(folder, its decoder.json) for every sub-folder of `root` that holds the sweeps of one training
    decoder (RESULTS/passk-rollout/DECODER/); empty when `root` has none."""
    root = Path(root)
    out = []
    for d in sorted(root.iterdir()) if root.is_dir() else []:
        try:
            out.append((d, json.loads((d / DECODER_FILE).read_text())))
        except (OSError, ValueError):
            continue
    return out


def seed_folders(root) -> dict[tuple[str, int], Path]:
    """Training-seed folders under `root` (layout ROOT/METHOD/seed-K/<run dirs>), keyed by
    (parent folder, K). Empty when there are none."""
    root = Path(root)
    found = {}
    for d in run_dirs(root):
        rel = d.relative_to(root)
        for part in [rel, *rel.parents]:
            m = SEED_DIR.match(part.name)
            if m:
                found[(str(part.parent), int(m.group(1)))] = root / part
    return found


def read_seeded_scores(root):
    """Scores of every seed folder under `root` with a `train_seed` column, or None without any.
    Each seed folder is read on its own, so one label may hold one model per seed; runs outside
    every seed folder (the untrained base) are read together as one seed, train_seed = UNSEEDED."""
    import pandas as pd
    root = Path(root)
    folders = seed_folders(root)
    if not folders:
        return None
    frames = [read_all_scores(f).assign(train_seed=k) for (_, k), f in sorted(folders.items())]
    inside = {d for f in folders.values() for d in run_dirs(f)}
    rest = [d for d in run_dirs(root) if d not in inside]
    loose = [f for f in (read_scores(d) for d in rest) if not f.empty]
    if loose:
        df = pd.concat(loose, ignore_index=True).drop_duplicates(list(KEY))
        frames.append(select_current(df.reset_index(drop=True), rest, root).assign(train_seed=UNSEEDED))
    return pd.concat(frames, ignore_index=True)


def read_scores_by_seed(root) -> pd.DataFrame:
    """`read_seeded_scores`, or without seed folders `read_all_scores` with every run as one seed
    (train_seed UNSEEDED): rows the seed-level statistics take either way."""
    df = read_seeded_scores(root)
    return read_all_scores(root).assign(train_seed=UNSEEDED) if df is None else df
