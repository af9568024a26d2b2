"""`dlm-bench demo`: the whole protocol on the CPU testbed (see configs/demo.yaml)."""
import sys

from dlm_bench.protocol import ExpectationFailed, run_demo


def add_arguments(p):
    p.add_argument("--config", default="configs/demo.yaml")
    p.add_argument("--only", choices=["base"], help="only (re-)create the base checkpoint")
    p.add_argument("--methods", help="comma-separated methods, or 'all' (default: the config's list)")
    p.add_argument("--stages", default="train,eval,report",
                   help="comma-separated subset of train,eval,report")


def run(args):
    try:
        run_demo(args.config, only=args.only, methods=args.methods, stages=tuple(args.stages.split(",")))
    except ExpectationFailed as e:
        print(f"dlm-bench demo: {e}", file=sys.stderr)
        return 1
    return 0
