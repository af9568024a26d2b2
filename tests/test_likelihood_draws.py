"""The estimators issue 25's methods brought to dlm_bench.likelihood, each against a brute-force
computation on the tiny model: the memory-bounded draws (BGPO, EBPO), coupled-GRPO's complementary
pair, d2's step-merged trajectory likelihood and EBPO's block-level ELBO."""
import copy
import dataclasses
import itertools
import math
import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from dlm_bench.likelihood import (ScoredBatch, block_draws, block_elbo, bounded_token_logprobs, coupled_masks,
                                  coupled_token_logprobs, left_to_right_logprob,
                                  masked_token_logprobs, segment_token_logprobs, step_segments)
from dlm_bench.methods.diffu_grpo import one_step_logprobs


def _ids(dlm, text):
    return [dlm.tokenizer.convert_tokens_to_ids(c) for c in text]


def _logprob_at(dlm, batch, row: int, masked: list[int], pos: int, prompt_masked=None) -> float:
    """log p(y_pos | x, y with `masked` masked) for one row, from one forward built by hand."""
    x = batch.prompt_ids[row:row + 1].clone()
    if prompt_masked is not None:
        x[0, prompt_masked] = dlm.mask_id
    comp = batch.completion[row:row + 1].clone()
    comp[0, masked] = dlm.mask_id
    ids = torch.cat([x, comp], 1)
    att = torch.cat([batch.prompt_mask[row:row + 1], torch.ones_like(comp)], 1)
    logits = dlm.logits(ids, att)[0, x.shape[1] + pos].double()
    return float(torch.log_softmax(logits, -1)[batch.completion[row, pos]])


class LiveBytes(TorchDispatchMode):
    """Peak bytes of the tensors created while active (a storage counts until it is freed), through
    forward and backward: what `torch.cuda.max_memory_allocated` measures, on CPU."""

    def __init__(self):
        super().__init__()
        self.live, self.peak, self.seen = 0, 0, set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                s = t.untyped_storage()
                key, n = s.data_ptr(), s.nbytes()
                if n and key not in self.seen:
                    self.seen.add(key)
                    self.live += n
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(s, self._free, key, n)
        return out

    def _free(self, key, n):
        self.live -= n
        self.seen.discard(key)


# ----------------------------------------------------------------------------- memory-bounded draws

def test_bounded_draws_give_the_same_gradient_with_memory_flat_in_the_number_of_draws(tiny):
    tiny = dataclasses.replace(tiny, model=copy.deepcopy(tiny.model).double())     # exact comparison
    batch = ScoredBatch.build(tiny, [tiny.prompt_ids("1+2=")] * 3, [_ids(tiny, "12345678901234567890")] * 3)
    params = [p for p in tiny.model.parameters() if p.requires_grad]
    peaks = {}
    for K in (2, 8):
        masks = torch.rand(K, 3, 20, generator=torch.Generator().manual_seed(K)) < 0.5
        grads = {}
        for name, fn in (("plain", masked_token_logprobs), ("bounded", bounded_token_logprobs)):
            with LiveBytes() as mem:
                lp = fn(tiny, batch, masks)
                loss = torch.logsumexp(lp.sum(-1), 0).sum()      # a nonlinear function of all draws
                g = torch.autograd.grad(loss, params)
            grads[name] = (lp.detach(), g)
            peaks[name, K] = mem.peak
        assert torch.equal(grads["plain"][0], grads["bounded"][0])
        for a, b in zip(grads["plain"][1], grads["bounded"][1]):
            assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)
    # plain: every draw's activations are kept until the backward; bounded: one draw's at a time
    assert peaks["plain", 8] > 2.5 * peaks["plain", 2]
    assert peaks["bounded", 8] < 1.1 * peaks["bounded", 2]
    assert peaks["bounded", 8] < 0.4 * peaks["plain", 8]
    with torch.no_grad():                                          # no autograd: the plain call
        assert torch.equal(bounded_token_logprobs(tiny, batch, masks), masked_token_logprobs(tiny, batch, masks))


# ----------------------------------------------------------------------------- coupled-GRPO

def test_coupled_pair_scores_each_position_once_against_hand_built_forwards(tiny):
    valid = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    batch = ScoredBatch.build(tiny, [tiny.prompt_ids("3*4="), tiny.prompt_ids("9=")],
                              [_ids(tiny, "12 ok!"), _ids(tiny, "9 ye")], lengths=[6, 4])
    assert torch.equal(batch.valid, valid)
    ts = []
    for seed in range(40):
        masks, t = coupled_masks(valid, torch.Generator().manual_seed(seed))
        ts.append(t)
        assert torch.equal(masks[0], valid) and torch.equal(masks[1] | masks[2], valid)
        assert not (masks[1] & masks[2]).any()
    assert 0.2 <= min(ts) and max(ts) <= 0.8 and max(ts) - min(ts) > 0.3
    masks, t = coupled_masks(valid, torch.Generator().manual_seed(3))
    with torch.no_grad():
        est = coupled_token_logprobs(tiny, batch, masks, t)
        for row in range(2):
            for pos in range(6):
                if not valid[row, pos]:
                    assert est[row, pos] == 0
                    continue
                full = _logprob_at(tiny, batch, row, list(range(int(valid[row].sum()))), pos)
                k = 1 if masks[1, row, pos] else 2
                part = _logprob_at(tiny, batch, row, masks[k, row].nonzero().flatten().tolist(), pos)
                w = 1 / t if k == 1 else 1 / (1 - t)
                assert float(est[row, pos]) == pytest.approx((full + w * part) / 2, abs=1e-4)


