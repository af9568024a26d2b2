"""`dlm-bench methods [-v]`: every registered method with its flags (and, with -v, its config defaults)."""
from __future__ import annotations

import dataclasses


def add_arguments(parser) -> None:
    parser.add_argument("-v", "--verbose", action="store_true", help="also list each method's config defaults")


def rows() -> list[tuple[str, ...]]:
    from dlm_bench.methods import get_method, method_names
    out = []
    for name in method_names():
        cls = get_method(name)
        out.append((name, "yes" if cls.trains else "no", "yes" if cls.needs_reference else "no",
                    cls.rollout_order, "yes" if cls.needs_trajectory else "no",
                    "yes" if hasattr(cls, "config_for") else "no"))
    return out


def run(args) -> int:
    from dlm_bench.methods import get_method
    table = [("method", "trains", "reference", "rollout_order", "trajectory", "task_recipes")] + rows()
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    for r in table:
        print("  ".join(f"{c:<{w}}" for c, w in zip(r, widths)).rstrip())
    if args.verbose:
        for name, *_ in table[1:]:
            fields = dataclasses.fields(get_method(name).Config)
            print(f"\n{name}:" + ("" if fields else " (no settings)"))
            for f in fields:
                default = f.default if f.default is not dataclasses.MISSING else (
                    f.default_factory() if f.default_factory is not dataclasses.MISSING else "?")
                print(f"  {f.name} = {default!r}")
    return 0
