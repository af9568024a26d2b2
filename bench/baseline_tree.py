"""Run dlm-bench code of another git revision beside this checkout's, for before/after benchmarks.

`tree(ref)` extracts the package at `ref` (git archive) into a temporary folder; `timed(code, tree)`
runs Python code in a fresh interpreter with that folder first on sys.path (this checkout when tree
is None) and returns its wall time. Every measurement is a fresh process, so imports are counted.
"""
from __future__ import annotations

import io
import subprocess
import sys
import tarfile
import tempfile
import time
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
    """Best wall time of `repeats` fresh interpreters running `code` with dlm_bench from `root`."""
    prelude = f"import sys; sys.path.insert(0, {str(root or REPO)!r})\n"
    check = "import dlm_bench, os; assert os.path.dirname(os.path.dirname(dlm_bench.__file__)) == sys.path[0]\n"
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", prelude + check + code], check=True, capture_output=True)
        best = min(best, time.perf_counter() - t0)
    return best
