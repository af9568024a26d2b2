# Every target runs inside the repository's own virtual environment (.venv/), made by `make setup`.
PY      := .venv/bin/python
CLI     := .venv/bin/dlm-bench
CONFIG  ?= configs/demo.yaml

.PHONY: setup system-deps test test-compat test-slow demo cpu-study positive-control base train-all eval-all figures bench clean

setup: system-deps .venv/.installed

# bubblewrap isolates generated code and libseccomp2 builds its syscall filter (docs/sandbox.md); without
# them code tasks refuse (exit 2) unless --unsafe-no-isolation.
system-deps:
	@{ command -v bwrap >/dev/null 2>&1 && /sbin/ldconfig -p 2>/dev/null | grep -q 'libseccomp\.so\.2'; } || { \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    (apt-get install -y -qq bubblewrap libseccomp2 >/dev/null 2>&1 || (apt-get update -qq >/dev/null && apt-get install -y -qq bubblewrap libseccomp2 >/dev/null)) \
	      || echo "warning: could not install bubblewrap/libseccomp2; code tasks will refuse to run (see README)"; \
	  else echo "warning: bubblewrap (bwrap) or libseccomp2 missing; install them (apt-get install bubblewrap libseccomp2) for the code sandbox"; fi; }

.venv/.installed: pyproject.toml
	python3.11 -m venv .venv 2>/dev/null || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test]"
	touch $@

test: setup
	$(PY) -m pytest

# The other transformers line (4.57) over the same environment: a small venv whose own
# transformers/tokenizers/hub shadow .venv's, everything else (torch, peft, dlm-bench) taken from .venv.
COMPAT_PINS := transformers==4.57.6 tokenizers==0.22.1 huggingface-hub==0.36.0
.venv-compat/.installed: .venv/.installed Makefile
	rm -rf .venv-compat && python3 -m venv .venv-compat
	echo "import site; site.addsitedir('$$($(PY) -c 'import site; print(site.getsitepackages()[0])')')" \
	  > "$$(.venv-compat/bin/python -c 'import site; print(site.getsitepackages()[0])')/_dlm_bench_base.pth"
	.venv-compat/bin/python -m pip install -q --no-deps $(COMPAT_PINS)
	touch $@

test-compat: setup .venv-compat/.installed
	.venv-compat/bin/python -m pytest tests/test_real_models.py tests/test_hf_backend.py tests/test_block_models.py

test-slow: setup
	$(PY) -m pytest -m slow

demo: setup
	$(CLI) demo --config $(CONFIG)

# every method x 3 training seeds, seed-level statistics (configs/cpu-study.yaml; hours on 2 cores, resumable)
cpu-study: setup
	$(CLI) demo --config configs/cpu-study.yaml

# JustGRPO under its own decoder must raise held-out Pass@1, seed-level interval above 0 (exits 1 if not;
# configs/positive-control.yaml, report in reports/positive-control/)
positive-control: setup
	$(CLI) demo --config configs/positive-control.yaml

base: setup
	$(CLI) demo --config $(CONFIG) --only base

train-all: setup
	$(CLI) demo --config $(CONFIG) --stages train

eval-all: setup
	$(CLI) demo --config $(CONFIG) --stages eval

figures: setup
	$(CLI) demo --config $(CONFIG) --stages report

bench: setup
	$(PY) bench/sampler.py
	$(PY) bench/grading.py

clean:
	rm -rf results reports/demo/*.pdf .pytest_cache
