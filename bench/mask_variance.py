"""Variance of the Monte-Carlo ELBO at equal forward passes, against exact enumeration.

For each prompt/answer pair (answers of L <= 14 tokens) every nonempty mask subset M is scored once,
S(M) = sum_{i in M} log p(y_i | x, y with M masked), so the exact ELBO
    ELBO = sum_l (1/l) mean_{|M| = l} S(M)
is a sum over the table, and any scheme's estimate is a table look-up: the masks come from the real
`draw_masks` (R independent replicate rows), with no further forward passes. For each scheme and
n forward passes per estimate it reports the variance over replicates, the mean minus the exact
ELBO (in standard errors), and, for LLaDA's reference count rule (get_log_likelihood.py: offset
k ~ U{1..L}, counts round(linspace(k, k + (n-1) L / n, n)) wrapped into 1..L), the exact expectation
of that rule, which is biased where L / n is not an integer (torch.round rounds halves to even).

Run: .venv/bin/python bench/mask_variance.py [--model checkpoints/testbed-base | random] [--reps 20000]
(`random`: the tests' random-init 1M-parameter tiny model.)
"""
from __future__ import annotations

import argparse
import itertools
import math

import torch

from dlm_bench.likelihood import ScoredBatch, draw_masks, masked_token_logprobs
from dlm_bench.models import load_model

SCHEMES = ("independent", "paired", "espo", "stratified", "stratified_paired")
PAIRS = [("12+7", "19"), ("3*4", "12"), ("hello", "olleh"), ("9-5", "4 ok"), ("abc", "cba!?"),
         ("2+2=", "4 is it"), ("77+1", "78 yes!"), ("xyz", "zyx zyx"), ("5*5", "25 is 5 sq"),
         ("1+1", "2, since 1+1=2")]


def random_tiny():
    """The tests' random-init 1M-parameter tiny model (seed 0), as docs/likelihood.md's first table."""
    import tempfile
    from dlm_bench.models.chartok import build_char_tokenizer
    from dlm_bench.models.tiny import build_tiny
    tok = build_char_tokenizer()
    torch.manual_seed(0)
    model = build_tiny(tok, "1m")
    d = tempfile.mkdtemp(prefix="mask_variance_")
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return load_model(d, device="cpu")


def subset_table(dlm, prompt: str, answer: str) -> tuple[torch.Tensor, int]:
    """S indexed by the bitmask of M (S[0] = 0: the empty mask scores nothing), and L."""
    ids = [dlm.tokenizer.convert_tokens_to_ids(c) for c in answer]
    batch = ScoredBatch.build(dlm, [dlm.prompt_ids(prompt)], [ids])
    L = len(ids)
    masks = torch.zeros(2 ** L, 1, L, dtype=torch.bool)
    for code in range(2 ** L):
        masks[code, 0] = torch.tensor([(code >> i) & 1 for i in range(L)], dtype=torch.bool)
    with torch.no_grad():
        lp = masked_token_logprobs(dlm, batch, masks, chunk=256).sum(-1)[:, 0].double()
    return lp, L


def size_means(S: torch.Tensor, L: int) -> torch.Tensor:
    """mean_{|M| = l} S(M) for l = 0..L."""
    sizes = torch.tensor([bin(c).count("1") for c in range(2 ** L)])
    return torch.stack([S[sizes == l].mean() for l in range(L + 1)])


def exact_elbo(S, L) -> float:
    m = size_means(S, L)
    return float(sum(m[l] / l for l in range(1, L + 1)))


def reference_counts(k: int, n: int, L: int) -> list[int]:
    """LLaDA's count rule for one MC batch of n rows and offset k (reimplemented, not copied)."""
    x = torch.round(torch.linspace(float(k), k + (n - 1) * (L / n), steps=n)).long()
    return (((x - 1) % L) + 1).tolist()


def reference_expectation(S, L, n) -> float:
    """Exact expectation of the reference estimate: k uniform on 1..L, then mean of (L/x) S-means."""
    m = size_means(S, L)
    return float(sum(sum(L / x * m[x] for x in reference_counts(k, n, L)) / n for k in range(1, L + 1)) / L)


def estimates(S, L, n, scheme, reps, gen) -> torch.Tensor:
    valid = torch.ones(reps, L, dtype=torch.bool)
    if scheme == "reference":
        ks = torch.randint(1, L + 1, (reps,), generator=gen).tolist()
        counts = torch.tensor([reference_counts(k, n, L) for k in ks]).T          # [n, R]
        ranks = torch.rand(n, reps, L, generator=gen).argsort(-1).argsort(-1)
        masks, weights = ranks < counts[..., None], L / counts.double()
    else:
        d = draw_masks(valid, n, gen, scheme)
        masks, weights = d.masks, d.weights
    code = (masks.long() << torch.arange(L)).sum(-1)                              # [n, R]
    return (weights * S[code]).mean(0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="checkpoints/testbed-base")
    ap.add_argument("--reps", type=int, default=20000)
    ap.add_argument("--passes", default="2,4,8")
    args = ap.parse_args()
    torch.set_num_threads(1)
    dlm = random_tiny() if args.model == "random" else load_model(args.model, device="cpu")
    gen = torch.Generator().manual_seed(0)
    passes = [int(p) for p in args.passes.split(",")]
    ratios = {(s, n): [] for s in SCHEMES + ("reference",) for n in passes}
    print(f"model {args.model}; {args.reps} replicates per cell; variance of one estimate from n forward passes")
    print("pair | L | ELBO | n | " + " | ".join(f"{s} var (z)" for s in SCHEMES + ("reference",))
          + " | reference exact bias")
    for prompt, answer in PAIRS:
        S, L = subset_table(dlm, prompt, answer)
        exact = exact_elbo(S, L)
        for n in passes:
            cells, var = [], {}
            for s in SCHEMES + ("reference",):
                if s in ("paired", "espo", "stratified_paired") and n % 2:
                    cells.append("-")
                    continue
                est = estimates(S, L, n, s, args.reps, gen)
                var[s] = float(est.var())
                z = (float(est.mean()) - exact) / math.sqrt(var[s] / args.reps) if var[s] > 0 else 0.0
                cells.append(f"{var[s]:.4g} ({z:+.1f})")
            for s in var:
                ratios[(s, n)].append(var[s] / var["stratified"])
            bias = reference_expectation(S, L, n) - exact
            print(f"{prompt!r}->{answer!r} | {L} | {exact:.3f} | {n} | " + " | ".join(cells) + f" | {bias:+.4f}")
    print("\nvariance / stratified variance, geometric mean over pairs (min-max):")
    for n in passes:
        row = []
        for s in SCHEMES + ("reference",):
            r = ratios[(s, n)]
            if r:
                g = math.exp(sum(math.log(x) for x in r) / len(r))
                row.append(f"{s} {g:.3g} ({min(r):.3g}-{max(r):.3g})")
        print(f"n = {n}: " + "; ".join(row))


if __name__ == "__main__":
    main()
