# One-command setup and test. `make setup` builds .venv from nothing and is idempotent:
# it re-runs only when pyproject.toml or this Makefile change.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-done
TORCH_VERSION := 2.13.0
FBGEMM_VERSION := 1.8.0
TORCHREC_VERSION := 1.8.0
TRITON_VERSION := 3.6.0
NPROC ?= 2

.PHONY: setup test lint run data-info clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==$(TORCH_VERSION)
	# CPU machines get the CPU build of FBGEMM, and Triton for its interpreter (the tests run the
	# GPU kernels in it); a CUDA torch gets the CUDA build, and brings its own Triton.
	if $(BIN)/python -c "import sys, torch; sys.exit(0 if torch.version.cuda else 1)"; then \
		$(BIN)/pip install -q fbgemm-gpu==$(FBGEMM_VERSION); \
	else \
		$(BIN)/pip install -q fbgemm-gpu-cpu==$(FBGEMM_VERSION) triton==$(TRITON_VERSION); \
	fi
	# torchrec's own requirements, then torchrec without its (CUDA) fbgemm-gpu pin.
	$(BIN)/pip install -q tensordict torchmetrics==1.0.3 tqdm pyre-extensions iopath
	$(BIN)/pip install -q --no-deps torchrec==$(TORCHREC_VERSION)
	$(BIN)/pip install -q "torchx==0.7.0" "numpy>=1.24" "pyarrow>=14" "matplotlib>=3.7" "ninja>=1.11" "pytest>=8" "pytest-timeout>=2.2" "ruff>=0.5"
	$(BIN)/pip install -q --no-deps -e .
	$(BIN)/python -c "import torch, torchrec, fbgemm_gpu, torchx, pyarrow, matplotlib; print('environment ready: torch', torch.__version__)"
	# Build the fused CPU transfer kernel now rather than inside the first training step.
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -c "from sml_torchrec.modules.transfer_cpu import load; load()"
	touch $(STAMP)

test: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q tests

lint: setup
	$(BIN)/ruff check .

# The demo command: --overwrite so that running it again replaces its own earlier result.
run: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/sml-retrain --nproc $(NPROC) --out runs/default --overwrite

clean:
	rm -rf $(VENV) runs .pytest_cache
