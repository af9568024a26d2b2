"""The Hugging Face backend on small models built here (never downloads)."""
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import BertConfig, BertForMaskedLM, GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from dlm_bench.errors import UserError
from dlm_bench.likelihood import ScoredBatch, draw_masks, elbo
from dlm_bench.models import LoraSpec, load_model
from dlm_bench.sampler import SamplerConfig, make_generators, sample

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(40)]


def _word_tokenizer(with_mask=True):
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    kw = dict(pad_token="[PAD]", unk_token="[UNK]", eos_token="[SEP]", padding_side="left")
    if with_mask:
        kw["mask_token"] = "[MASK]"
    return PreTrainedTokenizerFast(tokenizer_object=tok, **kw)


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    """A tiny random BERT masked LM: a standard bidirectional architecture with a mask token."""
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(WORDS), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64, pad_token_id=0)
    d = tmp_path_factory.mktemp("bert")
    BertForMaskedLM(cfg).save_pretrained(d)
    _word_tokenizer().save_pretrained(d)
    return str(d)


def test_bert_loads_as_a_dlm_and_samples_batch_invariantly(bert_dir):
    dlm = load_model(bert_dir, device="cpu")
    assert dlm.mask_id == 4 and dlm.eos_id == 3 and dlm.pad_id == 0
    prompts = [dlm.tokenizer("w1 w2 w3 w4 w5")["input_ids"], dlm.tokenizer("w7")["input_ids"]]
    cfg = SamplerConfig(gen_length=8, block_length=4, steps=8, temperature=1.0)
    both = sample(dlm, prompts, cfg, make_generators([1, 2], "cpu"))
    alone = sample(dlm, prompts[1:], cfg, make_generators([2], "cpu"))
    assert both[1].tokens == alone[0].tokens
    assert all(dlm.mask_id not in c.tokens for c in both)


def test_lora_trains_only_the_adapter(bert_dir):
    dlm = load_model(bert_dir, device="cpu", lora=LoraSpec(r=4, alpha=8, target_modules=("query", "value")))
    trainable = {n for n, p in dlm.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    batch = ScoredBatch.build(dlm, [[5, 6, 7]], [[8, 9, 3]])
    draw = draw_masks(batch.valid, 2, torch.Generator().manual_seed(0))
    before = {n: p.detach().clone() for n, p in dlm.model.named_parameters()}
    dlm.model.train()
    opt = torch.optim.SGD([p for p in dlm.model.parameters() if p.requires_grad], lr=0.5)
    (-elbo(dlm, batch, draw)).sum().backward()
    opt.step()
    changed = {n for n, p in dlm.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= trainable
    dlm.model.eval()  # no dropout in the comparison
    with dlm.model.disable_adapter():  # the frozen reference is the adapter-free model
        ref = load_model(bert_dir, device="cpu")
        x = torch.tensor([[5, 6, 4, 4]])
        assert torch.allclose(dlm.logits(x), ref.logits(x), atol=1e-6)


def test_tiny_model_directory_round_trips_through_the_backend(tiny, tiny_dir, tmp_path):
    x = torch.tensor([tiny.prompt_ids("hello")])
    tiny.save(str(tmp_path))
    again = load_model(str(tmp_path), device="cpu")
    assert torch.equal(tiny.logits(x), again.logits(x))
    assert again.extra["model_type"] == "dlm-bench-tiny"


def test_a_causal_lm_without_mask_token_is_refused(tmp_path):
    GPT2LMHeadModel(GPT2Config(vocab_size=len(WORDS), n_embd=16, n_layer=1, n_head=2)).save_pretrained(tmp_path)
    _word_tokenizer(with_mask=False).save_pretrained(tmp_path)
    with pytest.raises(UserError, match="not a masked diffusion LM"):
        load_model(str(tmp_path), device="cpu")


@pytest.mark.parametrize("make, message", [
    (lambda p: None, "does not exist"),
    (lambda p: p.mkdir(), "no config.json"),
    (lambda p: (p.mkdir(), (p / "config.json").write_text("{oops")), "not valid JSON"),
])
def test_bad_model_directories_are_user_errors(tmp_path, make, message):
    target = tmp_path / "model"
    make(target)
    with pytest.raises(UserError, match=message):
        load_model(str(target), device="cpu")
