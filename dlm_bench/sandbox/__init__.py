"""Untrusted (model-written) programs: the entry point. `run(Program)` picks the protocol by mode:
"script" programs are judged by their stdout (launch.py starts and bounds the process), "check" and
"call" programs only serve calls while the tests run in the harness (calls.py, session.py, codec.py,
no_oracle.py). Isolation (bubblewrap, rlimits, seccomp: syscall_filter.py, memory: cgroup.py) is
launch.py's; the in-sandbox runner is runner.py. See docs/sandbox.md.
"""
from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor

from dlm_bench.errors import UserError
from dlm_bench.sandbox import calls, launch
from dlm_bench.sandbox.launch import (BWRAP, ENV_VAR, RLIMITS_ONLY, STATUSES, UNSAFE, Program,  # noqa: F401
                                      RunResult, allow_unisolated, isolation)


def run_with(program: Program, iso: str) -> RunResult:
    """One program under the isolation `iso`, by its mode."""
    if program.mode in ("check", "call"):
        return calls.run(program, iso)
    if program.mode != "script":
        raise ValueError(f"unknown mode {program.mode!r}")
    return launch.run_script(program, iso)


def run(program: Program) -> RunResult:
    """Run one program. A failure of the harness itself becomes a `sandbox_error` result."""
    t0 = time.monotonic()
    try:
        return run_with(program, isolation())
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - one bad run must not take the batch down
        return RunResult("sandbox_error", "", "", None, time.monotonic() - t0, launch.isolation_checked(),
                         detail=f"{type(e).__name__}: {e}"[:300])


def run_many(programs: list[Program], workers: int | None = None) -> list[RunResult]:
    """Run programs in parallel (each is its own process); results in input order, never raises."""
    workers = max(1, workers or os.cpu_count() or 1)
    if len(programs) <= 1 or workers == 1:
        return [run(p) for p in programs]
    with ThreadPoolExecutor(max_workers=min(workers, len(programs))) as pool:
        return list(pool.map(run, programs))


def run_program(source: str, stdin: str = "", timeout: float = 10.0, memory_mb: int = 2048,
                max_output: int = 4 << 20) -> RunResult:
    """Run `source` as a script (`__name__ == "__main__"`) with `stdin`; the caller judges stdout."""
    return run(Program(source, stdin=stdin, timeout=timeout, memory_mb=memory_mb, max_output=max_output))


def run_tests(source: str, tests: str, setup: str = "", expose: tuple[str, ...] = (),
              timeout: float = 10.0, memory_mb: int = 2048) -> RunResult:
    """Run a solution, then trusted `setup` + `tests` (asserts); status "ok" only if every test passed."""
    return run(Program(source, mode="check", tests=tests, setup=setup, expose=tuple(expose),
                       timeout=timeout, memory_mb=memory_mb))
