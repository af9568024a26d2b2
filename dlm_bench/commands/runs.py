"""`dlm-bench runs list|prune|remove`: see and clean up Pass@k run folders.

`list` shows every run folder under --runs: its method label(s), task, model (name@hash), cells,
record count, whether results.json calls it complete, and a status:
- `current`: its model still exists as evaluated and is the newest model under its label;
- `superseded`: a newer model was evaluated under the same label and task (and training seed) elsewhere;
- `model missing` / `model changed`: the model folder is gone, or now holds other weights (retrained);
- `unknown model`: no configs.jsonl or results.json says which model made the records (never pruned).
`prune` removes the superseded, missing and changed ones; `remove FOLDER...` removes the named ones.
Both only print what they would remove unless --yes is given, and refuse (exit 2) while a writer
holds any folder they would remove. Folders are removed whole; records are never rewritten.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from dlm_bench.errors import UserError

CURRENT, SUPERSEDED, MISSING, CHANGED, UNKNOWN = "current", "superseded", "model missing", "model changed", \
    "unknown model"
STALE = (SUPERSEDED, MISSING, CHANGED)


def add_arguments(p) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    ls = sub.add_parser("list", help="run folders with label, model, cells, records, completeness, status")
    pr = sub.add_parser("prune", help="remove superseded run folders and those whose model is gone or changed")
    rm = sub.add_parser("remove", help="remove the named run folders")
    rm.add_argument("folders", nargs="+", metavar="FOLDER", help="run folders (holding configs.jsonl or scores)")
    for sp in (ls, pr):
        sp.add_argument("--runs", default="results/passk", help="folder searched for run folders "
                                                                 "(default: results/passk)")
    for sp in (pr, rm):
        sp.add_argument("--yes", action="store_true", help="really remove (without it: only say what would go)")


@dataclass
class Run:
    path: Path
    labels: list[str]
    task: str
    models: dict[str, dict]          # model hash -> {"name", "time", "path"}
    cells: int
    records: int
    complete: str
    status: str = CURRENT
    why: str = ""
    group: tuple = field(default=())


def _lines(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


def _read(d: Path) -> Run:
    from dlm_bench.runs.index import read_index
    index = read_index(d)
    results = json.loads((d / "results.json").read_text()) if (d / "results.json").is_file() else None
    models: dict[str, dict] = {}
    for e in index.values():
        m = models.setdefault(e["model"]["hash"], {"name": e["model"].get("name"), "time": e["time"],
                                                   "path": e.get("model_path")})
        m["time"] = max(m["time"], e["time"])
    labels = sorted({e["method"] for e in index.values()})
    tasks = {e["config"].get("task") for e in index.values()}
    cells = len(index)
    if results is not None:
        labels = labels or [results.get("method")]
        tasks = tasks or {results.get("task")}
        cells = cells or len(results.get("cells", []))
        path = results.get("config", {}).get("model")
        for c in results.get("cells", []) if not models else []:      # a folder from before configs.jsonl
            mid = c["config"]["model"]
            models.setdefault(mid["hash"], {"name": mid.get("name"), "time": d.stat().st_mtime, "path": path})
        for m in models.values():
            m["path"] = m["path"] or path       # may be relative to wherever that sweep ran
    records = sum(_lines(p) for p in sorted(d.glob("scores*.jsonl")))
    complete = "no results.json" if results is None else ("yes" if results.get("complete") else "partial")
    return Run(d, labels or ["?"], ",".join(sorted(t for t in tasks if t)) or "?", models, cells, records, complete)


def _seed_part(path: Path, root: Path) -> str:
    from dlm_bench.stats.seed_level import SEED_DIR
    return next((p for p in path.relative_to(root).parts if SEED_DIR.match(p)), "")


def _model_status(run: Run) -> None:
    from dlm_bench.evaluate import model_fingerprint
    if not run.models:
        run.status, run.why = UNKNOWN, "no configs.jsonl or results.json names the model"
        return
    newest_hash = max(run.models, key=lambda h: run.models[h]["time"])
    m = run.models[newest_hash]
    if not m["path"]:
        run.status, run.why = UNKNOWN, "the model's path was not recorded"
    elif not Path(m["path"]).is_dir() and not Path(m["path"]).is_absolute():
        run.status, run.why = UNKNOWN, f"model recorded as the relative path {m['path']!r}, not found from here"
    elif not Path(m["path"]).is_dir():
        run.status, run.why = MISSING, m["path"]
    else:
        try:
            now = model_fingerprint(m["path"])["hash"]
        except UserError:
            now = None
        if now != newest_hash:
            run.status, run.why = CHANGED, f"{m['path']} now holds other weights"


def survey(root: str | Path) -> list[Run]:
    """Every run folder under `root` with its status (see the module docstring)."""
    from dlm_bench.runs.locks import holder
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"runs directory {str(root)!r} does not exist")
    dirs = sorted({p.parent for pat in ("scores*.jsonl", "generations*.jsonl", "configs.jsonl")
                   for p in root.rglob(pat)})
    runs = [_read(d) for d in dirs]
    newest: dict[tuple, tuple[float, str, Path]] = {}   # (label, task, seed) -> (time, model, folder)
    for r in runs:
        _model_status(r)
        seed = _seed_part(r.path, root)
        r.group = tuple((label, r.task, seed) for label in r.labels)
        if r.status != CURRENT:          # only a model that still exists can supersede another
            continue
        for key in r.group:
            for h, m in r.models.items():
                if key not in newest or m["time"] > newest[key][0]:
                    newest[key] = (m["time"], h, r.path)
    for r in runs:
        if r.status != CURRENT or not r.models:
            continue
        later = [newest[g] for g in r.group if g in newest and newest[g][1] not in r.models]
        if len(later) == len(r.group):        # every label it holds has a newer model elsewhere
            t, h, where = later[0]
            r.status, r.why = SUPERSEDED, f"newer model @{h[:8]} in {where}"
    for r in runs:
        pid = holder(r.path)
        if pid:
            r.why = f"{r.why}; in use by {pid}".lstrip("; ")
    return runs


def _model_text(r: Run) -> str:
    if not r.models:
        return "?"
    text = ", ".join(f"{m['name']}@{h[:8]}" for h, m in sorted(r.models.items(), key=lambda kv: kv[1]["time"]))
    return text + (f" (mixed: {len(r.models)} models)" if len(r.models) > 1 else "")


def _table(runs: list[Run], root: Path | None) -> str:
    head = ("folder", "label", "task", "model", "cells", "records", "complete", "status")
    rows = [head] + [(str(r.path.relative_to(root)) if root else str(r.path), ",".join(r.labels), r.task,
                      _model_text(r), str(r.cells), str(r.records), r.complete,
                      r.status + (f" ({r.why})" if r.why else "")) for r in runs]
    widths = [max(len(row[i]) for row in rows) for i in range(len(head) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1] for row in rows)


def _remove(runs: list[Run], yes: bool) -> int:
    from dlm_bench.runs.locks import folder_lock, holder
    if not runs:
        print("nothing to remove")
        return 0
    for r in runs:                                     # refuse before touching anything
        pid = holder(r.path)
        if pid:
            raise UserError(f"run folder {str(r.path)!r} is in use by {pid}; nothing removed "
                            "(wait for its writer to finish)")
    for r in runs:
        print(f"{'removing' if yes else 'would remove'} {r.path}  [{r.status}{': ' + r.why if r.why else ''}; "
              f"{r.records} records]")
        if yes and r.path.is_dir():            # (a folder inside one removed before is gone already)
            try:
                with folder_lock(r.path):              # no writer can start while it goes
                    shutil.rmtree(r.path)
            except UserError:
                raise UserError(f"run folder {str(r.path)!r} was taken by a writer just now; it and the "
                                "folders after it were kept") from None
    if not yes:
        print(f"dry run: {len(runs)} folder(s) would be removed; pass --yes to remove them")
    return 0


def run(args) -> int:
    if args.action == "list":
        runs = survey(args.runs)
        print(_table(runs, Path(args.runs)) if runs else f"no run folders under {args.runs!r}")
        return 0
    if args.action == "prune":
        return _remove([r for r in survey(args.runs) if r.status in STALE], args.yes)
    chosen = []
    for f in args.folders:
        d = Path(f)
        if not d.is_dir() or not any(any(d.glob(p)) for p in ("scores*.jsonl", "generations*.jsonl", "configs.jsonl")):
            raise UserError(f"{f!r} is not a run folder (no configs.jsonl, scores or generations in it)")
        r = _read(d)
        _model_status(r)
        chosen.append(r)
    return _remove(chosen, args.yes)
