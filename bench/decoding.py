"""Fast decoding (block KV cache x threshold decoding): what it saves and what it costs, in one run.

Speed: for each model and gen length, `none`, `prefix`, `dual`, each with and without threshold
decoding (0.9), greedy, block 32, a ~200-token GSM8K prompt, batch 1, `stop_at_eos=False` (every
configuration decodes the whole window): wall time and forward-pass FLOPs as ratios against `none`
at full steps (steps = gen length), measured side by side. FLOPs are counted by torch's
FlopCounterMode on one pass of every distinct shape the run used (full passes, cached windows).
Models: `tiny:8m` (the built-in architecture, random weights) and tiny random-weight LLaDA
(mask-fix code) and Dream built from the real remote code in ../shared/models.

Accuracy: `dlm-bench passk` on the testbed with the committed base checkpoint for every mode at
the demo's eval settings (configs/demo.yaml), then `dlm-bench compare MODE none` at k = 1 and 16
(paired t-interval CIs per cell), and the same at block length 4 (several blocks per answer: with
the demo's one block, prefix and dual are the same computation).

Run: .venv/bin/python bench/decoding.py [--lengths 256,512] [--models tiny:8m,llada,dream]
     [--limit 50] [--n 16] [--skip-speed] [--skip-accuracy] [--json out.json]
"""
import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dlm_bench.cli import main as cli  # noqa: E402
from dlm_bench.models.kv_cache import BlockCache  # noqa: E402
from dlm_bench.sampler import SamplerConfig, make_generators, sample  # noqa: E402

MODES = [("none", None), ("none", 0.9), ("prefix", None), ("prefix", 0.9), ("dual", None), ("dual", 0.9)]
PROMPT_TOKENS = 200
BLOCK = 32


def label(mode, thr):
    return mode if thr is None else f"{mode}-t{thr:g}"


# --------------------------------------------------------------------------- models and prompt

def load(name: str, tmp: Path):
    from dlm_bench.models import DLM, load_model
    if name.startswith("tiny:"):
        from dlm_bench.models.chartok import build_char_tokenizer
        from dlm_bench.models.tiny import build_tiny
        tok = build_char_tokenizer()
        torch.manual_seed(0)
        model = build_tiny(tok, name.split(":", 1)[1]).eval()
        return DLM(model=model, tokenizer=tok, mask_id=tok.mask_token_id, eos_id=tok.eos_token_id,
                   pad_id=tok.pad_token_id, extra={"model_type": "dlm-bench-tiny"})
    from dlm_bench.tasks.data import models_dir
    from dlm_bench.models.random_init import build_tiny as build_real
    snap = {"llada": "llada-8b-instruct-maskfix", "dream": "dream-v0-instruct-7b"}[name]
    root = models_dir()
    if root is None or not (root / snap).is_dir():
        raise SystemExit(f"real-model snapshot {snap} not found (../shared/models)")
    return load_model(str(build_real(root / snap, tmp / name, seed=1)), device="cpu")


def gsm8k_prompt(dlm) -> list[int]:
    """GSM8K test questions through the model's chat template, joined until >= 200 tokens, then the
    last 200 kept (the generation prompt stays at the end)."""
    from dlm_bench.tasks import get_task
    task = get_task("gsm8k")
    problems = task.load(task.eval_split)
    parts = []
    for p in problems:
        parts.append(task.prompt(p)[-1]["content"])
        ids = dlm.prompt_ids("\n\n".join(parts))
        if len(ids) >= PROMPT_TOKENS:
            return ids[-PROMPT_TOKENS:]
    raise SystemExit("GSM8K prompts too short")


# --------------------------------------------------------------------------- speed

class Shapes:
    """Records (batch, input length) of every forward call of the model."""

    def __init__(self, model):
        self.calls = []
        self.handle = model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.calls.append(tuple(ids.shape))

    def close(self):
        self.handle.remove()


def pass_flops(dlm, mode, width, T, P, shift):
    """FLOPs of one batch-1 forward pass of `width` input columns in a T-column sequence."""
    x = torch.randint(5, 50, (1, T))
    att = torch.ones_like(x)
    counter = FlopCounterMode(display=False)
    with torch.no_grad():
        if width == T:
            with counter:
                dlm.logits(x, att)
        else:
            cache = BlockCache(dlm, mode)
            lo = P + shift if mode == "dual" else T - width + shift
            cache.start(x, att, lo, lo + min(BLOCK, T - lo))
            with counter:
                cache.block_logits(x, att, torch.arange(1))
    return counter.get_total_flops()


