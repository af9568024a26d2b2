"""`dlm-bench passk --model PATH --method LABEL --task T --k 1..16 --num-samples 16 --temps 0.3,0.6,0.9`.

Draws n samples per problem for every (temperature, length), grades them and stores the records under
--out (default results/passk/METHOD/TASK/MODEL-HASH, keyed by the model's content); a re-run resumes
where a killed one stopped. Prints Pass@k for every requested k. One process writes a run folder at a
time (`--wait` queues behind it).
"""
from __future__ import annotations

from dlm_bench.errors import UserError
from dlm_bench.runs import tracking


def parse_ints(text: str, what: str) -> tuple[int, ...]:
    """'1..16' (inclusive range), '1,5,16', or a mix ('1,4..6')."""
    out: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        try:
            if ".." in part:
                lo, hi = part.split("..")
                lo, hi = int(lo), int(hi)
                if hi < lo:
                    raise UserError(f"{what}: empty range {part!r}")
                out.extend(range(lo, hi + 1))
            else:
                out.append(int(part))
        except ValueError:
            raise UserError(f"{what}: expected integers like '1..16' or '1,5,16', got {text!r}") from None
    if not out or any(v < 1 for v in out):
        raise UserError(f"{what}: values must be positive integers, got {text!r}")
    return tuple(dict.fromkeys(out))


def parse_floats(text: str, what: str) -> tuple[float, ...]:
    try:
        vals = tuple(float(x) for x in str(text).split(",") if x.strip())
    except ValueError:
        raise UserError(f"{what}: expected numbers like '0.3,0.6,0.9', got {text!r}") from None
    if not vals:
        raise UserError(f"{what}: no values given")
    return vals


def add_arguments(p) -> None:
    p.add_argument("--model", required=True, help="a local Hugging Face model directory")
    p.add_argument("--method", required=True, help="label recorded as the method (e.g. base, espo)")
    p.add_argument("--task", required=True, help="task name (see `dlm-bench tasks`)")
    p.add_argument("--k", default="1,5,16", help="k values: '1..16' or '1,5,16'")
    p.add_argument("--num-samples", "--n", dest="n", type=int, default=16,
                   help="samples per problem (under torchrun spell it --num-samples: torchrun takes --n for its own)")
    p.add_argument("--temps", default=None, help=f"temperatures, comma-separated (default: {SWEEP_DEFAULTS['temps']})")
    p.add_argument("--lengths", default=None,
                   help=f"generation lengths, comma-separated (default: {SWEEP_DEFAULTS['lengths']})")
    p.add_argument("--block-length", type=int, default=None,
                   help=f"block length, clamped to the length (default: {SWEEP_DEFAULTS['block_length']})")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: gen length)")
    p.add_argument("--steps-per-token", type=float, default=None,
                   help="steps = ratio x gen length when --steps is not given (default: 1)")
    p.add_argument("--remasking", default=None, choices=["low_confidence", "random", "sequential"],
                   help="which masked tokens a step commits (default: low_confidence; sequential: block-diffusion models only)")
    add_decoding_arguments(p)
    p.add_argument("--decoder", default="protocol", choices=["protocol", "rollout"],
                   help="rollout: decode as the model's training run sampled its rollouts (block length, order, "
                        "temperature and length from its config.json) instead of the flags above")
    p.add_argument("--rollout-run", default=None,
                   help="with --decoder rollout: the training run whose decoder to use (default: the run that "
                        "produced --model; give one to sweep the base model with a method's decoder)")
    p.add_argument("--batch-size", type=int, default=32,
                   help="samples decoded together (memory and speed only; no effect on any sample); the "
                        "default fits 80 GB at 8B for the paper's tasks (docs/memory.md)")
    p.add_argument("--no-memory-check", action="store_true",
                   help="on a GPU, do not refuse a batch the memory model predicts will not fit (docs/memory.md)")
    p.add_argument("--seed", type=int, default=0, help="base seed (part of the config hash)")
    p.add_argument("--limit", type=int, default=None, help="only the first N problems")
    p.add_argument("--split", default=None, help="task split (default: its evaluation split)")
    p.add_argument("--out", default=None, help="run directory (default: results/passk/METHOD/TASK/MODEL-HASH)")
    p.add_argument("--data-dir", default=None, help="folder holding the benchmark data")
    p.add_argument("--answer-mode", default="flexible", choices=["flexible", "strict"],
                   help="strict: only the answer form the prompt asks for (part of the config hash)")
    p.add_argument("--device", default=None)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--report-to", default="none", help=tracking.HELP)
    p.add_argument("--wait", action="store_true",
                   help="if another run is writing --out, wait for it instead of exiting with an error")


def add_decoding_arguments(p) -> None:
    """The decoding options `sample` and `passk` share (Fast-dLLM's cache and threshold, the noise
    precision)."""
    p.add_argument("--cache", default="none", choices=["none", "prefix", "dual"],
                   help="block KV cache (approximate; default none, the paper's protocol). Full-attention "
                        "models only: block-diffusion models always cache their finished blocks exactly")
    p.add_argument("--threshold", type=float, default=None,
                   help="parallel decoding: commit every token above this confidence (e.g. 0.9); on "
                        "block-diffusion models at least the schedule's count per step (docs/sampler.md)")
    p.add_argument("--noise-dtype", default="float64", choices=["float64", "float32", "bfloat16"],
                   help="Gumbel noise and confidence precision (default float64, LLaDA's; bfloat16: ESPO's "
                        "rollouts; docs/sampler.md)")


SWEEP_DEFAULTS = {"temps": "0.3,0.6,0.9", "lengths": "256,512", "block_length": 32, "steps_per_token": 1.0,
                  "remasking": "low_confidence"}
