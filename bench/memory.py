"""Peak memory of one training update per method on tiny real-architecture models (issue 9).

Every configuration runs in a fresh subprocess (a resident-set high-water mark never goes down). The
child loads a tiny random-weight LLaDA/Dream built from the hub snapshots in ../shared/models (their
real remote code and 126k/152k vocabularies), with a LoRA adapter, builds a fixed rollout batch
(prompts x G completions of `gen` tokens; rollout sampling is not part of the update), then resets its
high-water mark (/proc/self/clear_refs) and runs the update as `dlm_bench.training.loop` does: `prepare` under
no_grad, backward over `micro_batch_size` chunks weighted by `loss_count`, one AdamW step. It reports
the peak resident set (CPU: VmHWM; GPU: torch.cuda.max_memory_allocated) and the peak above the
resident set before the update, and saves the trainable weights so the parent can check that every
micro-batch size gives the same update.

Printed: ratios to the unbounded baseline of the same run (whole batch in one backward, no
checkpointing, full [rows, length, vocab] logits), the per-token slope (bytes per forward row and
token, from two generation lengths) and its extrapolation to LLaDA-8B / Dream-7B shapes.

Run: .venv/bin/python bench/memory.py [--cases llada-trafl,llada-espo,dream-trafl] [--gens 16,32]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

SNAPSHOTS = Path(__file__).resolve().parents[1].parent / "shared" / "models"
ARCH = {"llada": "llada-8b-instruct-maskfix", "dream": "dream-v0-instruct-7b"}
# The tiny real architectures (Family.tiny_sizes, models/families.py) widened to LLaDA's MLP ratio 3 so per-token terms scale.
SIZES = {"llada": dict(d_model=64, n_heads=4, n_kv_heads=4, n_layers=2, mlp_hidden_size=192, max_sequence_length=1024),
         "dream": dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2,
                       intermediate_size=192, max_position_embeddings=1024)}
PROMPTS, GROUP = 2, 4           # 8 completions per update


# ----------------------------------------------------------------------------- child

def _kib(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def child(spec: dict) -> dict:
    import torch
    torch.set_num_threads(1)
    from dlm_bench.likelihood import ScoredBatch
    from dlm_bench.methods import Rollouts, get_method, make_config
    from dlm_bench.models import LoraSpec, load_model
    from dlm_bench.models.adapter import AdapterDisabled
    from dlm_bench.training.loop import row_chunks
    torch.manual_seed(0)
    cuda = torch.cuda.is_available()            # GPU: bf16 and max_memory_allocated (not yet run on one)
    dlm = load_model(spec["model"], lora=LoraSpec(r=4, alpha=8, dropout=0.0), device="cuda" if cuda else "cpu")
    dlm.gather_logits = spec["gather"] and dlm.gather_logits
    dlm.set_gradient_checkpointing(spec["checkpointing"])
    dlm.score_rows = spec["score_rows"]          # what `bound_memory` sets from micro_batch_size; None: 64
    if spec.get("head_positions"):               # slope runs: a full head chunk at every length (see slopes())
        import dlm_bench.likelihood as lk
        lk.HEAD_CHUNK_BYTES = spec["head_positions"] * 4 * dlm.model.get_output_embeddings().weight.shape[0]
    ref = AdapterDisabled(dlm)
    cls = get_method(spec["method"])
    cfg = make_config(cls, dict(group_size=GROUP, batch_prompts=PROMPTS, inner_updates=1, gen_length=spec["gen"],
                                lora_r=4, lora_alpha=8, lora_dropout=0.0))
    torch.manual_seed(1)
    method = cls(cfg, policy=dlm)
    g = torch.Generator().manual_seed(2)
    prompts = [dlm.prompt_ids(q) for q in ("What is 12 times 13? Think step by step.", "Name three colours.")]
    comps = [torch.randint(1000, 20000, (spec["gen"],), generator=g).tolist() for _ in range(PROMPTS * GROUP)]
    ro = Rollouts(ScoredBatch.build(dlm, [p for p in prompts for _ in range(GROUP)], comps),
                  torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0]),
                  torch.arange(PROMPTS).repeat_interleave(GROUP),
                  torch.stack([torch.randperm(spec["gen"], generator=g) for _ in comps]), seed=3)
    params = [p for p in dlm.model.parameters() if p.requires_grad] + list(method.extra_modules.parameters())
    opt = torch.optim.AdamW(params, lr=1e-3)
    before = _kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")              # the high-water mark of the update alone
    if cuda:
        torch.cuda.synchronize()
        before_gpu = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    dlm.model.eval()
    with torch.no_grad():
        method.prepare(ro, dlm, ref)
    dlm.model.train()
    parts = row_chunks(method, ro, spec["mbs"])
    counts = [method.loss_count(p) for p in parts]
    rows_in_flight = 0
    for p, c in zip(parts, counts):
        loss, _ = method.loss(p, dlm, ref)
        (loss * (c / sum(counts))).backward()
        rows_in_flight = max(rows_in_flight, p.rewards.numel())
    opt.step()
    peak = _kib("VmHWM")
    if cuda:        # report device memory instead of the host's resident set
        peak, before = torch.cuda.max_memory_allocated() // 1024, before_gpu // 1024
    torch.save({n: p.detach().cpu() for n, p in dlm.model.named_parameters() if p.requires_grad}, spec["weights"])
    length = ro.batch.prompt_ids.shape[1] + spec["gen"]
    return {"peak_mib": peak / 1024, "above_mib": (peak - before) / 1024, "before_mib": before / 1024,
            "completions_per_backward": rows_in_flight, "tokens": length}


# ----------------------------------------------------------------------------- parent

def run(spec: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                         env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    line = [x for x in out.stdout.splitlines() if x.startswith("{")]
    if out.returncode or not line:
        raise RuntimeError(f"child failed for {spec}:\n{out.stderr[-3000:]}")
    return {**spec, **json.loads(line[-1])}


def build(arch: str, root: Path) -> str:
    from dlm_bench.models.random_init import build_random
    return str(build_random(SNAPSHOTS / ARCH[arch], root / arch, SIZES[arch], seed=1))


def max_rel(a: str, b: str) -> float:
    import torch
    wa, wb = torch.load(a), torch.load(b)
    return max(float((wa[k] - wb[k]).norm() / wb[k].norm().clamp(min=1e-30)) for k in wa)


# ----------------------------------------------------------------------------- per-token slopes

def slopes(models: dict, root: Path, gens: tuple[int, ...], method: str = "trafl") -> dict:
    """Bytes per (completion in one backward x token) of the default configuration (mbs 4, checkpointing,
    gathered head), from a least-squares line over `gens`. The head is applied 8 positions at a time
    here: at the tiny lengths a 64 MiB chunk is never full, so its size would grow with the length and
    pose as a per-token cost; at 8B lengths the chunk is always full, a constant counted separately."""
    out = {}
    for arch, model in models.items():
        pts = []
        for gen in gens:
            r = run(dict(model=model, method=method, gen=gen, mbs=4, checkpointing=True, gather=True, score_rows=4,
                         head_positions=8, weights=str(root / f"slope-{arch}-{gen}.pt"), label="slope"))
            pts.append((r["tokens"] * r["completions_per_backward"], r["above_mib"] * 2 ** 20))
        n = len(pts)
        mx, my = sum(p[0] for p in pts) / n, sum(p[1] for p in pts) / n
        slope = sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)
        out[arch] = slope
        print(f"{arch} {method} slope: {slope / 1024:.1f} KiB per completion-token; points (completion-tokens, MiB "
              f"above start): {[(x, round(y / 2 ** 20)) for x, y in pts]}", flush=True)
    return out


# ----------------------------------------------------------------------------- extrapolation

def shapes(arch: str) -> dict:
    """Layers, width, MLP width, vocab, q/kv widths of the real config, and its parameter count."""
    c = json.loads((SNAPSHOTS / ARCH[arch] / "config.json").read_text())
    if arch == "llada":
        L, d, m, V, kv = c["n_layers"], c["d_model"], c["mlp_hidden_size"], c["embedding_size"], c["d_model"]
    else:
        L, d, m, V = c["num_hidden_layers"], c["hidden_size"], c["intermediate_size"], c["vocab_size"]
        kv = d // c["num_attention_heads"] * c["num_key_value_heads"]
    linears = [(d, d), (d, kv), (d, kv), (d, d), (d, m), (d, m), (m, d)]      # q k v o, gate up down
    params = 2 * V * d + L * sum(i * o for i, o in linears)
    return dict(L=L, d=d, m=m, V=V, params=params, lora_per_rank=L * sum(i + o for i, o in linears))


def extrapolate(slope_tiny: float, arch: str, rank: int = 128, completions: int = 4, tokens: int = 768) -> dict:
    """One LoRA update at the real shape, bf16, default settings (checkpointing, gathered head,
    micro_batch_size 4): weights + LoRA params/grads/AdamW + per-token activations scaled from the
    tiny measurement by layers x (width + MLP width), halved for bf16 (the tiny run is fp32)."""
    big, tiny = shapes(arch), SIZES[arch]
    tL = tiny.get("n_layers", tiny.get("num_hidden_layers"))
    td = tiny.get("d_model", tiny.get("hidden_size"))
    tm = tiny.get("mlp_hidden_size", tiny.get("intermediate_size"))
    scale = big["L"] * (big["d"] + big["m"]) / (tL * (td + tm))
    per_token = slope_tiny * scale * 0.5
    weights = 2 * big["params"]
    lora = 8 * rank * big["lora_per_rank"]                 # bf16 param + grad + two AdamW moments
    acts = per_token * completions * tokens
    head = 3 * 64 * 2 ** 20                                # one gathered head chunk: logits, log-softmax, grad
    return dict(scale=scale, per_token=per_token, weights=weights, lora=lora, acts=acts, head=head,
                total=weights + lora + acts + head, **big)


def print_extrapolation(slopes: dict) -> None:
    """Naive: the tiny RSS slope is dominated by vocab-sized transients and allocator noise (measured
    2026-12-02, bench/README.md), so this scaling is a loose upper bound, not the estimate; the
    estimate there is analytic (saved tensors per row-token of a checkpointed LLaMA block)."""
    G = 2 ** 30
    print("(naive upper bound: RSS slope x L(d+m) ratio; see bench/README.md for the analytic estimate)")
    for arch, slope in slopes.items():
        e = extrapolate(slope, arch)
        print(f"{arch}: {e['params'] / 1e9:.2f}B params (L={e['L']}, d={e['d']}, mlp={e['m']}, V={e['V']}); "
              f"tiny slope {slope / 1024:.1f} KiB x {e['scale']:.0f} (L(d+m) ratio) x 0.5 (bf16) = "
              f"{e['per_token'] / 2 ** 20:.2f} MiB per completion-token")
        print(f"  weights {e['weights'] / G:.1f} GiB + LoRA r128 (param, grad, AdamW) {e['lora'] / G:.1f} GiB + "
              f"activations 4 completions x 768 tokens {e['acts'] / G:.1f} GiB + head chunk {e['head'] / G:.2f} GiB "
              f"= {e['total'] / G:.1f} GiB")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--child")
    ap.add_argument("--gens", default="32,64", help="two generation lengths for the per-token slope")
    ap.add_argument("--cases", default="llada-trafl,llada-espo,dream-trafl",
                    help="arch-method pairs; the first gets every configuration, the others a subset")
    ap.add_argument("--extrapolate", help="a results.json of an earlier run: print only the extrapolation")
    ap.add_argument("--slopes-only", action="store_true", help="only the per-token slopes and the extrapolation")
    ap.add_argument("--slope-gens", default="32,64,128")
    args = ap.parse_args()
    if args.extrapolate:
        res = json.loads(Path(args.extrapolate).read_text())
        print_extrapolation(res["slopes"])
        return
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    root = Path(tempfile.mkdtemp(prefix="dlm-memory-"))
    short, long_ = (int(x) for x in args.gens.split(","))
    n = PROMPTS * GROUP
    # (label, micro_batch_size, checkpointing, gathered logits, scoring rows per forward)
    configs = [("unbounded: whole batch, no ckpt, full logits", n, False, False, None),
               ("micro_batch_size=1 (full logits, no ckpt)", 1, False, False, 1),
               ("gathered logits only", n, False, True, None),
               ("checkpointing only", n, True, False, None),
               ("defaults, whole batch (mbs=8)", n, True, True, n),
               ("defaults, mbs=4", 4, True, True, 4),
               ("defaults, mbs=1", 1, True, True, 1)]
    subset = {0, 1, 4, 5, 6}                # the other cases: baseline, micro-batching and the defaults
    cases = [tuple(c.split("-")) for c in args.cases.split(",")]
    models = {a: build(a, root) for a in sorted({a for a, _ in cases})}
    if args.slopes_only:
        s = slopes(models, root, tuple(int(g) for g in args.slope_gens.split(",")))
        (root / "results.json").write_text(json.dumps({"slopes": s}, indent=1))
        print("\nextrapolation (default settings, TraFL slope):")
        print_extrapolation(s)
        return
    results = {}
    for arch, method in cases:
        print(f"\n{arch} (tiny: {SIZES[arch]}), {method}, LoRA r4, {PROMPTS} prompts x G={GROUP}, gen {long_}")
        print(f"{'configuration':44} {'peak MiB':>9} {'x base':>7} {'above MiB':>10} {'x base':>7} {'max rel dW':>11}")
        rows = []
        for i, (label, mbs, ck, ga, sr) in enumerate(configs):
            if (arch, method) != cases[0] and i not in subset:
                continue
            spec = dict(model=models[arch], method=method, gen=long_, mbs=mbs, checkpointing=ck, gather=ga,
                        score_rows=sr, weights=str(root / f"{arch}-{method}-{i}.pt"))
            r = run({**spec, "label": label})
            rows.append(r)
            base = rows[0]
            print(f"{label:44} {r['peak_mib']:9.0f} {r['peak_mib'] / base['peak_mib']:7.2f} {r['above_mib']:10.0f} "
                  f"{r['above_mib'] / base['above_mib']:7.2f} {max_rel(r['weights'], base['weights']):11.1e}", flush=True)
        case_slopes = {}
        by_label = {r["label"]: r for r in rows}
        for label, key in (("unbounded", configs[0][0]),):     # the defaults' slope: slopes() below
            i = rows.index(by_label[key])
            spec = dict(rows[i], gen=short, weights=str(root / f"{arch}-{method}-short{i}.pt"))
            r = run({k: spec[k] for k in ("model", "method", "gen", "mbs", "checkpointing", "gather", "score_rows",
                                          "weights", "label")})
            # bytes per (completion in one backward x token): the update's activations grow with both
            completions = rows[i]["completions_per_backward"]
            case_slopes[label] = ((rows[i]["above_mib"] - r["above_mib"]) * 2 ** 20
                             / ((rows[i]["tokens"] - r["tokens"]) * completions))
            print(f"slope {label:10}: {case_slopes[label] / 1024:8.1f} KiB per completion-token "
                  f"(gen {short} -> {long_}: {r['above_mib']:.0f} -> {rows[i]['above_mib']:.0f} MiB above start, "
                  f"{completions} completions per backward)")
        results[f"{arch}-{method}"] = {"rows": rows, "slopes": case_slopes}
    print()
    s = slopes(models, root, tuple(int(g) for g in args.slope_gens.split(",")))
    results["slopes"] = s
    (root / "results.json").write_text(json.dumps(results, indent=1, default=str))
    print("\nextrapolation (default settings, TraFL slope):")
    print_extrapolation(s)
    print(f"\nraw results: {root / 'results.json'}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