def speed(dlm, name, gens, repeats):
    prompt = gsm8k_prompt(dlm)
    shift = 1 if dlm.shift_logits else 0
    rows = []
    for G in gens:
        T = len(prompt) + G
        results, flops_cache = {}, {}
        for r in range(repeats):                # interleaved, best of `repeats`: the machine is shared
            for mode, thr in MODES:
                cfg = SamplerConfig(gen_length=G, block_length=BLOCK, steps=G, temperature=0.0,
                                    threshold=thr, cache=mode, stop_at_eos=False)
                shapes = Shapes(dlm.model)
                t0 = time.perf_counter()
                comp = sample(dlm, [prompt], cfg, make_generators([0], "cpu"))[0]
                sec = time.perf_counter() - t0
                shapes.close()
                best = results.get((mode, thr))
                if best is None or sec < best["seconds"]:
                    results[(mode, thr)] = {"seconds": sec, "nfe": comp.nfe, "tokens": comp.tokens,
                                            "calls": shapes.calls}
                print(f"  {name} G={G} {label(mode, thr)} run {r + 1}: {sec:.2f}s, NFE {comp.nfe}", flush=True)
        base = results[("none", None)]
        for (mode, thr), res in results.items():
            total = 0
            for b, w in res["calls"]:
                key = (mode, w)
                if key not in flops_cache:
                    flops_cache[key] = pass_flops(dlm, mode, w, T, len(prompt), shift)
                total += b * flops_cache[key]
            res["flops"] = total
        base_flops = base["flops"]
        for (mode, thr), res in results.items():
            same = sum(a == b for a, b in zip(res["tokens"], base["tokens"])) / G
            rows.append({"model": name, "gen_length": G, "prompt_tokens": len(prompt), "cache": mode,
                         "threshold": thr, "seconds": round(res["seconds"], 3), "nfe": res["nfe"],
                         "speedup": round(base["seconds"] / res["seconds"], 2),
                         "flops": res["flops"], "flops_ratio": round(base_flops / res["flops"], 2),
                         "same_tokens_as_none": round(same, 3)})
    return rows


def schedule_flops(dlm, name, gens):
    """FLOPs of the fixed schedule (no threshold: one full pass per block, then steps - 1 windows),
    from one counted pass per shape: no decoding run needed, so it is cheap for any model."""
    prompt = gsm8k_prompt(dlm)
    shift = 1 if dlm.shift_logits else 0
    rows = []
    for G in gens:
        P, T = len(prompt), len(prompt) + G
        blocks, spb = G // BLOCK, BLOCK           # steps = gen length: 32 steps per block
        full = pass_flops(dlm, "none", T, T, P, shift)
        total = {"none": blocks * spb * full}
        total["dual"] = blocks * (full + (spb - 1) * pass_flops(dlm, "dual", BLOCK + shift, T, P, shift))
        total["prefix"] = sum(full + (spb - 1) * pass_flops(dlm, "prefix", T - (P + b * BLOCK - shift), T, P, shift)
                              for b in range(blocks))
        for mode in ("none", "prefix", "dual"):
            rows.append({"model": name, "gen_length": G, "cache": mode, "flops": total[mode],
                         "flops_ratio": round(total["none"] / total[mode], 2)})
    return rows


def speed_markdown(rows) -> str:
    out = ["| model | gen | cache | threshold | NFE | seconds | speed-up vs none | FLOPs saving vs none | "
           "tokens equal to none |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['model']} | {r['gen_length']} | {r['cache']} | {r['threshold'] or '-'} | {r['nfe']} | "
                   f"{r['seconds']:.2f} | ×{r['speedup']:.2f} | ×{r['flops_ratio']:.2f} | "
                   f"{100 * r['same_tokens_as_none']:.0f}% |")
    return "\n".join(out)


# --------------------------------------------------------------------------- accuracy

