"""`dlm-bench protocol --check FILE` / `--show FILE`: a protocol YAML (configs/*.yaml) checked on its own,
or printed resolved with every default, without running anything."""
from __future__ import annotations


def add_arguments(p) -> None:
    p.add_argument("file", help="a protocol YAML (configs/demo.yaml, configs/paper.yaml, ...)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="only check it (the default): exit 2 with one line "
                                                          "naming the first bad key")
    mode.add_argument("--show", action="store_true", help="print it resolved with every default")


def run(args) -> int:
    from dlm_bench.protocol import load_protocol, shown
    proto = load_protocol(args.file)
    print(shown(proto) if args.show else f"{args.file}: ok ({len(proto.methods)} methods, task {proto.task})")
    return 0
