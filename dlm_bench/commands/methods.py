"""`dlm-bench methods [-v] [NAME ...]`: every registered method with its flags; with -v, every setting
with its default, what it does and where the default comes from."""
from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("names", nargs="*", help="only these methods (default: all)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="also list each method's settings: default, help and source")


def rows() -> list[tuple[str, ...]]:
    from dlm_bench.methods import get_method, method_names
    out = []
    for name in method_names():
        cls = get_method(name)
        out.append((name, "yes" if cls.trains else "no", "yes" if cls.needs_reference else "no",
                    cls.rollout_order, "yes" if cls.needs_trajectory else "no",
                    "yes" if cls.has_task_recipes() else "no"))
    return out


def settings_table(name: str) -> list[str]:
    """Lines `setting = default  help  [source]` of one method, blocks expanded (optim.lr, ...)."""
    from dlm_bench.config import aliases, describe
    from dlm_bench.methods import get_method
    cls = get_method(name).Config
    named: dict[str, list[str]] = {}
    for alias, (path, factor) in aliases(cls).items():
        named.setdefault(path, []).append(alias if factor == 1 else f"{alias} = this / {factor}")
    table = []
    for path, default, help_, source in describe(cls):
        alias = f" (alias {', '.join(named[path])})" if path in named else ""
        table.append((f"{path} = {default!r}{alias}", help_ + (f"  [source: {source}]" if source else "")))
    width = max((len(a) for a, _ in table), default=0)
    return [f"  {a:<{width}}  {b}".rstrip() for a, b in table]


def run(args) -> int:
    from dlm_bench.errors import UserError
    from dlm_bench.methods import method_names
    names = args.names or method_names()
    unknown = [n for n in names if n not in method_names()]
    if unknown:
        raise UserError(f"unknown method(s) {', '.join(unknown)}; registered: {', '.join(method_names())}")
    table = [("method", "trains", "reference", "rollout_order", "trajectory", "task_recipes")]
    table += [r for r in rows() if r[0] in names]
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    for r in table:
        print("  ".join(f"{c:<{w}}" for c, w in zip(r, widths)).rstrip())
    if args.verbose:
        for name in names:
            lines = settings_table(name)
            print(f"\n{name}:" + ("" if lines else " (no settings)"))
            print("\n".join(lines))
    return 0
