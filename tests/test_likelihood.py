"""Likelihood estimators against quantities enumerated exactly on the tiny model."""
import itertools
import math

import pytest
import torch

from dlm_bench.likelihood import (ScoredBatch, collapse_steps, draw_masks, elbo, elbo_samples,
                                  left_to_right_logprob, masked_input, masked_token_logprobs, normalized_logprob,
                                  trace_logprobs, trace_samples, trajectory_inputs)


@pytest.fixture(scope="module")
def setup(tiny):
    torch.manual_seed(1)
    prompt = tiny.prompt_ids("2+2=")
    y = [tiny.tokenizer.convert_tokens_to_ids(c) for c in "4 ok"]
    return tiny, ScoredBatch.build(tiny, [prompt], [y])


def _exact_elbo(dlm, batch):
    """sum over l of the mean over size-l subsets M of (1/l) sum_{i in M} log p(y_i | y_notM)."""
    G = batch.completion.shape[1]
    subsets = [m for l in range(1, G + 1) for m in itertools.combinations(range(G), l)]
    masks = torch.zeros(len(subsets), 1, G, dtype=torch.bool)
    for k, m in enumerate(subsets):
        masks[k, 0, list(m)] = True
    lp = masked_token_logprobs(dlm, batch, masks).sum(-1)[:, 0].double()
    total = 0.0
    for l in range(1, G + 1):
        idx = [k for k, m in enumerate(subsets) if len(m) == l]
        total += (lp[idx] / l).mean().item()
    return total


def _order_logprobs(dlm, batch):
    """log p_sigma(y) for every decoding order sigma of the completion."""
    G = batch.completion.shape[1]
    out = []
    for order in itertools.permutations(range(G)):
        masks = torch.zeros(G, 1, G, dtype=torch.bool)
        for step, pos in enumerate(order):
            masks[step, 0, list(order[step:])] = True
        lp = masked_token_logprobs(dlm, batch, masks)[:, 0]        # [G steps, G positions]
        out.append(sum(lp[step, pos].item() for step, pos in enumerate(order)))
    return torch.tensor(out, dtype=torch.float64)


def test_elbo_is_the_order_average_and_a_lower_bound(setup):
    dlm, batch = setup
    with torch.no_grad():
        exact = _exact_elbo(dlm, batch)
        orders = _order_logprobs(dlm, batch)
    # Identity: the random-order ELBO is the average over decoding orders of log p_sigma(y) ...
    assert exact == pytest.approx(orders.mean().item(), abs=1e-4)
    # ... so by Jensen it lower-bounds the log-likelihood of the random-order sampler's mixture.
    log_mixture = (torch.logsumexp(orders, 0) - math.log(len(orders))).item()
    assert exact < log_mixture


@pytest.mark.parametrize("scheme", ["independent", "paired", "espo"])
def test_mc_elbo_is_unbiased(setup, scheme):
    dlm, batch = setup
    with torch.no_grad():
        exact = _exact_elbo(dlm, batch)
        draw = draw_masks(batch.valid, 800, torch.Generator().manual_seed(0), scheme)
        est = elbo_samples(dlm, batch, draw, chunk=512)[:, 0].double()
    if scheme != "independent":
        est = est.reshape(-1, 2).mean(1)  # one estimate per complementary pair
    se = est.std().item() / math.sqrt(len(est))
    assert abs(est.mean().item() - exact) < 4 * se
    assert normalized_logprob(dlm, batch, draw).item() == pytest.approx(
        elbo(dlm, batch, draw).item() / 4, rel=1e-5)


def test_variance_falls_with_samples_and_coupling_beats_independent(setup):
    dlm, batch = setup
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        indep = elbo_samples(dlm, batch, draw_masks(batch.valid, 2000, gen, "independent"), chunk=512)[:, 0]
        pairs = elbo_samples(dlm, batch, draw_masks(batch.valid, 2000, gen, "paired"), chunk=512)[:, 0]
    var_1 = indep.var().item()
    var_4 = indep.reshape(-1, 4).mean(1).var().item()        # 4 draws per estimate
    assert var_4 < var_1 / 2
    # Same cost (two forward passes): a complementary pair vs two independent draws.
    var_pair = pairs.reshape(-1, 2).mean(1).var().item()
    var_two = indep.reshape(-1, 2).mean(1).var().item()
    assert var_pair < var_two


