"""`dlm-bench compare A B --runs DIR [--k 5] [--task T ...]`: paired Pass@k comparison from stored scores."""
from __future__ import annotations

from dlm_bench.errors import UserError


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
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap / permutations")


def run(args) -> int:
    from dlm_bench import metrics

    if args.k < 1:
        raise UserError(f"--k must be >= 1, got {args.k}")
    if not 0 < args.confidence < 1:
        raise UserError(f"--confidence must be in (0, 1), got {args.confidence}")
    df = stored_samples(args, "scores")
    table = metrics.compare_table(df, args.method_a, args.method_b, args.k, confidence=args.confidence,
                                  alpha=args.alpha, seed=args.seed)
    print(metrics.compare_markdown(table))
    return 0


def stored_samples(args, noun: str):
    """Stored rows of the two methods under --runs, filtered by --task/--temps/--lengths."""
    from dlm_bench.commands.passk import parse_floats, parse_ints
    from dlm_bench.store import read_all_scores

    df = read_all_scores(args.runs)
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
