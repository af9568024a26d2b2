"""The stratified mask schemes against exact enumeration: size law, unbiasedness, reproducibility."""
import itertools
import math

import pytest
import torch

from dlm_bench.config import MASK_SCHEMES
from dlm_bench.likelihood import SCHEMES, ScoredBatch, draw_masks, masked_token_logprobs


def _size_law(L: int, n: int) -> torch.Tensor:
    """Exact P(l_k = l) of the stratified rule l_k = floor(L (u + k) / n) + 1, u ~ U[0, 1): the length
    of the u-interval mapping to each size, from the breakpoints where L (u + k) / n crosses an integer."""
    law = torch.zeros(n, L + 1, dtype=torch.float64)
    for k in range(n):
        cuts = sorted({0.0, 1.0, *[(j * n / L) - k for j in range(L + 1) if 0 < (j * n / L) - k < 1]})
        for a, b in zip(cuts, cuts[1:]):
            l = math.floor(L * ((a + b) / 2 + k) / n) + 1
            law[k, l] += b - a
    return law


@pytest.mark.parametrize("L,n", [(4, 3), (5, 2), (7, 4), (6, 8), (1, 3), (12, 5)])
def test_pooled_size_law_is_exactly_uniform(L, n):
    law = _size_law(L, n)
    assert law.sum(1).tolist() == pytest.approx([1.0] * n)
    assert law[:, 1:].mean(0).tolist() == pytest.approx([1 / L] * L, abs=1e-15)    # averaged over the n draws
    # and draw_masks follows that law: sizes of many rows, per draw index (4 sigma)
    R = 20000
    d = draw_masks(torch.ones(R, L, dtype=torch.bool), n, torch.Generator().manual_seed(L * 100 + n), "stratified")
    sizes = d.masks.sum(-1)                                           # [n, R]
    assert torch.allclose(d.weights, L / sizes.double(), rtol=1e-15)
    for k in range(n):
        freq = torch.bincount(sizes[k], minlength=L + 1).double() / R
        se = (law[k] * (1 - law[k]) / R).sqrt()
        assert ((freq - law[k]).abs() <= 4 * se + 1e-12).all(), (k, freq, law[k])


def _exact_elbo_and_table(dlm, batch):
    G = batch.completion.shape[1]
    subsets = [m for l in range(1, G + 1) for m in itertools.combinations(range(G), l)]
    masks = torch.zeros(len(subsets), 1, G, dtype=torch.bool)
    for k, m in enumerate(subsets):
        masks[k, 0, list(m)] = True
    with torch.no_grad():
        S = masked_token_logprobs(dlm, batch, masks).sum(-1)[:, 0].double()
    sizes = masks[:, 0].sum(-1)
    means = {l: float(S[sizes == l].mean()) for l in range(1, G + 1)}
    return sum(means[l] / l for l in means), means


@pytest.mark.parametrize("scheme,n", [("stratified", 3), ("stratified", 4), ("stratified_paired", 4)])
def test_stratified_elbo_is_unbiased_against_enumeration(tiny, scheme, n):
    torch.manual_seed(1)
    y = [tiny.tokenizer.convert_tokens_to_ids(c) for c in "4 ok!"]
    batch = ScoredBatch.build(tiny, [tiny.prompt_ids("2+2=")], [y])
    exact, means = _exact_elbo_and_table(tiny, batch)
    L = len(y)
    # exact expectation of the estimator from the size law: (1/n) sum_k sum_l P(l_k = l) (L/l) mean_l
    law = _size_law(L, n)
    expect = sum(law[k, l] * L / l * means[l] for k in range(n) for l in range(1, L + 1)) / n
    assert expect == pytest.approx(exact, abs=1e-9)
    # Monte Carlo through the real forward passes (each mask is marginally a uniform subset)
    R = 1500
    rows = batch.index(torch.zeros(R, dtype=torch.long))
    d = draw_masks(rows.valid, n, torch.Generator().manual_seed(7), scheme)
    with torch.no_grad():
        lp = masked_token_logprobs(tiny, rows, d.masks, chunk=1024).sum(-1).double()
    est = (d.weights * lp).mean(0)
    se = float(est.std()) / math.sqrt(R)
    assert abs(float(est.mean()) - exact) < 4 * se


def test_stratified_paired_couples_positions_and_schemes_are_registered():
    valid = torch.ones(3, 6, dtype=torch.bool)
    d = draw_masks(valid, 4, torch.Generator().manual_seed(0), "stratified_paired")
    assert d.coupled and d.masks.shape == (4, 3, 6)
    plain = draw_masks(valid, 4, torch.Generator().manual_seed(0), "stratified")
    # the same sizes as the plain scheme (one offset per row), pair k = sizes k and k + n/2
    assert sorted(d.masks.sum(-1)[:, 0].tolist()) == sorted(plain.masks.sum(-1)[:, 0].tolist())
    for k in (0, 2):
        a, b = d.masks[k], d.masks[k + 1]
        small = (a.sum(-1) + b.sum(-1)) <= 6
        assert not (a & b)[small].any()                      # disjoint while they fit
    with pytest.raises(ValueError, match="pairs"):
        draw_masks(valid, 3, torch.Generator(), "stratified_paired")
    assert {"stratified", "stratified_paired"} <= set(SCHEMES) and set(SCHEMES) == set(MASK_SCHEMES)
    # reproducible from the generator, and padding is never masked
    v = torch.tensor([[True] * 4 + [False] * 2])
    m1 = draw_masks(v, 5, torch.Generator().manual_seed(3), "stratified").masks
    assert torch.equal(m1, draw_masks(v, 5, torch.Generator().manual_seed(3), "stratified").masks)
    assert not m1[..., 4:].any()
