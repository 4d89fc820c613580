# Two entry points for a fresh machine:
#   make check  -> create .venv, install sglang-gemma4 (+ sglang==0.5.23), run `python -m sglang_gemma4 check`
#   make test   -> same set-up, then the CPU test suite (what CI runs)
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install check test test-gpu bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

check: install
	$(PY) -m sglang_gemma4 check

# Two pytest processes: Triton's interpreter must be chosen before triton is
# imported, so tests that run our kernels on CPU tensors get a process of their own.
test: install
	$(PY) -m pytest tests/cpu -m "not interpret"
	TRITON_INTERPRET=1 $(PY) -m pytest tests/cpu -m interpret

# On a CUDA machine without sglang (the lent H200): kernels only.
test-gpu:
	PYTHONPATH=python $(PYTHON) -m pytest tests/gpu

clean:
	rm -rf $(VENV) build python/*.egg-info .pytest_cache
