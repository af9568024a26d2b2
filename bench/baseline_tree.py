"""Run dlm-bench code of another git revision beside this checkout's, for before/after benchmarks.

`tree(ref)` extracts the package at `ref` (git archive) into a temporary folder; `timed(code, tree)`
runs Python code in a fresh interpreter with that folder first on sys.path (this checkout when tree
is None) and returns its CPU time (user + system, from getrusage): on a shared machine the wall time
swings with other jobs' load, the CPU a process needs much less. Every measurement is a fresh process,
so imports are counted.
"""
from __future__ import annotations

import io
import resource
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def tree(ref: str) -> Path:
    """The repository at `ref`, extracted into a temporary folder (kept until the process exits)."""
    blob = subprocess.run(["git", "-C", str(REPO), "archive", ref, "dlm_bench"], capture_output=True, check=True)
    out = Path(tempfile.mkdtemp(prefix="dlm-bench-baseline-"))
    with tarfile.open(fileobj=io.BytesIO(blob.stdout)) as tar:
        tar.extractall(out, filter="data")
    return out


def timed(code: str, root: Path | None = None, repeats: int = 3) -> float:
    """Least CPU time of `repeats` fresh interpreters running `code` with dlm_bench from `root`."""
    prelude = f"import sys; sys.path.insert(0, {str(root or REPO)!r})\n"
    check = "import dlm_bench, os; assert os.path.dirname(os.path.dirname(dlm_bench.__file__)) == sys.path[0]\n"
    best = float("inf")
    for _ in range(repeats):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run([sys.executable, "-c", prelude + check + code], check=True, capture_output=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        best = min(best, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return best
