"""`dlm-bench judge A B --runs DIR --judge-url URL --judge-model NAME`: TraFL path-diversity judge, A vs B.

Several training seeds per method (DIR/METHOD/seed-K/<run dirs>): A's K-th seed folder is judged
against B's K-th only (a method with one run, such as the base, against every seed of the other),
and a seed-level table treats the seed pairs as the units of replication (dlm_bench.judge.seed_pairs):
per-pair A-minus-B win-rate differences, a t-interval and an exact sign-flip p over the pairs.
Without seed-K folders the table is problem-level and says it covers sampling variance only."""
from __future__ import annotations

import sys

from dlm_bench.errors import UserError
from dlm_bench.stats import N_RESAMPLES


def add_arguments(p) -> None:
    p.add_argument("method_a", metavar="A", help="method label A")
    p.add_argument("method_b", metavar="B", help="method label B")
    p.add_argument("--runs", default="results/passk",
                   help="folder searched for run directories; with DIR/METHOD/seed-K/ folders, A's K-th "
                        "training seed is judged against B's K-th (a single run, e.g. the base, against "
                        "every seed) and a seed-level table treats the seed pairs as replicates")
    p.add_argument("--judge-url", required=True, help="OpenAI-compatible base URL, e.g. http://localhost:8000/v1")
    p.add_argument("--judge-model", required=True, help="model name served at --judge-url")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY",
                   help="environment variable holding the API key (local servers ignore it)")
    p.add_argument("--prompt-file", default=None,
                   help="your own prompt template ([system]/[user] sections; {set_a}, {set_b}, "
                        "{problem}, {n_a}, {n_b}); default: the shipped Appendix G template")
    p.add_argument("--orders", choices=("both", "balanced"), default="both",
                   help="both: judge every problem with A first and with B first (default); "
                        "balanced: once each, A first on half the problems of a cell")
    p.add_argument("--cache", default=None,
                   help="folder caching verdicts (re-runs cost nothing, and need no server: the preflight "
                        "request then waits for the first verdict the cache lacks)")
    p.add_argument("--max-samples", type=int, default=None, help="at most N solutions per set")
    p.add_argument("--only-correct", action="store_true", help="show the judge correct solutions only")
    p.add_argument("--task", action="append", default=None, help="only these tasks (repeatable)")
    p.add_argument("--temps", default=None, help="only these temperatures, comma-separated")
    p.add_argument("--lengths", default=None, help="only these lengths, comma-separated")
    p.add_argument("--data-dir", default=None, help="task data folder, for the problem statements")
    p.add_argument("--no-problems", action="store_true", help="do not show the judge the problem statements")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    p.add_argument("--retries", type=int, default=3,
                   help="further tries per failed or unparseable request (an unparseable answer is asked "
                        "again with the next seed and a nudged temperature, and not again once an answer "
                        "repeats word for word)")
    p.add_argument("--backoff", type=float, default=1.0,
                   help="seconds before the first retry of a failed request, doubling")
    p.add_argument("--retry-nudge", type=float, default=0.2,
                   help="temperature added per retry after an unparseable answer (the judge runs at 0)")
    p.add_argument("--min-success", type=float, default=0.9,
                   help="exit 1 when a smaller share of requests got a verdict")
    p.add_argument("--workers", type=int, default=1, help="concurrent requests")
    p.add_argument("--resamples", type=int, default=N_RESAMPLES, help="bootstrap resamples for the CIs")
    p.add_argument("--save", default=None,
                   help="write the per-request judgments to this CSV: every request, failed ones too, with "
                        "the judge's raw answer and each try's settings and answer or error")
    p.add_argument("--seed", type=int, default=0, help="seed of the balanced order assignment and the bootstrap")


def _problem_statements(tasks, data_dir) -> dict:
    """problem_id -> statement for the tasks that load; a task that does not is left out (stderr)."""
    from dlm_bench.tasks import get_task
    out = {}
    for name in tasks:
        try:
            task = get_task(str(name), data_dir)
            for p in task.load(task.eval_split):
                out[p.id] = p.question
        except Exception as e:  # noqa: BLE001 - the judge still works without statements
            print(f"dlm-bench judge: no problem statements for {name!r} ({e}); the judge sees the "
                  "solutions only", file=sys.stderr)
    return out


