"""Append-only JSONL records of an evaluation run, resumable after a kill and mergeable across ranks.

A run directory holds
- `generations.jsonl`: one row per sample (GEN_FIELDS): what was decoded, its seed and its cost;
- `scores.jsonl`: the same row plus the grade (SCORE_FIELDS);
- `results.json`: aggregates, the full resolved config and package versions (written whole, atomically);
- beside them (other modules): `configs.jsonl` (which model each config hash stands for, `runs.index`),
  `model.json` (the loaded model), `environment.jsonl` (where it ran, `environment`).

A record is keyed by (method, config_hash, problem_id, sample) and is never written twice: `append`
skips keys already present. Every batch of lines goes out in one write, then flush + fsync, so a kill
leaves at most one torn last line; opening the store for writing cuts it off, and readers ignore it.
Under torchrun each rank appends to its own shard (`generations.rank{r}.jsonl`, `scores.rank{r}.jsonl`);
`merge` folds shards into the main files, de-duplicated and sorted deterministically, so one process
and N ranks (or a killed-and-resumed run) end with byte-identical files apart from timings.

Concurrency: appends hold the folder's I/O lock shared, merges and repairs hold it exclusive
(`dlm_bench.runs.locks`), so a merge cannot drop a line another process is appending. A failed write
(disk full, file-size limit) is cut back to the last whole batch and reported as a UserError.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

from dlm_bench.errors import UserError
from dlm_bench.checks import writable_dir
from dlm_bench.runs.files import append_lines, atomic_write, read_jsonl, repair_tail, write_json
from dlm_bench.runs.locks import io_lock

GEN_FIELDS = ("method", "task", "temperature", "gen_length", "problem_id", "sample", "seed", "config_hash",
              "prompt_hash", "text", "tokens", "nfe", "length", "seconds")
SCORE_FIELDS = GEN_FIELDS + ("correct", "extracted", "reason", "isolation")  # isolation: code tasks
KEY = ("method", "config_hash", "problem_id", "sample")
# offline training trajectories (`dlm_bench.training.trajectories`): problem_id is the problem's index in the split
TRAJ_FIELDS = ("method", "task", "temperature", "gen_length", "problem_id", "sample", "seed", "config_hash",
               "text", "tokens", "step_map", "reward", "nfe")
KINDS = {"generations": GEN_FIELDS, "scores": SCORE_FIELDS, "trajectories": TRAJ_FIELDS}
RESULTS = "results.json"
_SHARD = re.compile(r"^(generations|scores|trajectories)\.rank(\d+)\.jsonl$")


def record_key(rec: dict) -> tuple:
    return tuple(rec[k] for k in KEY)


def _natural(s: str) -> tuple:
    """Sort key that orders 'p/2' before 'p/10' and never compares str with int."""
    return tuple((0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", str(s)) if t)


def sort_key(rec: dict) -> tuple:
    return (str(rec["method"]), str(rec["task"]), float(rec["temperature"]), int(rec["gen_length"]),
            str(rec["config_hash"]), _natural(rec["problem_id"]), int(rec["sample"]))


OPTIONAL = {"isolation": None}      # fields older records and non-code tasks may lack


def _dumps(rec: dict, fields) -> str:
    missing = [f for f in fields if f not in rec and f not in OPTIONAL]
    if missing:
        raise ValueError(f"record lacks field(s) {missing}")
    row = {f: rec.get(f, OPTIONAL.get(f)) for f in fields}
    text = json.dumps(row, ensure_ascii=False, separators=(",", ":"))
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:        # a lone surrogate in model output: store it escaped, never crash
        text = json.dumps(row, ensure_ascii=True, separators=(",", ":"))
    return text


# --------------------------------------------------------------------------- the store

class Store:
    """One run directory. `rank=None`: write the main files; `rank=r`: write rank r's shards."""

    def __init__(self, run_dir: str | Path, rank: int | None = None):
        self.dir = Path(run_dir)
        self.rank = rank
        self._keys: dict[str, set] | None = None

    def path(self, kind: str, rank: int | None = None) -> Path:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {sorted(KINDS)}")
        return self.dir / (f"{kind}.jsonl" if rank is None else f"{kind}.rank{rank}.jsonl")

    def shard_paths(self, kind: str) -> list[Path]:
        if not self.dir.is_dir():
            return []
        found = [(int(m.group(2)), p) for p in self.dir.iterdir()
                 if (m := _SHARD.match(p.name)) and m.group(1) == kind]
        return [p for _, p in sorted(found)]

    def _all_paths(self, kind: str) -> list[Path]:
        return [self.path(kind)] + self.shard_paths(kind)

    def read(self, kind: str, shards: bool = True) -> list[dict]:
        """Records of one kind, main file first then shards (duplicates across them dropped)."""
        seen, out = set(), []
        for p in self._all_paths(kind) if shards else [self.path(kind)]:
            for rec in read_jsonl(p):
                k = record_key(rec)
                if k not in seen:
                    seen.add(k)
                    out.append(rec)
        return out

    def open(self) -> "Store":
        """Prepare for appending: create the directory, cut torn last lines, index the present keys."""
        writable_dir(self.dir, "run folder", create=True)
        self._keys = {}
        for kind in KINDS:
            with io_lock(self.dir, shared=False):
                repair_tail(self.path(kind, self.rank))
            self._keys[kind] = {record_key(r) for r in self.read(kind)}
        return self

    def done_keys(self, kind: str = "scores") -> set:
        """Keys (method, config_hash, problem_id, sample) already recorded, in any file of the run."""
        if self._keys is None:
            return {record_key(r) for r in self.read(kind)}
        return set(self._keys[kind])

    def append(self, kind: str, records: list[dict]) -> int:
        """Append records whose key is new, as one atomic-ish write (write, flush, fsync); returns count."""
        if self._keys is None:
            self.open()
        keys = self._keys[kind]
        lines, new = [], []
        for rec in records:
            k = record_key(rec)
            if k in keys or k in new:
                continue
            lines.append(_dumps(rec, KINDS[kind]))
            new.append(k)
        if lines:
            with io_lock(self.dir, shared=True):
                append_lines(self.path(kind, self.rank), lines)
        keys.update(new)
        return len(lines)

    def merge(self) -> dict[str, int]:
        """Fold every shard into the main files, de-duplicated and sorted; remove the shards.

        The main file is rewritten atomically before any shard is deleted, so a kill during a merge
        loses nothing (a re-run merges again); the exclusive I/O lock keeps appends out meanwhile.
        Returns the record count per kind.
        """
        if not self.dir.is_dir():
            return {kind: 0 for kind in KINDS}
        with io_lock(self.dir, shared=False):
            counts = self._merge_locked()
        if self._keys is not None:
            self.open()
        return counts

    def _merge_locked(self) -> dict[str, int]:
        counts = {}
        for kind, fields in KINDS.items():
            shards = self.shard_paths(kind)
            main = self.path(kind)
            if not shards and not main.exists():
                counts[kind] = 0
                continue
            recs = sorted(self.read(kind), key=sort_key)
            text = "".join(_dumps(r, fields) + "\n" for r in recs)
            atomic_write(main, text)
            for p in shards:
                p.unlink()
            counts[kind] = len(recs)
        return counts

    def write_results(self, results: dict) -> Path:
        p = self.dir / RESULTS
        write_json(p, results)
        return p

    def read_results(self) -> dict:
        p = self.dir / RESULTS
        if not p.is_file():
            raise UserError(f"{p} does not exist; run `dlm-bench passk` first")
        return json.loads(p.read_text())


# --------------------------------------------------------------------------- DataFrames

def _frame(rows: list[dict], fields) -> pd.DataFrame:
    import pandas as pd          # not at import: listing run folders and --help stay fast
    return pd.DataFrame(rows, columns=list(fields)) if not rows else pd.DataFrame(rows)


def read_generations(run_dir: str | Path, shards: bool = True) -> pd.DataFrame:
    return _frame(Store(run_dir).read("generations", shards), GEN_FIELDS)


def read_scores(run_dir: str | Path, shards: bool = True) -> pd.DataFrame:
    return _frame(Store(run_dir).read("scores", shards), SCORE_FIELDS)


def run_dirs(root: str | Path) -> list[Path]:
    """Every run directory under `root` (itself included): folders holding a scores file."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"runs directory {str(root)!r} does not exist")
    found = {p.parent for p in root.rglob("scores*.jsonl")}
    return sorted(found)
