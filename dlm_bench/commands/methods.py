"""`dlm-bench methods [-v] [NAME ...]`: every registered method with its flags, grouped by family
(`dlm_bench.methods.profile`); with -v, every setting with its default, what it does and where the default
comes from; `--markdown` prints docs/methods.md with its comparison table."""
from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("names", nargs="*", help="only these methods (default: all)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="also list each method's settings: default, help and source")
    parser.add_argument("--markdown", action="store_true",
                        help="print docs/methods.md: every default of every method with its source")


def family_order(names: list[str]) -> list[str]:
    """`names` grouped by family (in `profile.FAMILIES` order), alphabetical inside a family."""
    from dlm_bench.methods import get_method
    from dlm_bench.methods.profile import FAMILIES

    def key(n):
        p = get_method(n).profile
        return (FAMILIES.index(p.family) if p is not None else len(FAMILIES), n)
    return sorted(names, key=key)


def family(name: str) -> str:
    from dlm_bench.methods import get_method
    p = get_method(name).profile
    return p.family if p is not None else "unclassified"


def rows() -> list[tuple[str, ...]]:
    from dlm_bench.methods import get_method, method_names
    out = []
    for name in family_order(method_names()):
        cls = get_method(name)
        out.append((name, "yes" if cls.trains else "no", "yes" if cls.needs_reference else "no",
                    cls.rollout_order, "yes" if cls.needs_trajectory else "no",
                    "yes" if cls.has_task_recipes() else "no"))
    return out


def comparison(names: list[str]) -> list[str]:
    """docs/methods.md's comparison table: family, likelihood, decoder, reference, updates, memory."""
    from dlm_bench.methods import get_method
    from dlm_bench.methods.profile import PROMPT_TOKENS, decoder, updates_per_batch
    out = ["| method | family | likelihood estimator | rollout decoder (recipe) | reference model | optimizer updates "
           "per rollout batch (mu x minibatches) | memory per update, est. (per completion) |", "|---|---|---|---|---|---|---|"]
    for name in family_order(names):
        cls = get_method(name)
        p, cfg = cls.profile, cls.Config()
        if p is None:
            out.append(f"| {name} | unclassified | | | | | |")
            continue
        r = getattr(cfg, "rollout", None)
        mem = "-" if r is None or not p.forwards else (
            f"{p.activation_gib(r.gen_length):.2f} GiB ({p.forwards:g} row{'s' if p.forwards != 1 else ''} x "
            f"{PROMPT_TOKENS + r.gen_length} tokens"
            + (f"; {p.forwards_note}" if p.forwards_note else "") + ")")
        out.append(f"| `{name}` | {p.family} | {_cell(p.estimator)} | {_cell(decoder(cls, cfg))} | {_cell(p.reference)} "
                   f"| {updates_per_batch(cfg)} | {_cell(mem)} |")
    return out


# TrainConfig fields a command or protocol fills in itself, not `--set` settings
NOT_SET = ("method", "overrides", "sampler")
# sampler fields a method's rollout block owns (gen_length, steps, ...; see TrainConfig.validate)
METHOD_OWNED = ("gen_length", "steps", "block_length", "temperature", "order")


def shared_settings() -> list[tuple[str, object, str, str]]:
    """(setting, default, help, source) of the loop's settings and the rollout sampler's `sampler.*`
    fields: what `--set` accepts besides a method's own config, for every method."""
    from dlm_bench.config import describe
    from dlm_bench.sampler import SamplerConfig
    from dlm_bench.training.loop import TrainConfig
    loop = [r for r in describe(TrainConfig) if r[0] not in NOT_SET]
    sampler = [(f"sampler.{p}", *rest) for p, *rest in describe(SamplerConfig) if p not in METHOD_OWNED]
    return loop + sampler


def _lines(rows, named: dict | None = None) -> list[str]:
    table = []
    for path, default, help_, source in rows:
        alias = f" (alias {', '.join(named[path])})" if named and path in named else ""
        table.append((f"{path} = {default!r}{alias}", help_ + (f"  [source: {source}]" if source else "")))
    width = max((len(a) for a, _ in table), default=0)
    return [f"  {a:<{width}}  {b}".rstrip() for a, b in table]


def settings_table(name: str) -> list[str]:
    """Lines `setting = default  help  [source]` of one method, blocks expanded (optim.lr, ...)."""
    from dlm_bench.config import aliases, describe
    from dlm_bench.methods import get_method
    cls = get_method(name).Config
    named: dict[str, list[str]] = {}
    for alias, (path, factor) in aliases(cls).items():
        named.setdefault(path, []).append(alias if factor == 1 else f"{alias} = this / {factor}")
    return _lines(describe(cls), named)


def _cell(value) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown(names: list[str] | None = None) -> str:
    """docs/methods.md, generated from `dlm_bench.config.describe` so that it cannot drift
    (tests/test_methods_doc.py compares the committed file with this)."""
    from dlm_bench.config import describe
    from dlm_bench.methods import get_method, method_names
    out = ["# Methods: every default and its source", "",
           "Generated by `dlm-bench methods --markdown > docs/methods.md` from each method's config "
           "(`dlm_bench.config.describe`); `tests/test_methods_doc.py` fails when this file and the code "
           "disagree. A default without a source in the code is marked *reconstructed*.", "",
           "## Comparison", "",
           "Methods grouped by family. The decoder and the updates come from each method's defaults; the memory is "
           "an estimate (`dlm_bench.methods.profile`: activations one backward keeps per completion at the "
           "recipe's window on LLaDA-8B with gradient checkpointing, 256 KiB per row-token; without "
           "checkpointing about 20 times more; weights and optimizer state left out), not a measurement.", ""]
    out += comparison(names or method_names()) + [""]
    for name in family_order(names or method_names()):
        cls = get_method(name)
        flags = [f"family: {family(name)}", f"trains: {'yes' if cls.trains else 'no'}",
                 f"reference: {'yes' if cls.needs_reference else 'no'}",
                 f"rollout order: {cls.rollout_order}", f"task recipes: {'yes' if cls.has_task_recipes() else 'no'}"]
        import sys
        doc = (sys.modules[cls.__module__].__doc__ or "").strip().split("\n\n")[0]
        out += [f"## {name}", "", " ".join(doc.split()), "", "; ".join(flags), ""]
        target = cls.target(cls.Config())
        if target:
            out += [f"Target at these defaults: {target}.", ""]
        rows = describe(cls.Config)
        if not rows:
            out += ["(no settings)", ""]
            continue
        out += ["| setting | default | what it does | source |", "|---|---|---|---|"]
        for path, default, help_, source in rows:
            out.append(f"| `{path}` | `{_cell(repr(default))}` | {_cell(help_)} | {_cell(source) if source else '*reconstructed*'} |")
        out.append("")
        out += _fidelity_table(f"Where {name} differs from its reference", cls.fidelity)
    from dlm_bench.methods.fidelity import ENGINE
    out += ["## Loop and sampler settings (every method)", "",
            "`--set NAME=VALUE` (or a YAML key) beside the method's own settings; `sampler.*` fields go to the "
            "rollout sampler (its window, steps, block and temperature are the method's `rollout.*`).", "",
            "| setting | default | what it does | source |", "|---|---|---|---|"]
    out += [f"| `{p}` | `{_cell(repr(d))}` | {_cell(h)} | {_cell(s)} |" for p, d, h, s in shared_settings()]
    out += ["", "## Shared machinery", ""]
    out += _fidelity_table("Where the shared code differs from the references", ENGINE)
    return "\n".join(out)


def _fidelity_table(title: str, rows) -> list[str]:
    """The `Deviation` rows (dlm_bench.methods.fidelity) as a table; status fixed | option | kept."""
    if not rows:
        return []
    out = [f"{title} (fixed: the recipe's behaviour is the default; option: one setting away; kept: a "
           "documented difference), each pinned by a test:", "",
           "| reference | dlm-bench | status | test |", "|---|---|---|---|"]
    out += [f"| {_cell(d.reference)} | {_cell(d.here)} | {d.status} | `{d.test}` |" for d in rows]
    return out + [""]


def run(args) -> int:
    from dlm_bench.errors import UserError
    from dlm_bench.methods import get_method, method_names
    names = args.names or method_names()
    unknown = [n for n in names if n not in method_names()]
    if unknown:
        raise UserError(f"unknown method(s) {', '.join(unknown)}; registered: {', '.join(method_names())}")
    if getattr(args, "markdown", False):
        print(markdown(names))
        return 0
    table = [("method", "trains", "reference", "rollout_order", "trajectory", "task_recipes")]
    table += [r for r in rows() if r[0] in names]
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    line = lambda r: "  ".join(f"{c:<{w}}" for c, w in zip(r, widths)).rstrip()   # noqa: E731
    print(line(table[0]))
    current = None
    for r in table[1:]:
        if family(r[0]) != current:
            current = family(r[0])
            print(f"{current}:")
        print(line(r))
    if args.verbose:
        for name in names:
            lines = settings_table(name)
            print(f"\n{name}:" + ("" if lines else " (no settings)"))
            cls = get_method(name)
            target = cls.target(cls.Config())
            if target:
                print(f"  target: {target}")
            if cls.profile is not None:
                print(f"  family: {cls.profile.family}; likelihood: {cls.profile.estimator}; "
                      f"reference: {cls.profile.reference}")
            print("\n".join(lines))
            for d in cls.fidelity:
                print(f"  differs from its reference ({d.status}): {d.reference} -> {d.here}  [{d.test}]")
        print("\nloop and sampler settings (every method; --set NAME=VALUE):")
        print("\n".join(_lines(shared_settings())))
    return 0