def accuracy(out: Path, limit: int, n: int, blocks: list[int], model: str, modes, temps=None, lengths=None):
    """`none` at the demo's full eval settings (at the demo's block length); the other modes, and
    `none` at other block lengths, at `temps` x `lengths` (default: the same). compare pairs the cells both have. Run folders under `out` resume (passk), so a rerun
    with the same `out` only adds what is missing."""
    import yaml
    demo = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())["eval"]
    all_temps = ",".join(str(t) for t in demo["temperatures"])
    all_lengths = ",".join(str(x) for x in demo["lengths"])
    ks = sorted({1, min(16, n)})
    rows, costs = [], []
    for block in blocks:
        runs = out / f"block{block}"
        chosen = [m for lab in modes for m in MODES if label(*m) == lab and m != ("none", None)]
        for mode, thr in [("none", None)] + chosen:
            lab = label(mode, thr)
            demo_none = lab == "none" and block == demo["block_length"]    # the demo's own run: every cell
            temps_now = all_temps if demo_none else (temps or all_temps)
            lengths_now = all_lengths if demo_none else (lengths or all_lengths)
            argv = ["passk", "--model", model, "--method", lab, "--task", "testbed", "--n", str(n),
                    "--k", ",".join(map(str, ks)), "--temps", temps_now, "--lengths", lengths_now,
                    "--block-length", str(block), "--steps-per-token", str(demo["steps_per_token"]),
                    "--limit", str(limit), "--batch-size", str(demo["batch_size"]), "--seed", str(demo["seed"]),
                    "--out", str(runs / lab / "testbed"), "--no-progress", "--cache", mode]
            if thr is not None:
                argv += ["--threshold", str(thr)]
            t0 = time.perf_counter()
            assert cli(argv) == 0
            sec = time.perf_counter() - t0
            res = json.loads((runs / lab / "testbed" / "results.json").read_text())
            nfe = sum(c["mean_nfe"] for c in res["cells"]) / len(res["cells"])
            costs.append({"block": block, "mode": lab, "seconds": round(sec, 1), "mean_nfe": round(nfe, 2)})
            print(f"  accuracy block {block} {lab}: {sec:.0f}s, mean NFE {nfe:.2f}", flush=True)
        for mode, thr in chosen:
            lab = label(mode, thr)
            for k in ks:
                f = runs / f"cmp-{lab}-k{k}.json"
                assert cli(["compare", lab, "none", "--runs", str(runs), "--k", str(k), "--json", str(f)]) == 0
                for r in json.loads(f.read_text())["rows"]:
                    rows.append({"block": block, "mode": lab, "k": k, "temperature": r["temperature"],
                                 "gen_length": r["gen_length"], "n_problems": r["n_problems"],
                                 "pass_mode": r["pass_a"], "pass_none": r["pass_b"], "diff": r["diff"],
                                 "ci_low": r["ci_low"], "ci_high": r["ci_high"], "q_bh": r["q_bh"]})
    return rows, costs


def accuracy_markdown(rows, costs) -> str:
    out = ["| block | mode | k | T | L | Pass@k mode | Pass@k none | diff (pp) | 95% CI (pp) | within ±2 pp |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        inside = -0.02 <= r["ci_low"] and r["ci_high"] <= 0.02
        out.append(f"| {r['block']} | {r['mode']} | {r['k']} | {r['temperature']:g} | {r['gen_length']} | "
                   f"{r['pass_mode']:.3f} | {r['pass_none']:.3f} | {100 * r['diff']:+.1f} | "
                   f"[{100 * r['ci_low']:+.1f}, {100 * r['ci_high']:+.1f}] | {'yes' if inside else 'no'} |")
    out += ["", "| block | mode | mean NFE | passk seconds |", "|---|---|---|---|"]
    out += [f"| {c['block']} | {c['mode']} | {c['mean_nfe']:.2f} | {c['seconds']:.0f} |" for c in costs]
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", default="256,512")
    ap.add_argument("--models", default="tiny:8m,llada,dream")
    ap.add_argument("--repeats", type=int, default=1, help="timed runs per configuration (best of)")
    ap.add_argument("--limit", type=int, default=50, help="testbed problems (the demo: 50)")
    ap.add_argument("--n", type=int, default=16, help="samples per problem (the demo: 16)")
    ap.add_argument("--acc-blocks", default="16,4", help="block lengths of the accuracy side (16: the demo's)")
    ap.add_argument("--model", default=str(ROOT / "checkpoints" / "testbed-base"), help="accuracy-side model")
    ap.add_argument("--acc-modes", default=",".join(label(*m) for m in MODES[1:]),
                    help="modes compared with none on the accuracy side")
    ap.add_argument("--acc-temps", default=None, help="temperatures of those modes (default: the demo's)")
    ap.add_argument("--acc-lengths", default=None, help="lengths of those modes (default: the demo's)")
    ap.add_argument("--acc-out", default=None, help="keep (and resume) the accuracy runs here")
    ap.add_argument("--flops-models", default="llada,dream",
                    help="models whose fixed-schedule FLOPs are counted without a timed run")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--skip-accuracy", action="store_true")
    ap.add_argument("--json", default=None, help="write every number to this file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    report = {"settings": vars(args)}
    gens = [int(g) for g in args.lengths.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if not args.skip_speed:
            rows, flops = [], []
            for name in filter(None, args.models.split(",")):
                rows += speed(load(name, tmp), name, gens, args.repeats)
            for name in filter(None, args.flops_models.split(",")):
                flops += schedule_flops(load(name, tmp), name, gens)
            report["speed"], report["schedule_flops"] = rows, flops
            print("\n" + speed_markdown(rows) + "\n", flush=True)
            for r in flops:
                print(f"FLOPs {r['model']} G={r['gen_length']} {r['cache']}: {r['flops']:.3e} "
                      f"(saving x{r['flops_ratio']:.2f})", flush=True)
        if not args.skip_accuracy:
            acc, costs = accuracy(Path(args.acc_out) if args.acc_out else tmp / "acc", args.limit, args.n,
                                  [int(b) for b in args.acc_blocks.split(",")], args.model,
                                  args.acc_modes.split(","), args.acc_temps, args.acc_lengths)
            report["accuracy"], report["accuracy_cost"] = acc, costs
            print("\n" + accuracy_markdown(acc, costs) + "\n", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
