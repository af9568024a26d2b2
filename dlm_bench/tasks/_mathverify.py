"""math-verify behind a pool of worker processes, shared by the math suites (MATH-500, Minerva). Not a task.

math-verify bounds its work with SIGALRM, which only works in a process's main thread, and some sympy
work (huge integer powers) never yields to the signal at all. So grading runs in a small pool of worker
*processes*: each answer gets math-verify's own timeout inside the worker, and the parent kills and
replaces a worker that overruns a hard deadline. Either way the answer is graded `timeout`; nothing
hangs and nothing crashes.

Workers are plain `python -c` subprocesses talking over a socketpair (not multiprocessing's spawn/fork):
spawn would re-import the caller's `__main__` script, and fork is unsafe once torch has started threads.
"""
from __future__ import annotations

import atexit
import os
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from multiprocessing.connection import Connection, wait


from . import Grade

MAX_WORKERS = 8
WORKER_MEMORY_BYTES = 4 << 30   # a runaway sympy expansion gets MemoryError instead of eating the machine


# ---------------------------------------------------------------------------------------------------
# Process pool
# ---------------------------------------------------------------------------------------------------

def _serve(fd: int) -> None:
    """Worker main loop: receive (fn, args), send fn(*args). Runs in the worker's main thread."""
    try:
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (WORKER_MEMORY_BYTES, WORKER_MEMORY_BYTES))
    except (ImportError, ValueError, OSError):
        pass
    import logging
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # timeouts are reported, not logged
    import math_verify  # noqa: F401  (pay the import once, before the first task)
    conn = Connection(fd)
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        fn, args = msg
        try:
            res = fn(*args)
        except BaseException as e:  # noqa: BLE001 - report, never die on one answer
            res = ("error", f"{type(e).__name__}: {e}"[:300])
        conn.send(res)


class _Worker:
    def __init__(self):
        parent, child = socket.socketpair()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)  # same imports as the parent
        code = f"from dlm_bench.tasks._mathverify import _serve; _serve({child.fileno()})"
        self.proc = subprocess.Popen([sys.executable, "-c", code], pass_fds=[child.fileno()], env=env,
                                     stdin=subprocess.DEVNULL)
        child.close()
        self.conn = Connection(parent.detach())

    def kill(self) -> None:
        try:
            self.proc.kill()
            self.proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            pass
        self.conn.close()


class GraderPool:
    """Run module-level functions in worker processes with a hard per-call deadline.

    `map(fn, arglist, deadline_s)` returns fn(*args) per item, or ("timeout", None) for an item whose
    worker overran the deadline (that worker is killed and replaced), or ("error", msg) if it died.
    """

    def __init__(self, workers: int | None = None):
        self.n = workers or max(1, min(MAX_WORKERS, os.cpu_count() or 1))
        self.workers: list[_Worker] = []
        self.lock = threading.Lock()  # one map at a time: callers may be threads
        self.pid = os.getpid()        # workers belong to this process, not to forked children

    def map(self, fn, arglist: list[tuple], deadline_s: float) -> list:
        with self.lock:
            return self._map(fn, arglist, deadline_s)

    def _map(self, fn, arglist, deadline_s):
        results: list = [None] * len(arglist)
        todo = deque(range(len(arglist)))
        while len(self.workers) < min(self.n, max(1, len(arglist))):
            self.workers.append(_Worker())
        idle = list(self.workers)
        busy: dict[Connection, tuple[_Worker, int, float]] = {}
        while todo or busy:
            while todo and idle:
                w = idle.pop()
                i = todo.popleft()
                try:
                    w.conn.send((fn, arglist[i]))
                except (OSError, ValueError):  # worker already dead: replace it and retry this item
                    w = self._replace(w)
                    w.conn.send((fn, arglist[i]))
                # the clock starts at dispatch; a fresh worker also gets time for its imports
                busy[w.conn] = (w, i, time.monotonic() + deadline_s)
            first_deadline = min(d for _, _, d in busy.values())
            ready = wait(list(busy), timeout=max(0.0, first_deadline - time.monotonic()))
            for conn in ready:
                w, i, _ = busy.pop(conn)
                try:
                    results[i] = conn.recv()
                    idle.append(w)
                except (EOFError, OSError):
                    results[i] = ("error", "grader worker died")
                    idle.append(self._replace(w))
            now = time.monotonic()
            for conn in [c for c, (_, _, d) in busy.items() if d <= now]:
                w, i, _ = busy.pop(conn)
                results[i] = ("timeout", None)
                idle.append(self._replace(w))
        return results

    def _replace(self, w: _Worker) -> _Worker:
        w.kill()
        new = _Worker()
        self.workers[self.workers.index(w)] = new
        return new

    def close(self) -> None:
        if os.getpid() != self.pid:
            return
        for w in self.workers:
            try:
                w.conn.send(None)
            except (OSError, ValueError):
                pass
            w.kill()
        self.workers = []


