"""Issue 9's memory bounds change no number: gradient checkpointing gives the same update, and scores
from the head applied at masked positions only (`gather_logits`) equal the full-logits scores."""
import copy
import dataclasses

import pytest
import torch

from dlm_bench.likelihood import ScoredBatch, draw_masks, masked_token_logprobs
from dlm_bench.methods import get_method, make_config
from dlm_bench.models import LoraSpec, checkpointing, load_model
from shared_files import real_model_snapshot
from test_loss_regression import _rollouts

LLADA, LLADA_FIX, DREAM = "llada-8b-instruct", "llada-8b-instruct-maskfix", "dream-v0-instruct-7b"


@pytest.fixture(scope="module")
def real_dirs(tmp_path_factory):
    from dlm_bench.models.random_init import build_tiny
    root = tmp_path_factory.mktemp("real")
    return {n: str(build_tiny(real_model_snapshot(n), root / n, seed=1)) for n in (LLADA, LLADA_FIX, DREAM)}


def _scores(dlm, gather):
    """Log-probs, entropies and their gradient with the head gathered or not."""
    dlm.gather_logits = gather
    prompts = [dlm.prompt_ids("What is 2+3?"), dlm.prompt_ids("hi")]        # left padding in the batch
    b = ScoredBatch.build(dlm, prompts, [[15, 20, 30, 40, 50], [7, 8, 9]])
    draw = draw_masks(b.valid, 4, torch.Generator().manual_seed(0))
    dlm.model.zero_grad()
    lp, ent = masked_token_logprobs(dlm, b, draw.masks, entropy=True)
    (lp.sum() + 0.1 * ent.sum()).backward()
    grad = torch.cat([p.grad.flatten() for p in dlm.model.parameters() if p.grad is not None])
    return lp.detach(), ent.detach(), grad


@pytest.mark.parametrize("name", ["tiny", LLADA, LLADA_FIX, DREAM])
def test_gathered_head_scores_equal_full_logits(name, tiny_dir, real_dirs):
    dlm = load_model(tiny_dir if name == "tiny" else real_dirs[name], device="cpu")
    assert dlm.gather_logits == (name != "tiny")          # the load-time probe; the tiny model keeps full logits
    full, gathered = _scores(dlm, False), _scores(dlm, True)
    assert torch.allclose(full[0], gathered[0], atol=1e-5) and torch.allclose(full[1], gathered[1], atol=1e-5)
    assert float((full[2] - gathered[2]).norm() / full[2].norm()) < 1e-5
    assert float(full[0].abs().sum()) > 0


@pytest.mark.parametrize("name", [LLADA_FIX, DREAM])
def test_hidden_without_the_head_is_the_last_hidden_state(name, real_dirs):
    dlm = load_model(real_dirs[name], device="cpu")
    x, att = dlm.pad_left([dlm.prompt_ids("What is 2+3?"), dlm.prompt_ids("hi")])
    with torch.no_grad():
        assert torch.equal(dlm.hidden(x, att), dlm._forward(x, att, hidden=True))


