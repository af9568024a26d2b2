"""`dlm-bench lm-eval --model dlm --model_args pretrained=DIR[,gen_length=256,...] --tasks T [...]`.

Registers the `dlm` model with lm-evaluation-harness, then hands every flag to lm-eval's own CLI
unchanged (`--output_path`, `--log_samples`, `--limit`, `--include_path`, `--gen_kwargs`, ...), so
results land where lm-eval puts them, in its usual JSON. Model arguments: see dlm_bench.lm_eval_adapter.
"""
from __future__ import annotations

PASSTHROUGH = True   # cli.py gives this command every argument it does not know, in order


def add_arguments(p) -> None:
    p.epilog = "Every flag after `lm-eval` is lm-eval's own; `lm_eval run --help` lists them."


def run(args) -> int:
    from dlm_bench.lm_eval_adapter import main
    try:
        main(args.passthrough)
    except SystemExit as e:     # lm-eval's CLI exits on its own errors and on --help
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    return 0