DECODING_FLAGS = {"temps": "--temps", "lengths": "--lengths", "block_length": "--block-length", "steps": "--steps",
                  "steps_per_token": "--steps-per-token", "remasking": "--remasking", "threshold": "--threshold"}


def default_out(method: str, task: str, model: str, decoder=None) -> str:
    """results/passk/METHOD/TASK/MODELNAME-HASH: a retrained checkpoint gets its own folder instead of
    mixing its records into the old model's (the hash is of the model's content, not its path); a
    rollout decoder's sweep goes to results/passk-rollout/DECODER/..., apart from the protocol's."""
    from dlm_bench.evaluate import model_fingerprint
    fp = model_fingerprint(model)
    root = "results/passk" if decoder is None else f"results/passk-rollout/{decoder.name}"
    return f"{root}/{method}/{task}/{fp['name']}-{fp['hash'][:8]}"


def _decoder(args):
    """The training run's rollout decoder for --decoder rollout (no decoding flag may be given beside
    it), else None; the sweep defaults filled in for the flags not given."""
    from dlm_bench.evaluate import rollout_decoder
    if args.decoder == "protocol":
        if args.rollout_run:
            raise UserError("--rollout-run is only read with --decoder rollout")
        for k, v in SWEEP_DEFAULTS.items():
            if getattr(args, k) is None:
                setattr(args, k, v)
        return None
    given = [flag for k, flag in DECODING_FLAGS.items() if getattr(args, k) is not None]
    given += [f"--{k.replace('_', '-')}" for k, d in (("cache", "none"), ("noise_dtype", "float64"))
              if getattr(args, k) != d]
    if given:
        raise UserError(f"--decoder rollout takes the decoding settings from the training run; drop {', '.join(given)}")
    for k, v in SWEEP_DEFAULTS.items():
        setattr(args, k, v)             # placeholders: with_decoder replaces every one of them
    return rollout_decoder(args.rollout_run or args.model)


def config_from_args(args):
    from dlm_bench.evaluate import SweepConfig

    from dlm_bench.models.kv_cache import check_model_dir
    if "/" in args.method or not args.method.strip():
        raise UserError(f"--method must be a plain label, got {args.method!r}")
    check_model_dir(args.model, args.cache)   # refuse an uncacheable architecture before any work
    decoder = _decoder(args)
    out = args.out or default_out(args.method, args.task, args.model, decoder)
    cfg = SweepConfig(model=args.model, method=args.method, task=args.task, ks=parse_ints(args.k, "--k"),
                      n=args.n, temperatures=parse_floats(args.temps, "--temps"),
                      lengths=parse_ints(args.lengths, "--lengths"), block_length=args.block_length,
                      steps=args.steps, steps_per_token=args.steps_per_token, remasking=args.remasking,
                      batch_size=args.batch_size, seed=args.seed, out=out, data_dir=args.data_dir,
                      limit=args.limit, split=args.split, device=args.device,
                      answer_mode=args.answer_mode, threshold=args.threshold, cache=args.cache,
                      noise_dtype=args.noise_dtype, memory_check=not args.no_memory_check)
    if decoder is not None:
        from dlm_bench.evaluate import with_decoder
        print(f"rollout decoder of {args.rollout_run or args.model}: {decoder.description}")
        cfg = with_decoder(cfg, decoder)
    return cfg.validated()


def run(args) -> int:
    from dlm_bench.stats import metrics
    from dlm_bench.evaluate import run_sweep
    from dlm_bench.runs.store import read_scores

    tracking.parse_report_to(args.report_to)        # a missing tracker library fails before the sweep
    cfg = config_from_args(args)
    results = run_sweep(cfg, progress=not args.no_progress, wait=args.wait)
    if results is None:          # a non-zero torchrun rank: rank 0 reports
        return 0
    df = read_scores(cfg.out)
    hashes = {c["config_hash"] for c in results["cells"]}
    df = df[df["config_hash"].isin(hashes) & (df["method"] == cfg.method) & (df["sample"] < cfg.n)]
    table = metrics.passk_table(df, ks=cfg.ks)
    note = f"({cfg.task}: {results['note']})\n" if results.get("note") else ""
    for k in cfg.ks:
        print(metrics.passk_markdown(table, k))
        print(note)
    cost = ", ".join(f"T={c['temperature']:g} L={c['gen_length']}: NFE {c['mean_nfe']:.1f}, "
                     f"length {c['mean_length']:.1f}" for c in results["cells"] if c["mean_nfe"] is not None)
    print(f"Denoising cost (mean per sample): {cost}")
    print(f"Records: {cfg.out}/generations.jsonl, scores.jsonl; summary: {cfg.out}/results.json")
    report_summary(args.report_to, cfg.out, results)
    return 0


def report_summary(report_to: str, out: str, results: dict) -> None:
    """The sweep's Pass@k to the trackers: a curve over k per cell (`passk/T=..,L=../pass_at_k` at step
    k) and the whole table."""
    tracker = tracking.Tracker(report_to, out, results["config"])
    columns = ["temperature", "gen_length", "k", "pass_at_k", "se", "n_problems", "note"]
    rows = []
    for c in results["cells"]:
        for k, v in sorted(c["pass_at_k"].items(), key=lambda kv: int(kv[0])):
            tracker.log({"pass_at_k": v["mean"]}, int(k), prefix=f"passk/T={c['temperature']:g},L={c['gen_length']}")
            rows.append([c["temperature"], c["gen_length"], int(k), v["mean"], v["se"], c["n_problems"],
                         results.get("note", "")])
    tracker.log_table("passk/summary", columns, rows)
    tracker.close()
