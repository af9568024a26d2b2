"""Experiment tracking, as TRL's `report_to`: `--report-to none|tensorboard|wandb|trackio` (a comma list).

A run sends every number of its log.jsonl rows (under `train/`, with the row's step), the resolved
config once at the start, and `passk` its Pass@k table at the end, to each tracker named. The files
stay in the run folder where the library allows it: TensorBoard event files in `<run>/tensorboard/`,
wandb's run in `<run>/wandb/` (`WANDB_MODE=offline` needs no network; `wandb sync` uploads it later);
Trackio keeps its local database in $TRACKIO_DIR (default ~/.cache/huggingface/trackio). A resumed run
continues the same tracker run: TensorBoard purges the steps the log rewrites, wandb and Trackio resume
the id kept in `<run>/tracking.json`. Each library is imported only when named; a missing one is a
one-line error naming the extra to install, before any work starts.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import secrets
from pathlib import Path

from dlm_bench.errors import UserError

BACKENDS = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio"}   # name -> package
HELP = ("experiment trackers for the log rows, the config and passk's table: none, or a comma list of "
        "tensorboard, wandb, trackio (TRL's report_to; WANDB_MODE=offline works without network)")
PROJECT = "dlm-bench"    # wandb / Trackio project unless $WANDB_PROJECT / $TRACKIO_PROJECT names one


def parse_report_to(value) -> tuple[str, ...]:
    """'none' | 'all' | 'tensorboard,wandb' | a list -> the trackers; UserError for an unknown name or a
    library that is not installed (checked here, before a model is loaded)."""
    names = value if isinstance(value, (list, tuple)) else str(value or "none").split(",")
    names = [str(n).strip().lower() for n in names if str(n).strip()]
    if names in ([], ["none"]):
        return ()
    if names == ["all"]:
        names = list(BACKENDS)
    bad = [n for n in names if n not in BACKENDS]
    if bad:
        raise UserError(f"report_to: unknown tracker {', '.join(bad)}; choose none or among {', '.join(BACKENDS)}")
    for n in names:
        if importlib.util.find_spec(BACKENDS[n]) is None:
            raise UserError(f"--report-to {n} needs the {BACKENDS[n]} package: pip install 'dlm-bench[{n}]'")
    return tuple(dict.fromkeys(names))


def scalars(row: dict, prefix: str) -> dict[str, float]:
    """Every number of a log row but its step, as `prefix/key`."""
    return {f"{prefix}/{k}": float(v) for k, v in row.items()
            if k != "step" and isinstance(v, (int, float)) and v == v}


class Tracker:
    """The trackers of one run; with none named every call does nothing."""

    def __init__(self, report_to, folder: str | Path, config: dict, resume_step: int = 0):
        self.backends = []
        names = parse_report_to(report_to)
        if not names:
            return
        folder = Path(folder)
        run_id = _run_id(folder)
        openers = {"tensorboard": _TensorBoard, "wandb": _Wandb, "trackio": _Trackio}
        self.backends = [openers[n](folder, run_id, config, resume_step) for n in names]

    def log(self, row: dict, step: int, prefix: str = "train") -> None:
        values = scalars(row, prefix)
        for b in self.backends:
            b.log(values, step)

    def log_table(self, name: str, columns: list[str], rows: list[list]) -> None:
        for b in self.backends:
            b.table(name, columns, rows)

    def close(self) -> None:
        for b in self.backends:
            b.close()
        self.backends = []


def _run_id(folder: Path) -> str:
    """The run folder's tracker id: made once, kept in tracking.json, so a resumed run continues it."""
    path = folder / "tracking.json"
    try:
        return json.loads(path.read_text())["run_id"]
    except (OSError, ValueError, KeyError, TypeError):
        folder.mkdir(parents=True, exist_ok=True)
        run_id = secrets.token_hex(4)
        path.write_text(json.dumps({"run_id": run_id}) + "\n")
        return run_id


def _markdown(columns: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(str(v) for v in r) + " |" for r in rows])


class _TensorBoard:
    def __init__(self, folder: Path, run_id: str, config: dict, resume_step: int):
        from torch.utils.tensorboard import SummaryWriter
        # rows after the resumed step are written again: drop the old ones, as log.jsonl does
        self.writer = SummaryWriter(str(folder / "tensorboard"), purge_step=resume_step + 1 if resume_step else None)
        self.writer.add_text("config", "```\n" + json.dumps(config, indent=1, default=str) + "\n```", resume_step)

    def log(self, values: dict, step: int) -> None:
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)
        self.writer.flush()

    def table(self, name: str, columns: list[str], rows: list[list]) -> None:
        self.writer.add_text(name, _markdown(columns, rows))
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class _RunAPI:
    """wandb and Trackio share one run API: run.log(values, step), a Table type, run.finish()."""
    lib = run = None

    def log(self, values: dict, step: int) -> None:
        self.run.log(values, step=step)

    def table(self, name: str, columns: list[str], rows: list[list]) -> None:
        self.run.log({name: self.lib.Table(columns=columns, data=rows)})

    def close(self) -> None:
        self.run.finish()


class _Wandb(_RunAPI):
    def __init__(self, folder: Path, run_id: str, config: dict, resume_step: int):
        import wandb
        self.lib = wandb
        name = folder.resolve().name
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", PROJECT), name=name, dir=str(folder),
                              id=re.sub(r"[^\w-]", "-", name)[:40] + "-" + run_id, resume="allow", config=config)


class _Trackio(_RunAPI):
    def __init__(self, folder: Path, run_id: str, config: dict, resume_step: int):
        import trackio
        self.lib = trackio
        self.run = trackio.init(project=os.environ.get("TRACKIO_PROJECT", PROJECT),
                                name=f"{folder.resolve().name}-{run_id}", config=config, resume="allow",
                                embed=False)