def _update(model_dir, method, gc, lora_dropout=0.1, steps=2, start=None, mbs=None):
    """`steps` updates of one method on fixed rollouts, as the loop makes them (dropout seeded per loss)."""
    torch.manual_seed(0)                                     # the same fresh adapter
    dlm = load_model(model_dir, device="cpu", dtype="float64",
                     lora=None if lora_dropout is None else LoraSpec(r=4, alpha=8, dropout=lora_dropout))
    assert dlm.set_gradient_checkpointing(gc) == gc
    ref = dlm if lora_dropout is None else None
    if ref is None:
        from dlm_bench.models.adapter import AdapterDisabled
        ref = AdapterDisabled(dlm)
    torch.manual_seed(5)
    cls = get_method(method)
    m = cls(make_config(cls, {"inner_updates": steps}), policy=dlm)
    m.extra_modules.double()
    ro = _rollouts(dlm)
    dlm.model.eval()
    with torch.no_grad():
        m.prepare(ro, dlm, ref)
    if start is not None:
        start.update({n: p.detach().clone() for n, p in dlm.model.named_parameters() if p.requires_grad})
    params = [p for p in dlm.model.parameters() if p.requires_grad] + list(m.extra_modules.parameters())
    opt = torch.optim.AdamW(params, lr=1e-2)
    dlm.model.train()
    from dlm_bench.training.loop import row_chunks
    if mbs is not None:
        dlm.bound_memory(gc, mbs)                        # also bounds the scoring rows, as the loop does
        assert dlm.score_rows == mbs
    parts = [ro] if mbs is None else row_chunks(m, ro, mbs)
    counts = [m.loss_count(p) for p in parts]
    for j in range(steps):
        opt.zero_grad()
        for k, (p, c) in enumerate(zip(parts, counts)):
            torch.manual_seed(100 + j + 1000 * k)
            loss, _ = m.loss(p, dlm, ref)
            (loss * (c / sum(counts))).backward()
        opt.step()
    return {n: p.detach().clone() for n, p in dlm.model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("method", ["trafl", "espo"])
@pytest.mark.parametrize("name", [LLADA_FIX, DREAM])
def test_checkpointing_gives_the_same_lora_update(name, method, real_dirs):
    """float64, LoRA dropout 0.1: the recompute must replay the dropout masks."""
    start = {}
    a, b = _update(real_dirs[name], method, False, start=start), _update(real_dirs[name], method, True)
    for k in a:
        assert float((a[k] - start[k]).norm()) > 0, k              # the update moved every adapter weight
        assert float((a[k] - b[k]).norm()) <= 1e-10 * float((a[k] - start[k]).norm()), k


@pytest.mark.parametrize("method", ["trafl", "espo"])
def test_micro_batches_with_bounded_scoring_give_the_same_update(method, real_dirs):
    """Tiny real LLaDA, defaults (checkpointing, gathered head, scoring rows = micro_batch_size): one
    completion per backward gives the whole batch's update, in float64."""
    start = {}
    whole = _update(real_dirs[LLADA_FIX], method, True, lora_dropout=0.0, start=start)
    one = _update(real_dirs[LLADA_FIX], method, True, lora_dropout=0.0, mbs=1)
    for k in whole:
        # 1e-6: float64, but Adam (lr 1e-2) divides near-zero gradient entries by their own size
        assert float((one[k] - whole[k]).norm()) <= 1e-6 * float((whole[k] - start[k]).norm()), k


def test_checkpointing_defaults(tiny_dir, real_dirs):
    assert not load_model(tiny_dir, device="cpu").set_gradient_checkpointing()       # tiny: unchanged
    for name, how in ((LLADA_FIX, "llada"), (DREAM, "transformers")):
        dlm = load_model(real_dirs[name], device="cpu", lora=LoraSpec(r=4, alpha=8))
        assert dlm.set_gradient_checkpointing() and dlm.extra["gradient_checkpointing"] == how


def test_block_wrapping_fallback_same_gradient_and_safe_to_copy(tiny_dir):
    """The generic path (models without a switch), on the tiny model: the same gradient, recomputed
    blocks, and a deep copy (the frozen reference) runs its own weights."""
    plain = load_model(tiny_dir, device="cpu", dtype="float64")
    wrapped = load_model(tiny_dir, device="cpu", dtype="float64")
    assert checkpointing.wrap_blocks(wrapped.model) == 4
    ref = dataclasses.replace(wrapped, model=copy.deepcopy(wrapped.model))
    with torch.no_grad():
        for p in ref.model.parameters():
            p.mul_(0.5)
    grads, calls = [], [0]
    block = checkpointing._blocks(wrapped.model)[0]
    block.qkv.register_forward_pre_hook(lambda *a: calls.__setitem__(0, calls[0] + 1))   # inside the block
    for dlm in (plain, wrapped):
        dlm.model.train()
        b = ScoredBatch.build(dlm, [dlm.prompt_ids("1+2=")], [[5, 6, 7, 8]])
        lp = masked_token_logprobs(dlm, b, draw_masks(b.valid, 2, torch.Generator().manual_seed(1)).masks)
        lp.sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in dlm.model.parameters()]))
    assert calls[0] == 2                                   # forward, then the recompute in backward
    assert torch.allclose(grads[0], grads[1], rtol=1e-10, atol=1e-12)
    x = torch.tensor([plain.prompt_ids("1+2=")])
    with torch.no_grad():
        assert not torch.allclose(ref.logits(x), wrapped.logits(x))     # the copy uses its own weights
