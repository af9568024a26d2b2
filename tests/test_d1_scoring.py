"""diffu-GRPO, wd1 and SPG score through `likelihood.py` (issue 28): the same updates as when they
built their own masked inputs, and the memory bounds of every other method (scoring rows at most
`score_rows`, the output head applied at the scored positions only).

The reference is the code they used before, kept here verbatim: `masked_logprobs` and
`one_step_logprobs` of dlm_bench/methods/diffu_grpo.py at commit 866874c (wd1 and SPG imported them)."""
import copy
import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dlm_bench.likelihood import ScoredBatch, block_random_masks, masked_token_logprobs, one_step_logprobs, prompt_masks
from dlm_bench.methods import diffu_grpo, spg, wd1
from dlm_bench.methods.diffu_grpo import completion_positions
from test_micro_batch import _run
from test_train import TINY, weights


# ----------------------------------------------------------------------------- the code before (866874c)

def old_masked_logprobs(dlm, batch: ScoredBatch, prompt_mask: torch.Tensor, comp_mask: torch.Tensor,
                        chunk: int = 64) -> torch.Tensor:
    K, N, G = comp_mask.shape
    ids = torch.where(prompt_mask.reshape(K * N, -1), dlm.mask_id, batch.prompt_ids.repeat(K, 1))
    comp = torch.where(comp_mask.reshape(K * N, G), dlm.mask_id, batch.completion.repeat(K, 1))
    x = torch.cat([ids, comp], 1)
    att = torch.cat([batch.prompt_mask.repeat(K, 1), torch.ones_like(comp, dtype=batch.prompt_mask.dtype)], 1)
    P, target = ids.shape[1], batch.completion.repeat(K, 1)
    out = []
    for s in range(0, K * N, chunk):
        logits = dlm.logits(x[s:s + chunk], att[s:s + chunk])[:, P:]
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        out.append(torch.gather(F.log_softmax(logits, -1), -1, target[s:s + chunk, :, None]).squeeze(-1))
    return torch.cat(out).reshape(K, N, G)


def old_one_step_logprobs(dlm, batch: ScoredBatch, prompt_mask: torch.Tensor, scored=None) -> torch.Tensor:
    comp = torch.ones_like(batch.completion, dtype=torch.bool)[None]
    return old_masked_logprobs(dlm, batch, prompt_mask[None], comp)[0]


def old_wd1_logprobs(dlm, batch, prompt_mask, positions):
    """wd1's call before: `(one_step_logprobs(policy, batch, mask) * positions).sum(-1)`."""
    return old_one_step_logprobs(dlm, batch, prompt_mask) * positions


def old_spg_logprobs(dlm, batch, masks, chunk=64, entropy=False, prompt_masked=None, scored=None):
    """SPG's call before: `masked_logprobs(policy, batch, prompt_masks, completion_masks)`."""
    return old_masked_logprobs(dlm, batch, prompt_masked, masks, chunk)


def use_old_code(monkeypatch):
    monkeypatch.setattr(diffu_grpo, "one_step_logprobs", old_one_step_logprobs)
    monkeypatch.setattr(wd1, "one_step_logprobs", old_wd1_logprobs)
    monkeypatch.setattr(spg, "masked_token_logprobs", old_spg_logprobs)


# ----------------------------------------------------------------------------- the same updates

