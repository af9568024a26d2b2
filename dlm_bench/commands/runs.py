"""`dlm-bench runs list|prune|remove`: see and clean up Pass@k run folders.

`list` shows every run folder under --runs: its method label(s), task, model (name@hash), cells,
record count, whether results.json calls it complete, and a status:
- `current`: its model still exists as evaluated and is the newest model under its label;
- `superseded`: a newer model is current under the same label and task (and training seed) elsewhere
  (`dlm_bench.runs.index.current`, the rule `compare` and `report` use: the newest complete sweep, so a
  newer sweep still incomplete supersedes nothing unless `prune --include-incomplete-newer`);
- `incomplete, newer`: a sweep of a newer model that has not completed; the complete one stays current;
- `model missing` / `model changed`: the model folder is gone, or now holds other weights (retrained);
- `unknown model`: no configs.jsonl or results.json says which model made the records (never pruned).
`prune` removes the superseded, missing and changed ones; `remove FOLDER...` removes the named ones.
Both only print what they would remove unless --yes is given, and refuse (exit 2) while a writer
holds any folder they would remove. Folders are removed whole; records are never rewritten.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from dlm_bench.errors import UserError
from dlm_bench.runs.index import current, evaluations, folder_cells
from dlm_bench.runs.locks import folder_lock, holder

CURRENT, SUPERSEDED, MISSING, CHANGED, UNKNOWN = "current", "superseded", "model missing", "model changed", \
    "unknown model"
INCOMPLETE_NEWER = "incomplete, newer"
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
    pr.add_argument("--include-incomplete-newer", action="store_true",
                    help="let a newer model's incomplete sweep supersede a complete one (default: a complete "
                         "run is never pruned in favour of an incomplete one)")
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


def _lines(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


def _read(d: Path) -> Run:
    cells = folder_cells(d)
    results = json.loads((d / "results.json").read_text()) if (d / "results.json").is_file() else None
    models: dict[str, dict] = {}
    for e in cells.values():
        m = models.setdefault(e["model"], {"name": e["name"], "time": e["time"], "path": e["path"]})
        m["time"] = max(m["time"], e["time"])
    path = (results or {}).get("config", {}).get("model")
    for m in models.values():
        m["path"] = m["path"] or path       # may be relative to wherever that sweep ran
    labels = sorted({e["label"] for e in cells.values() if e["label"]})
    tasks = {e["task"] for e in cells.values()}
    records = sum(_lines(p) for p in sorted(d.glob("scores*.jsonl")))
    complete = "no results.json" if results is None else ("yes" if results.get("complete") else "partial")
    return Run(d, labels or ["?"], ",".join(sorted(t for t in tasks if t)) or "?", models, len(cells), records,
               complete)


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


def _supersede(run: Run, mine: list, cur: dict, stale: set) -> None:
    """SUPERSEDED when, for every (label, task, seed) the run holds, a newer model is current (`current`,
    the rule compare and report use) and that model's run is not itself stale."""
    newer = [cur[e.key] for e in mine if cur[e.key].model != e.model and cur[e.key].time > e.time]
    if mine and len(newer) == len(mine) and not any(c.folder in stale for c in newer):
        run.status, run.why = SUPERSEDED, f"newer model {newer[0].text} in {newer[0].folder}"
    elif any(cur[e.key].model != e.model and cur[e.key].time < e.time for e in mine):
        c = next(cur[e.key] for e in mine if cur[e.key].time < e.time)
        run.status, run.why = INCOMPLETE_NEWER, (f"the complete run of {c.text} in {c.folder} stays current "
                                                 "until this one completes")


def survey(root: str | Path, include_incomplete_newer: bool = False) -> list[Run]:
    """Every run folder under `root` with its status (see the module docstring)."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"runs directory {str(root)!r} does not exist")
    dirs = sorted({p.parent for pat in ("scores*.jsonl", "generations*.jsonl", "configs.jsonl")
                   for p in root.rglob(pat)})
    runs = [_read(d) for d in dirs]
    for r in runs:
        _model_status(r)
    evals = evaluations(dirs, root)
    cur = current(evals, include_incomplete_newer)
    stale = {r.path for r in runs if r.status in (MISSING, CHANGED)}
    for r in runs:
        if r.status == CURRENT:
            _supersede(r, [e for e in evals if e.folder == r.path], cur, stale)
    if not include_incomplete_newer:
        newest = current(evals, include_incomplete_newer=True)
        for r in runs:
            mine = [e for e in evals if e.folder == r.path]
            if r.status == CURRENT and mine and all(newest[e.key].model != e.model for e in mine):
                c = newest[mine[0].key]
                r.why = f"kept: {c.text} in {c.folder} is newer but incomplete (--include-incomplete-newer)"
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
        runs = survey(args.runs, args.include_incomplete_newer)
        for r in runs:
            if r.status == CURRENT and r.why.startswith("kept:"):
                print(f"keeping {r.path}  [complete; {r.why.removeprefix('kept: ')}]")
        return _remove([r for r in runs if r.status in STALE], args.yes)
    chosen = []
    for f in args.folders:
        d = Path(f)
        if not d.is_dir() or not any(any(d.glob(p)) for p in ("scores*.jsonl", "generations*.jsonl", "configs.jsonl")):
            raise UserError(f"{f!r} is not a run folder (no configs.jsonl, scores or generations in it)")
        r = _read(d)
        _model_status(r)
        chosen.append(r)
    return _remove(chosen, args.yes)
