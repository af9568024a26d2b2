"""The one command line. Every sub-command is a thin call into a module; bad input -> one line, exit 2."""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from dlm_bench import library_warnings
from dlm_bench.checks import model_dir
from dlm_bench.environment import DEFAULT_THREADS
from dlm_bench.errors import UserError

# name -> (module, help). Each module defines `add_arguments(parser)` and `run(args) -> int | None`.
COMMANDS = {
    "info": ("dlm_bench.commands.info", "show a model's architecture, parameter count and mask id"),
    "sample": ("dlm_bench.commands.sample", "sample completions for prompts (JSONL in, JSONL out)"),
    "pretrain": ("dlm_bench.commands.pretrain", "masked-diffusion pre-training / SFT on a task's answers"),
    "merge": ("dlm_bench.commands.merge", "merge a LoRA adapter folder into its base model (a plain model dir)"),
    "tasks": ("dlm_bench.commands.tasks", "list benchmark tasks with their splits and sizes"),
    "grade": ("dlm_bench.commands.grade", "grade a JSONL of completions with a task's grader"),
    "passk": ("dlm_bench.commands.passk",
              "Pass@k sweep: n samples per problem over temperatures x lengths, stored and resumable"),
    "compare": ("dlm_bench.commands.compare", "paired Pass@k comparison of two methods from stored scores"),
    "train": ("dlm_bench.commands.train", "post-train a model with an RL method (torchrun for several GPUs)"),
    "methods": ("dlm_bench.commands.methods", "list training methods and their flags"),
    "report": ("dlm_bench.commands.report",
               "figures (Pass@k vs k, gap to base, Pass@5 per task x length, transfer) + report.md from stored scores"),
    "demo": ("dlm_bench.commands.demo", "the whole protocol on the CPU testbed: base, post-training, sweeps, report"),
    "protocol": ("dlm_bench.commands.protocol", "check a protocol YAML (--check) or print it resolved (--show)"),
    "runs": ("dlm_bench.commands.runs",
             "list Pass@k run folders (label, model, records, completeness) and prune stale ones"),
    "judge": ("dlm_bench.commands.judge",
              "LLM path-diversity judge of two methods' samples (win/tie/loss; by training-seed pair "
              "with seed-K folders)"),
    "memory": ("dlm_bench.commands.memory",
               "will it fit? peak memory per stage of training or evaluation at full size, measured on the "
               "CPU under fake tensors (no GPU, nothing allocated)"),
    "lm-eval": ("dlm_bench.commands.lm_eval",
                "lm-evaluation-harness with the `dlm` model registered; every flag goes to lm-eval"),
}


def _states_default(a: argparse.Action) -> bool:
    """A default worth printing: a value (None and off-switches say nothing), on an option."""
    return bool(a.option_strings) and not (a.default is None or a.default is False or a.default is argparse.SUPPRESS)


class _Formatter(argparse.HelpFormatter):
    """`--help` states every default."""

    def _get_help_string(self, action):
        text = action.help or ""
        return f"{text} (default: %(default)s)".lstrip() if _states_default(action) and "%(default)" not in text \
            else text


def _show_defaults(sp: argparse.ArgumentParser) -> None:
    for a in sp._actions:            # argparse prints nothing, not even the default, for an option without help
        if a.help is None and _states_default(a):
            a.help = "(default: %(default)s)"


def _parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """Only the chosen sub-command's module is imported (some pull in torch, which takes seconds)."""
    p = argparse.ArgumentParser(prog="dlm-bench", description=__doc__.split("\n")[0] if __doc__ else None)
    p.add_argument("--version", action="version", version=_version())
    p.add_argument("--deterministic", action="store_true",
                   help="deterministic mode for any command: fixed threads (--threads), deterministic "
                        "algorithms, cuDNN/cuBLAS settings; bitwise-repeatable on the same machine type")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help=f"intra-op CPU threads (with --deterministic: default {DEFAULT_THREADS})")
    p.add_argument("-v", "--verbose", dest="library_warnings", action="store_true",
                   help="show library warnings a user cannot act on (transformers deprecation notices, ...), "
                        "hidden by default")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    argv = sys.argv[1:] if argv is None else argv
    chosen = _command_name(argv)
    for name, (module, help_) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_, description=help_, formatter_class=_Formatter)
        sp.set_defaults(_module=module)
        if name == chosen:
            _add_arguments(module, sp)
            _show_defaults(sp)
    return p


def _command_name(argv: list[str]) -> str | None:
    """The first word that is neither a global flag nor a global flag's value."""
    skip = False
    for a in argv:
        if skip:
            skip = False
        elif a == "--threads":
            skip = True
        elif not a.startswith("-"):
            return a
    return None


def _apply_numerics(args) -> None:
    """Global --deterministic / --threads, before the command loads a model or starts CUDA."""
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads must be a positive integer, got {args.threads}")
    if args.deterministic:
        from dlm_bench.environment import set_deterministic
        set_deterministic(args.threads or DEFAULT_THREADS)
    elif args.threads is not None:
        import torch
        torch.set_num_threads(args.threads)


def _version() -> str:
    from dlm_bench import __version__
    return f"dlm-bench {__version__}"


def _add_arguments(module: str, sp: argparse.ArgumentParser) -> None:
    try:
        importlib.import_module(module).add_arguments(sp)
    except ModuleNotFoundError as e:
        if e.name != module:
            raise
        sp.set_defaults(_missing=True)


def main(argv: list[str] | None = None) -> int:
    parser = _parser(argv)
    args, rest = parser.parse_known_args(argv)
    if not args.library_warnings:
        library_warnings.hide()
    if not getattr(args, "command", None) and not rest:
        parser.print_help()
        return 0
    if getattr(args, "_missing", False):
        print(f"dlm-bench {args.command}: not built yet", file=sys.stderr)
        return 2
    module = importlib.import_module(args._module) if getattr(args, "command", None) else None
    if getattr(module, "PASSTHROUGH", False):
        args.passthrough = rest      # a wrapper of another CLI: the flags we do not know are its own
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        _apply_numerics(args)
        if getattr(args, "model", None):
            args.model = model_dir(args.model)
        rc = module.run(args)
    except UserError as e:
        print(f"dlm-bench {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dlm-bench {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:              # `dlm-bench runs list | head`: the reader left, not an error of ours
        sys.stdout = open(os.devnull, "w")
        return 0
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