CASES = {
    "diffu_grpo": ("diffu_grpo", dict(inner_updates=2)),                 # old and reference scores
    "diffu_grpo-window": ("diffu_grpo", dict(positions="window", beta=0.0)),
    "wd1": ("wd1", dict(inner_updates=2)),
    "spg": ("spg", dict(inner_updates=2)),
    "spg-eubo": ("spg", dict(negative_bound="eubo", positions="window", mask_block_length=4)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_weights_after_two_updates_equal_the_old_masked_inputs(case, tiny_dir, tmp_path, monkeypatch,
                                                               varied_rewards):
    """float64, 2 rollout batches (2 or 4 optimizer updates), backward chunks of 2 completions: every
    weight is bit-identical to the run with the methods' own masked-input code."""
    method, extra = CASES[case]
    over = dict(TINY, lr=1e-3, **extra)
    new, _ = _run(method, dict(over, _model=tiny_dir), tmp_path / "new", 2)
    use_old_code(monkeypatch)
    old, _ = _run(method, dict(over, _model=tiny_dir), tmp_path / "old", 2)
    base = weights(Path(tiny_dir))
    assert sorted(new) == sorted(old) == sorted(base) and {t.dtype for t in new.values()} == {torch.float64}
    moved = [k for k in new if not torch.equal(new[k], base[k].double())]
    assert len(moved) > len(new) // 2                      # the updates changed the weights
    assert [k for k in new if not torch.equal(new[k], old[k])] == []


# ----------------------------------------------------------------------------- the memory bounds

def _spy(dlm, rows_seen: list, head_rows: list):
    """A copy of `dlm` that records the rows of every forward and of every head application."""
    d = dataclasses.replace(dlm, model=copy.deepcopy(dlm.model), gather_logits=True, score_rows=2)
    hidden, head = d.hidden, d.logits_head()

    def spy_hidden(x, att=None):
        rows_seen.append(x.shape[0])
        return hidden(x, att)

    def spy_head(states):
        head_rows.append(states.shape[0])
        return head(states)
    d.hidden, d.logits_head = spy_hidden, lambda: spy_head
    return d


def _batch(dlm):
    ids = [dlm.tokenizer.convert_tokens_to_ids(c) for c in "0123456789+="]
    eos = dlm.eos_id
    comps = [ids[:3] + [eos] * 5, ids[3:9] + [eos, eos], ids[:8], ids[5:7] + [eos] * 6, ids[1:6] + [eos] * 3]
    prompts = [dlm.prompt_ids(p) for p in ("1+2=", "3+4=", "12+5=", "1+1=", "9=")]
    return ScoredBatch.build(dlm, prompts, comps)


def test_one_step_scores_in_bounded_rows_with_the_head_at_scored_positions_only(tiny):
    dlm = dataclasses.replace(tiny, model=copy.deepcopy(tiny.model).double())
    batch = _batch(dlm)
    pos = completion_positions(dlm, batch, "to_eos")
    assert 0 < int(pos.sum()) < pos.numel()
    pm = prompt_masks(batch, 0.5, seed=3)[0]
    rows, heads = [], []
    spied = _spy(dlm, rows, heads)
    got = one_step_logprobs(spied, batch, pm, pos)
    with torch.no_grad():
        want = old_one_step_logprobs(dlm, batch, pm)
    assert rows and max(rows) <= 2 and sum(rows) == batch.completion.shape[0]
    assert sum(heads) == int(pos.sum())                    # the head saw the scored positions only
    assert torch.allclose(got[pos], want[pos], rtol=0, atol=1e-12) and not got[~pos].any()
    got.sum().backward()                                    # the gathered path carries the gradient
    assert float(spied.model.get_output_embeddings().weight.grad.abs().sum()) > 0


def test_block_masks_score_in_bounded_rows_with_the_head_at_scored_positions_only(tiny):
    dlm = dataclasses.replace(tiny, model=copy.deepcopy(tiny.model).double())
    batch = _batch(dlm)
    pos = completion_positions(dlm, batch, "to_eos")
    pm, cm = block_random_masks(batch, pos, 4, 2, 0.15, 0.0, 1.0, seed=7)
    scored = cm & pos[None]
    rows, heads = [], []
    with torch.no_grad():
        got = masked_token_logprobs(_spy(dlm, rows, heads), batch, cm, prompt_masked=pm, scored=scored)
        want = old_masked_logprobs(dlm, batch, pm, cm)
    assert max(rows) <= 2 and sum(rows) == 2 * batch.completion.shape[0]
    assert sum(heads) == int(scored.sum()) < int(cm.sum())
    assert torch.allclose(got[scored], want[scored], rtol=0, atol=1e-12) and not got[~scored].any()
    # the SPG bounds read the masked scored positions only, so they are the old ones
    for negative in ("mix", "eubo", "elbo"):
        new = spg.spg_scores(got, cm, pos, 1.5, 0.5, negative)
        old = spg.spg_scores(want, cm, pos, 1.5, 0.5, negative)
        assert all(torch.allclose(a, b, rtol=0, atol=1e-12) for a, b in zip(new, old))
