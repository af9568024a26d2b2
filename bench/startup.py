"""Start-up time of `dlm-bench --help`, each command's `--help` and `dlm-bench tasks`: this checkout vs
a baseline revision (default `main`), each a fresh interpreter, least CPU seconds (user + system) of N,
measured in one run.

Usage: .venv/bin/python bench/startup.py [--baseline REF] [--repeats 3] [--all-commands]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from baseline_tree import timed, tree  # noqa: E402

RUN = "from dlm_bench.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
SLOW_BEFORE = ["pretrain", "compare", "report", "judge", "runs"]   # --help screens of 2-9 s before issue 27


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", default="main", help="git revision to compare against")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--all-commands", action="store_true", help="every command's --help, not only the slow ones")
    args = ap.parse_args()
    from dlm_bench.cli import COMMANDS
    base = tree(args.baseline)
    commands = [c for c in COMMANDS if c != "lm-eval"] if args.all_commands else SLOW_BEFORE
    cases = [["--help"], ["tasks"]] + [[c, "--help"] for c in commands]
    print(f"{'command':<26} {args.baseline + ' CPU s':>12} {'this CPU s':>10} {'speed-up':>9}")
    for argv in cases:
        before = timed(RUN.format(argv=argv), base, args.repeats)
        after = timed(RUN.format(argv=argv), None, args.repeats)
        label = "dlm-bench " + " ".join(argv)
        print(f"{label:<26} {before:>12.2f} {after:>10.2f} {before / after:>8.1f}x")


if __name__ == "__main__":
    main()
