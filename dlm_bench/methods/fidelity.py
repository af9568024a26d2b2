"""Where this harness and a reference recipe differ, and the test that pins each difference.

Every method class lists its own rows (`Method.fidelity`); rows about shared machinery (sampler,
likelihood, LoRA, code rewards) live here. `dlm-bench methods --markdown` prints them all in
docs/methods.md, and tests/test_methods_doc.py checks that every row names a test that exists.

status: "fixed"  the recipe's behaviour is now the default;
        "option" the recipe's behaviour is the default and the other one a documented option (or the
                 harness default stays, with the recipe's behaviour one setting away);
        "kept"   a documented, tested difference."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Deviation:
    reference: str          # what the reference code or paper does
    here: str               # what dlm-bench does
    status: str             # fixed | option | kept
    test: str               # tests/FILE.py::test_name

    def __post_init__(self):
        if self.status not in ("fixed", "option", "kept"):
            raise ValueError(f"status must be fixed, option or kept, got {self.status!r}")


ENGINE = (
    Deviation("ESPO and d1 name LoRA targets q_proj..gate_proj, which on LLaDA's module names match only "
              "q, k, v, up", "canonical names q,k,v,o,gate,up,down mapped per architecture (LLaDA, Dream, the "
              "tiny model); literal module names still accepted", "option",
              "tests/test_recipes.py::test_recipe_targets_on_the_real_architectures"),
    Deviation("LLaDA's get_log_likelihood.py spreads mask counts over its MC batch with torch.round "
              "(biased when L/n is not an integer)", "`stratified_paired` (unbiased, lowest variance measured) "
              "is the default wherever a recipe fixes none", "fixed",
              "tests/test_mask_schemes.py::test_stratified_elbo_is_unbiased_against_enumeration"),
    Deviation("LLaDA's multiple-choice evaluations score with classifier-free guidance (cfg 0.5-2.0)",
              "the lm-eval adapter's loglikelihood honours cfg_scale", "fixed",
              "tests/test_lm_eval_adapter.py::test_loglikelihood_honours_cfg_scale"),
    Deviation("LLaDA's generate(): a step that reveals no token (more steps than tokens in a block) still "
              "draws its Gumbel noise / random scores", "the same draws without the forward pass, so the "
              "random stream and the completions match the reference", "fixed",
              "tests/test_sampler.py::test_steps_beyond_block_length_match_reference"),
    Deviation("confidence_eos_eot_inf: end-of-turn always, and at T = 0 end-of-text too (the noise step "
              "returns the logits themselves)", "the same (`_suppressed_ids`)", "fixed",
              "tests/test_sampler.py::test_confidence_eos_eot_inf_at_zero_temperature_suppresses_end_of_text"),
    Deviation("d1, wd1 and SPG load the base model in 4 bits under LoRA (QLoRA)", "the policy keeps its "
              "dtype (bf16 on GPU, fp32 on CPU): no quantised base", "kept",
              "tests/test_recipes.py::test_policy_weights_are_not_quantised"),
)