def _check(args) -> None:
    if args.max_samples is not None and args.max_samples < 1:
        raise UserError(f"--max-samples must be >= 1, got {args.max_samples}")
    if args.workers < 1:
        raise UserError(f"--workers must be >= 1, got {args.workers}")
    if args.retries < 0 or args.backoff < 0 or args.retry_nudge < 0:
        raise UserError("--retries, --backoff and --retry-nudge must be >= 0")
    if not 0 <= args.min_success <= 1:
        raise UserError(f"--min-success must be in [0, 1], got {args.min_success}")
    if args.resamples < 100:
        raise UserError(f"--resamples must be >= 100, got {args.resamples}")


def run(args) -> int:
    from dlm_bench.stats import seed_level as seeds
    from dlm_bench.judge.client import Judge, JudgeConfig, JudgeUnreachable
    from dlm_bench.judge.pairs import summary

    _check(args)
    judge = Judge(JudgeConfig(model=args.judge_model, base_url=args.judge_url, api_key_env=args.api_key_env,
                              timeout=args.timeout, max_retries=args.retries, backoff=args.backoff,
                              retry_nudge=args.retry_nudge, cache_dir=args.cache, prompt_file=args.prompt_file))
    from dlm_bench.runs.index import read_seeded_scores
    try:
        if not args.cache:   # fail fast, before reading samples; with a cache, a rerun may need no server
            judge.preflight()
        seeded = read_seeded_scores(args.runs)
        judgments = _judge_seeds(args, judge, seeded) if seeded is not None else _judge_pooled(args, judge)
    except JudgeUnreachable as e:
        print(f"dlm-bench judge: {e}", file=sys.stderr)
        return 1
    line, rate = summary(judgments, judge.n_requests)
    print(f"\n{line}; prompt: {judge.template.source}; failed requests count as missing, not as ties.")
    if rate < args.min_success:
        print(f"dlm-bench judge: only {rate:.0%} of requests got a verdict (--min-success "
              f"{args.min_success:g}); the table above is not reliable", file=sys.stderr)
        return 1
    return 0


def _judge_kwargs(args, df) -> dict:
    problems = None if args.no_problems else _problem_statements(sorted(df["task"].unique()), args.data_dir)
    return dict(problems=problems, only_correct=args.only_correct, max_samples=args.max_samples,
                seed=args.seed, workers=args.workers, orders=args.orders, progress=True)


def _save(judgments, args) -> None:
    if judgments.empty:
        raise UserError(f"no problem has samples from both {args.method_a!r} and {args.method_b!r}")
    if args.save:
        try:
            judgments.to_csv(args.save, index=False)
        except OSError as e:
            raise UserError(f"cannot write the judgments: {e}") from None


def _judge_pooled(args, judge):
    """One seed per method: the problem-level table, which covers sampling variance only."""
    from dlm_bench.stats import seed_level as seeds
    from dlm_bench.commands.compare import stored_samples
    from dlm_bench.judge.pairs import judge_methods, win_rates, win_rates_markdown
    df = stored_samples(args, "samples")
    judgments = judge_methods(df, args.method_a, args.method_b, judge, **_judge_kwargs(args, df))
    _save(judgments, args)
    print(win_rates_markdown(win_rates(judgments, n_resamples=args.resamples, seed=args.seed)))
    print(f"\nNote: {seeds.SAMPLING_ONLY} (lay runs out as DIR/METHOD/seed-K/ for seed-level statistics).")
    return judgments


def _judge_seeds(args, judge, seeded):
    """Judged within seed pairs; the seed-level table, then the problem-level one over every
    (seed pair, problem)."""
    from dlm_bench.judge import seed_pairs as S
    from dlm_bench.commands.compare import filtered
    from dlm_bench.judge.pairs import win_rates, win_rates_markdown
    df = filtered(seeded, args, "samples")
    pairs, note = S.pair_seeds(S.method_seeds(df, args.method_a), S.method_seeds(df, args.method_b))
    if note:
        print(f"dlm-bench judge: {note}", file=sys.stderr)
    judgments = S.judge_by_seed(df, args.method_a, args.method_b, judge, pairs, **_judge_kwargs(args, df))
    _save(judgments, args)
    print(S.seed_win_rates_markdown(S.seed_win_rates(judgments)))
    pooled = win_rates(S.pooled_problems(judgments), n_resamples=args.resamples, seed=args.seed)
    print("\n**Problem level, every (seed pair, problem) as one problem** (sampling and judge noise "
          "only, not retraining: read the seed-level table above for claims about the methods)\n")
    print(win_rates_markdown(pooled))
    return judgments