_POOL: GraderPool | None = None
_POOL_PID = 0
_POOL_LOCK = threading.Lock()


def grader_pool() -> GraderPool:
    """The shared pool (started on first use, kept for the life of the process; a forked child, e.g.
    a DataLoader worker, starts its own instead of talking to its parent's workers)."""
    global _POOL, _POOL_PID
    with _POOL_LOCK:
        if _POOL is None or _POOL_PID != os.getpid():
            n = int(os.environ.get("DLM_BENCH_GRADE_WORKERS", "0")) or None
            _POOL, _POOL_PID = GraderPool(n), os.getpid()
            atexit.register(_POOL.close)
        return _POOL


# ---------------------------------------------------------------------------------------------------
# math-verify, run inside a worker
# ---------------------------------------------------------------------------------------------------

def verify_answer(gold_latex: str, completion: str, timeout_s: int) -> tuple[str, str | None]:
    """(reason, extracted) for one completion against a LaTeX gold; called inside a worker process.

    Gold is parsed as LaTeX only; the prediction boxed-first (boxed_match_priority=0), then any other
    LaTeX or plain expression math-verify finds (it scans right to left). Each gold/prediction pair is
    verified separately so a timeout in one pair is reported as `timeout`, not folded into `wrong`.
    """
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify
    from math_verify.errors import TimeoutException
    try:
        gold = parse(gold_latex, extraction_config=[LatexExtractionConfig()],
                     parsing_timeout=timeout_s, raise_on_error=True)
    except TimeoutException:
        return "timeout", None
    except Exception:  # noqa: BLE001
        gold = []
    if not gold:
        return "parse_error", None  # the gold itself is unreadable: a data problem, never the model's
    try:
        pred = parse(completion, extraction_config=[LatexExtractionConfig(boxed_match_priority=0),
                                                    ExprExtractionConfig()],
                     parsing_timeout=timeout_s, raise_on_error=True)
    except TimeoutException:
        return "timeout", None
    except Exception:  # noqa: BLE001
        return "parse_error", None
    if not pred:
        return "no_answer", None
    extracted = pred[-1] if isinstance(pred[-1], str) else str(pred[0])
    timed_out = False
    for g in gold:
        for p in pred:
            try:
                if verify(g, p, timeout_seconds=timeout_s, raise_on_error=True):
                    return "correct", extracted
            except TimeoutException:
                timed_out = True
            except Exception:  # noqa: BLE001 - an incomparable pair (e.g. set vs number) is just unequal
                pass
    return ("timeout" if timed_out else "wrong"), extracted


def grade_in_pool(fn, items: list[tuple], timeout_s: int, deadline_s: float, retry_factor: int = 3) -> list:
    """fn(*item, timeout_s) for every item in the worker pool; items that time out are retried once with
    `retry_factor` times the limits. math-verify's alarm counts wall-clock time, so on a loaded machine
    a normal answer can overrun; only answers that are slow twice end up graded `timeout`."""
    pool = grader_pool()
    res = pool.map(fn, [(*it, timeout_s) for it in items], deadline_s)
    again = [i for i, r in enumerate(res) if r[0] == "timeout"]
    if again and retry_factor > 1:
        redo = pool.map(fn, [(*items[i], timeout_s * retry_factor) for i in again], deadline_s * retry_factor)
        for i, r in zip(again, redo):
            res[i] = r
    return res


def result_to_grade(res) -> Grade:
    """Pool result → Grade; worker errors and overruns become reasons, never exceptions."""
    reason, extracted = res
    if reason == "error":
        return Grade(False, None, f"grader_error: {extracted}")
    return Grade(reason == "correct", extracted, reason)