def test_left_to_right_logprob_is_a_normalized_distribution(tiny):
    # All 105^2 completions of length 2: their left-to-right probabilities must sum to one.
    V = len(tiny.tokenizer)
    prompt = tiny.prompt_ids("hi")
    ys = [[a, b] for a in range(V) for b in range(V)]
    with torch.no_grad():
        batch = ScoredBatch.build(tiny, [prompt] * len(ys), ys)
        lp = left_to_right_logprob(tiny, batch, chunk=4096)
    assert torch.logsumexp(lp.double(), 0).exp().item() == pytest.approx(1.0, abs=1e-4)


def test_left_to_right_equals_the_identity_order(setup):
    dlm, batch = setup
    with torch.no_grad():
        assert left_to_right_logprob(dlm, batch).item() == pytest.approx(
            _order_logprobs(dlm, batch)[0].item(), abs=1e-4)


def test_trace_step_slicing_by_hand():
    step_map = torch.tensor([[0, 3, 1, 2, 1, 0]])
    valid = torch.ones_like(step_map, dtype=torch.bool)
    rows, masks, targets = trajectory_inputs(collapse_steps(step_map, valid, 1), valid)
    assert rows.tolist() == [0, 0, 0, 0]
    assert masks.int().tolist() == [[1, 1, 1, 1, 1, 1], [0, 1, 1, 1, 1, 0], [0, 1, 0, 1, 0, 0], [0, 1, 0, 0, 0, 0]]
    assert targets.int().tolist() == [[1, 0, 0, 0, 0, 1], [0, 0, 1, 0, 1, 0], [0, 0, 0, 1, 0, 0], [0, 1, 0, 0, 0, 0]]
    rows, masks, targets = trajectory_inputs(collapse_steps(step_map, valid, 2), valid)   # steps {0,1} and {2,3}
    assert masks.int().tolist() == [[1, 1, 1, 1, 1, 1], [0, 1, 0, 1, 0, 0]]
    assert targets.int().tolist() == [[1, 0, 1, 0, 1, 1], [0, 1, 0, 1, 0, 0]]
    rows, masks, targets = trajectory_inputs(collapse_steps(step_map, valid, 8), valid)   # one trace step
    assert masks.int().tolist() == [[1] * 6] and targets.int().tolist() == [[1] * 6]


def test_trace_logprobs_of_a_left_to_right_path_are_exact(setup):
    """TraceRL's samples of a one-token-per-step left-to-right trajectory score every token exactly as
    the left-to-right estimator does."""
    dlm, batch = setup
    rows, _, masks, targets = trace_samples(torch.arange(4)[None], batch.valid, 1)
    with torch.no_grad():
        per_sample = trace_logprobs(dlm, batch, rows, masks, targets)
        per_token = torch.zeros_like(per_sample[:1]).index_add(0, rows, per_sample)
        assert torch.allclose(per_token, left_to_right_logprob(dlm, batch, per_token=True), atol=1e-5)


def test_masked_input_masks_only_the_completion():
    x, att = masked_input(torch.tensor([[0, 5, 6]]), torch.tensor([[0, 1, 1]]), torch.tensor([[7, 8, 9]]),
                          torch.tensor([[True, False, True]]), mask_id=99)
    assert x.tolist() == [[0, 5, 6, 99, 8, 99]] and att.tolist() == [[0, 1, 1, 1, 1, 1]]


def test_padding_and_batching_do_not_change_scores(tiny):
    prompts = [tiny.prompt_ids("a"), tiny.prompt_ids("a much longer prompt")]
    ys = [[30, 31, 32], [40, 41, 42]]
    draw = draw_masks(torch.ones(2, 3, dtype=torch.bool), 4, torch.Generator().manual_seed(9))
    alone = type(draw)(draw.masks[:, 1:], draw.weights[:, 1:], draw.coupled)
    with torch.no_grad():
        both = elbo(tiny, ScoredBatch.build(tiny, prompts, ys), draw)
        lone = elbo(tiny, ScoredBatch.build(tiny, prompts[1:], ys[1:]), alone)
    assert both[1].item() == pytest.approx(lone[0].item(), abs=1e-5)