# ----------------------------------------------------------------------------- d2 trajectory likelihood

def test_step_segments_cut_where_d2_cuts():
    """d2's generate(): `segments = [int(k * (steps / N)) for k in 1..N-1]`, a token decoded at step s
    (0-based) lands in trajectory_mask[len(trajectory) - 1], the number of segments started by then."""
    for steps, n in ((8, 3), (128, 8), (10, 4), (5, 5), (6, 1)):
        cuts = [int(k * (steps / n)) for k in range(1, n)]
        expect, started = [], 1
        for s in range(steps):
            expect.append(started - 1)
            if started < n and s + 1 == cuts[started - 1]:
                started += 1
        got = step_segments(torch.arange(steps)[None], steps, n)[0].tolist()
        assert got == expect, (steps, n)
    assert step_segments(torch.tensor([[-1, 3, 4]]), 8, 2).tolist() == [[-1, 0, 1]]


def test_segment_likelihood_one_segment_is_d1s_and_one_step_each_is_exact(tiny):
    y = _ids(tiny, "7 is ok")
    G = len(y)
    batch = ScoredBatch.build(tiny, [tiny.prompt_ids("3+4=")] * 2, [y, y])
    scored = batch.valid
    pm = torch.zeros_like(batch.prompt_mask, dtype=torch.bool)
    pm[0, -2] = True                                              # row 0: one prompt token masked
    with torch.no_grad():
        # one segment: every token scored with the whole completion masked (d1's estimate)
        one = segment_token_logprobs(tiny, batch, torch.zeros(2, G, dtype=torch.long), 1, scored, pm)
        assert torch.allclose(one, one_step_logprobs(tiny, batch, pm), atol=1e-5)
        # one token per step, left to right: the exact left-to-right log-probability
        order = torch.arange(G)[None].expand(2, -1)
        exact = segment_token_logprobs(tiny, batch, step_segments(order, G, G), G, scored)
        assert torch.allclose(exact, left_to_right_logprob(tiny, batch, per_token=True), atol=1e-5)
        # any order, any merge: each token against a hand-built input of its segment's start state
        step_map = torch.tensor([[4, 0, 6, 1, 5, 2, 3], [6, 5, 4, 3, 2, 1, 0]])
        seg = step_segments(step_map, 7, 3)
        got = segment_token_logprobs(tiny, batch, seg, 3, scored, pm)
        bounded = segment_token_logprobs(tiny, batch, seg, 3, scored, pm, bounded=False)
        assert torch.equal(got, bounded)
        for row in range(2):
            for pos in range(G):
                later = (seg[row] >= seg[row, pos]).nonzero().flatten().tolist()
                hand = _logprob_at(tiny, batch, row, later, pos, [pm.shape[1] - 2] if row == 0 else None)
                assert float(got[row, pos]) == pytest.approx(hand, abs=1e-4)


# ----------------------------------------------------------------------------- EBPO block ELBO

def _exact_block_elbo(dlm, batch, block: int) -> float:
    """sum over blocks b of the exact ELBO of y_b given the clean blocks before it and every later
    position masked: sum_l (1/l) mean over size-l subsets M of b of (len_b) ... written as the expectation
    of DARE's estimator, (len_b / l) sum_{i in M} log p, over l ~ U{1..len_b} and M uniform of size l."""
    G = batch.completion.shape[1]
    total = 0.0
    for start in range(0, G, block):
        pos = list(range(start, min(G, start + block)))
        n = len(pos)
        for l in range(1, n + 1):
            subsets = list(itertools.combinations(pos, l))
            masks = torch.zeros(len(subsets), 1, G, dtype=torch.bool)
            for k, m in enumerate(subsets):
                masks[k, 0, list(m)] = True
                masks[k, 0, start + n:] = True
            lp = masked_token_logprobs(dlm, batch, masks, scored=masks & (torch.arange(G) < start + n))
            total += float((n / l) * lp.sum(-1)[:, 0].double().mean()) / n
    return total


def test_block_elbo_block_of_one_is_left_to_right_and_unbiased_against_enumeration(tiny):
    y = _ids(tiny, "4 ok!")
    batch = ScoredBatch.build(tiny, [tiny.prompt_ids("2+2=")], [y])
    with torch.no_grad():
        d = block_draws(batch.valid, 1, 3, torch.Generator().manual_seed(0))
        assert (d.weights == 1).all() and d.inputs.shape[0] == 3 * len(y)
        assert block_elbo(tiny, batch, d).item() == pytest.approx(left_to_right_logprob(tiny, batch).item(), abs=1e-4)
        exact = _exact_block_elbo(tiny, batch, 2)
        R = 600
        rows = batch.index(torch.zeros(R, dtype=torch.long))
        d = block_draws(rows.valid, 2, 2, torch.Generator().manual_seed(1))
        # clean before the block, masked after it: blocks of 2 on 5 tokens, draw (j, b) at j * 3 + b
        assert not d.inputs[1, :, :2].any() and d.inputs[1, :, 4:].all() and d.targets[1, :, 2:4].any(-1).all()
        est = block_elbo(tiny, rows, d, chunk=1024).double()
    se = float(est.std()) / math.sqrt(R)
    assert abs(float(est.mean()) - exact) < 4 * se, (float(est.mean()), exact, se)
    # one block covering the window: the sequence ELBO's size law (uniform l, weight L / l)
    d = block_draws(torch.ones(2000, 5, dtype=torch.bool), 8, 1, torch.Generator().manual_seed(2))
    counts = torch.bincount(d.targets[0].sum(-1), minlength=6)[1:].double() / 2000
    assert (counts - 0.2).abs().max() < 0.04
