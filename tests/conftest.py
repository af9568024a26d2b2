import copy
import dataclasses
import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(2)
# The suite opts in explicitly: where bubblewrap is unusable, code runs with rlimits only and the
# bwrap-only checks skip (where it works, bubblewrap is used regardless).
os.environ.setdefault("DLM_BENCH_SANDBOX", "unsafe-no-isolation")


@pytest.fixture(scope="session")
def char_tokenizer():
    from dlm_bench.models.chartok import build_char_tokenizer
    return build_char_tokenizer()


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, char_tokenizer):
    """A randomly initialised 1M-parameter tiny DLM saved in Hugging Face format."""
    from dlm_bench.models.tiny import build_tiny
    torch.manual_seed(0)
    model = build_tiny(char_tokenizer, "1m")
    d = tmp_path_factory.mktemp("tiny")
    model.save_pretrained(d)
    char_tokenizer.save_pretrained(d)
    return str(d)


@pytest.fixture(scope="session")
def tiny(tiny_dir):
    from dlm_bench.models import load_model
    return load_model(tiny_dir, device="cpu")


@pytest.fixture(scope="module")
def ref_model(tiny):
    """A frozen copy of `tiny`, as the training loop's reference model."""
    ref = dataclasses.replace(tiny, model=copy.deepcopy(tiny.model))
    for p in ref.model.parameters():
        p.requires_grad_(False)
    return ref


def fake_rewards(self, problems, completions):
    """A random model never solves testbed: a deterministic, varied reward so gradients are non-zero."""
    return [float(sum(map(ord, c)) % 5) / 4 for c in completions]


@pytest.fixture
def varied_rewards(monkeypatch):
    from dlm_bench.tasks.testbed import Testbed
    monkeypatch.setattr(Testbed, "rewards", fake_rewards)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Without ../shared/data (a fresh clone elsewhere), a test that fails only because a benchmark
    file is missing is reported as skipped with that reason; CI (DLM_BENCH_REQUIRE_SHARED=1) keeps it
    a failure. Where the data folder exists, nothing is converted."""
    outcome = yield
    rep = outcome.get_result()
    if rep.when not in ("setup", "call") or not rep.failed or call.excinfo is None:   # setup: a data fixture
        return
    from shared_files import DATA_MISSING, REQUIRE_VAR, shared_data_present
    import os
    if os.environ.get(REQUIRE_VAR) == "1" or shared_data_present():
        return
    # the exception, or what a CLI run inside the test printed (its one-line error)
    text = "\n".join([str(call.excinfo.value)] + [content for _, content in rep.sections])
    if DATA_MISSING in text and "not found" in text:
        line = next(ln for ln in text.splitlines() if DATA_MISSING in ln).strip()[:200]
        rep.outcome, rep.longrepr = "skipped", (str(item.path), item.location[1], f"benchmark data absent: {line}")
