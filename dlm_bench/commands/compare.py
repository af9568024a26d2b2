"""`dlm-bench compare A B --runs DIR [--k 5] [--task T ...] [--csv F] [--json F]`: paired Pass@k comparison.

Several training seeds per method: lay the runs out as DIR/METHOD/seed-K/<run dirs>; then the
comparison is at the seed level (dlm_bench.stats.seed_level). Without seed-K folders it is problem-level and
says that its interval covers sampling variance only."""
from __future__ import annotations

import json
import math

from dlm_bench.errors import UserError
from dlm_bench.stats import N_RESAMPLES


def add_arguments(p) -> None:
    p.add_argument("method_a", metavar="A", help="method label A")
    p.add_argument("method_b", metavar="B", help="method label B")
    p.add_argument("--runs", default="results/passk", help="folder searched for run directories")
    p.add_argument("--k", type=int, default=5, help="primary k")
    p.add_argument("--task", action="append", default=None, help="only these tasks (repeatable)")
    p.add_argument("--temps", default=None, help="only these temperatures, comma-separated")
    p.add_argument("--lengths", default=None, help="only these lengths, comma-separated")
    p.add_argument("--confidence", type=float, default=0.95)
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--resamples", type=int, default=N_RESAMPLES,
                   help=f"bootstrap resamples for the CIs (default {N_RESAMPLES}, as report and judge)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap / permutations")
    p.add_argument("--csv", default=None, help="also write the table, unrounded, to this CSV file")
    p.add_argument("--json", default=None, help="also write the table and its settings to this JSON file")


def _write_json(table, path: str) -> None:
    def clean(v):  # NaN is not JSON: null
        return None if isinstance(v, float) and not math.isfinite(v) else v
    rows = [{k: clean(v) for k, v in r.items()} for r in table.to_dict("records")]
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"settings": table.attrs, "rows": rows}, f, indent=1, default=str)


def run(args) -> int:
    from dlm_bench.stats import metrics

    if args.k < 1:
        raise UserError(f"--k must be >= 1, got {args.k}")
    if not 0 < args.confidence < 1:
        raise UserError(f"--confidence must be in (0, 1), got {args.confidence}")
    if args.resamples < 100:
        raise UserError(f"--resamples must be >= 100, got {args.resamples}")
    from dlm_bench.stats import seed_level as seeds
    from dlm_bench.runs.index import read_seeded_scores
    seeded = read_seeded_scores(args.runs)
    if seeded is not None:
        table = seeds.seed_table(filtered(seeded, args, "scores"), args.method_a, args.method_b,
                                 args.k, confidence=args.confidence, seed=args.seed)
        print(seeds.seed_markdown(table))
        return _write(table, args)
    df = stored_samples(args, "scores")
    table = metrics.compare_table(df, args.method_a, args.method_b, args.k, confidence=args.confidence,
                                  alpha=args.alpha, n_resamples=args.resamples, seed=args.seed)
    table.attrs["n_resamples"] = args.resamples
    print(metrics.compare_markdown(table))
    print(f"\nNote: {seeds.SAMPLING_ONLY} (lay runs out as DIR/METHOD/seed-K/ for seed-level statistics).")
    return _write(table, args)


def _write(table, args) -> int:
    try:
        if args.csv:
            table.to_csv(args.csv, index=False)
        if args.json:
            _write_json(table, args.json)
    except OSError as e:
        raise UserError(f"cannot write the comparison: {e}") from None
    return 0


def stored_samples(args, noun: str):
    """Stored rows of the two methods under --runs, filtered by --task/--temps/--lengths."""
    from dlm_bench.runs.index import read_all_scores
    return filtered(read_all_scores(args.runs), args, noun)


def filtered(df, args, noun: str):
    from dlm_bench.commands.passk import parse_floats, parse_ints
    df = df[df["method"].isin([args.method_a, args.method_b])]
    if args.task:
        df = df[df["task"].isin(args.task)]
    if args.temps:
        df = df[df["temperature"].isin(parse_floats(args.temps, "--temps"))]
    if args.lengths:
        df = df[df["gen_length"].isin(parse_ints(args.lengths, "--lengths"))]
    if df.empty:
        raise UserError(f"no stored {noun} for {args.method_a!r} or {args.method_b!r} under {args.runs!r} "
                        "with these filters")
    return df
