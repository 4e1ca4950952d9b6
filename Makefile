# Two commands a newcomer needs (see README): `make paper` and `make test`.
# Each creates .venv on first use with Python >= 3.11 and installs deepfactor into it.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
PYTEST_ARGS ?=
# torch comes from PyTorch's CPU index unless told otherwise: a plain `torch` on Linux pulls
# several GB of CUDA libraries. It is an *extra* index, so where only the default index is
# reachable pip still finds torch there. CUDA: TORCH_INDEX=https://download.pytorch.org/whl/cu128
# (or TORCH_INDEX= for the default index's build).
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH_SOURCE := $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX) --retries 2 --timeout 30)

.PHONY: install paper test test-slow lint bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "deepfactor needs Python >= 3.11, found " + sys.version.split()[0])'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0 $(TORCH_SOURCE)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

# The LSTM signal on the bundled sample (deploy/configs/lstm-sample.toml): trained at start on
# the sample's history before the replay, then paper-traded over the embedded Redis.
PAPER_CONFIG ?= deploy/configs/lstm-sample.toml
paper: $(STAMP)
	$(BIN)/deepfactor paper --config $(PAPER_CONFIG) $(ARGS)

# pytest exits 5 when it collects no tests; that is not a failure of the code under test.
test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; rc=0; fi; exit $$rc

# Here, collecting nothing is a failure: a slow suite that silently ran nothing proves nothing.
test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then echo "make test-slow: no test is marked slow" >&2; fi; exit $$rc

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/python benchmarks/bus.py
	$(BIN)/python benchmarks/backtest_vs_vectorbt.py
	$(BIN)/python benchmarks/factors.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
