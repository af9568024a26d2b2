"""Task data loading through `datasets.load_dataset` (issue 27) vs the baseline revision's readers
(json / csv / pandas; default `main`), measured in one run, least CPU seconds (user + system) of N:
1. a fresh interpreter that imports the task and loads a split (the `datasets` import counted), as
   `dlm-bench grade` does;
2. the same after `import torch, pandas`, as in `passk` and `train`, which import both anyway;
3. a second load in the same process (the datasets cache warm).
A task the baseline cannot load (new here) is timed alone.

Usage: .venv/bin/python bench/data_loading.py [--baseline REF] [--repeats 3]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from baseline_tree import timed, tree  # noqa: E402

CASES = [("gsm8k", "test"), ("math500", "train"), ("mbpp", "test"), ("countdown", "train"), ("sudoku", "test"),
         ("aime24", "test"), ("olympiadbench", "test"), ("livecodebench", "test")]
NEW = {"aime24", "olympiadbench", "livecodebench"}   # no task or no data path for it in main
PRELUDES = {"fresh process": "", "after torch+pandas": "import torch, pandas\n"}
FIRST = "from dlm_bench.tasks import get_task\nget_task({name!r}).load({split!r})\n"
SECOND = ("import time\nfrom dlm_bench.tasks import get_task\nt = get_task({name!r})\nt.load({split!r})\n"
          "t0 = time.perf_counter()\nt.load({split!r})\nprint(time.perf_counter() - t0)\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", default="main")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    base = tree(args.baseline)
    for mode, prelude in PRELUDES.items():
        print(f"\n{mode:<22} {args.baseline:>8} {'this':>7} {'ratio':>6}")
        for name, split in CASES:
            code = prelude + FIRST.format(name=name, split=split)
            after = timed(code, None, args.repeats)
            if name not in NEW:
                before = timed(code, base, args.repeats)
                print(f"{name + '/' + split:<22} {before:>7.2f}s {after:>6.2f}s {after / before:>5.2f}x")
            else:
                print(f"{name + '/' + split:<22} {'(new)':>8} {after:>6.2f}s")
    print("\nA second load in the same process (this checkout, the datasets cache warm):")
    for name, split in CASES[:2]:
        out = subprocess.run([sys.executable, "-c", SECOND.format(name=name, split=split)], capture_output=True,
                             text=True, check=True).stdout
        print(f"{name + '/' + split:<22} {float(out.strip().splitlines()[-1]):.3f}s")


if __name__ == "__main__":
    main()
