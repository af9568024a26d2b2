"""Cost of one optimizer update per method, as ratios to ESPO, measured side by side in one run.

Every method scores the same rollout batch (prompts x G completions with step maps) from the same
tiny model; one "update" is the method's share of `prepare` (old/reference scores, amortised over its
mu inner updates) plus one `loss` + backward. Rollout sampling is excluded (it is the shared sampler;
JustGRPO's left-to-right rollouts cost gen_length forward passes, reported separately).
Forward passes are counted as sequences through the policy or the reference (a batch of 8 counts 8).

Run: .venv/bin/python bench/train_step.py [--size 1m] [--prompts 4] [--group 8] [--gen-length 16]
"""
import argparse
import copy
import time

import torch

from dlm_bench.likelihood import ScoredBatch
from dlm_bench.methods import Rollouts, get_method, make_config, method_names
from dlm_bench.models import DLM
from dlm_bench.models.chartok import build_char_tokenizer
from dlm_bench.models.tiny import build_tiny
from dlm_bench.sampler import SamplerConfig, make_generators, sample


class Counter:
    def __init__(self, model):
        self.rows = 0
        self.watch(model)

    def watch(self, model):
        model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.rows += int(ids.shape[0])


def rollouts(dlm, prompts, group, gen_length):
    cfg = SamplerConfig(gen_length=gen_length, block_length=gen_length, steps=gen_length, temperature=1.0)
    ids = [dlm.prompt_ids(p) for p in prompts for _ in range(group)]
    comps = sample(dlm, ids, cfg, make_generators(range(len(ids)), "cpu"))
    gen = torch.Generator().manual_seed(0)
    rewards = (torch.rand(len(ids), generator=gen) < 0.4).float()  # a mix of right and wrong
    return Rollouts(batch=ScoredBatch.build(dlm, ids, [c.tokens for c in comps]), rewards=rewards,
                    groups=torch.arange(len(prompts)).repeat_interleave(group),
                    step_map=torch.tensor([c.step_map for c in comps]), seed=0)


def cost(name, dlm, ref, ro, repeats):
    cls = get_method(name)
    cfg = make_config(cls, {})
    mu = max(1, getattr(cfg, "inner_updates", 1))
    times, rows = [], []
    for _ in range(repeats):
        policy, reference = copy.deepcopy(dlm), copy.deepcopy(ref)
        counter = Counter(policy.model)
        counter.watch(reference.model)
        method = cls(cfg, policy=policy)
        batch = Rollouts(ro.batch, ro.rewards, ro.groups, ro.step_map, ro.seed)
        t = time.perf_counter()
        with torch.no_grad():
            method.prepare(batch, policy, reference if method.needs_reference else None)
        prep, prep_rows = time.perf_counter() - t, counter.rows
        t = time.perf_counter()
        loss, _ = method.loss(batch, policy, reference if method.needs_reference else None)
        loss.backward()
        step = time.perf_counter() - t
        times.append(prep / mu + step)
        rows.append(prep_rows / mu + (counter.rows - prep_rows))
    return min(times), rows[0], mu


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="1m")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--gen-length", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    tok = build_char_tokenizer()
    dlm = DLM(model=build_tiny(tok, args.size), tokenizer=tok, mask_id=tok.mask_token_id,
              eos_id=tok.eos_token_id, pad_id=tok.pad_token_id)
    ref = copy.deepcopy(dlm)
    ro = rollouts(dlm, [f"{i} {i + 1} {i + 2}>{3 * i + 3}:" for i in range(args.prompts)], args.group,
                  args.gen_length)
    print(f"tiny-{args.size}, {args.prompts} prompts x G={args.group}, gen length {args.gen_length}; "
          "per update: prepare/mu + loss + backward")
    results = {m: cost(m, dlm, ref, ro, args.repeats) for m in method_names() if get_method(m).trains}
    base_t, base_rows, _ = results["espo"]
    print(f"{'method':10} {'mu':>3} {'s/update':>9} {'x ESPO':>7} {'seq fwd/update':>15} {'x ESPO':>7}")
    for m, (t, rows, mu) in results.items():
        print(f"{m:10} {mu:>3} {t:>9.3f} {t / base_t:>7.2f} {rows:>15.1f} {rows / base_rows:>7.2f}")
    print(f"(JustGRPO's left-to-right rollouts cost {args.gen_length} forward passes per completion; "
          "diffusion rollouts here cost gen_length steps too, fewer with early stop.)")


if __name__ == "__main__":
    main()
