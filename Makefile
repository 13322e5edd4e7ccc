# zfviz: `make figures` runs the paper's experiments at PRESET (default cpu) into results/;
# `make test` runs the test suite. Both set up .venv and the data they need from nothing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PRESET ?= cpu
RUNS := runs/figures/$(PRESET)
FMNIST_DEB := /usr/share/datasets/fashion-mnist

.PHONY: install data test figures lint clean-figures

install: $(VENV)/.installed

# torch/torchvision: the pair that lies on this workplace's disk (other pairs break torchvision's import).
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

# Fashion-MNIST from Debian's dataset-fashion-mnist when we are root and the files are missing.
data:
	@if [ -f $(FMNIST_DEB)/train-images-idx3-ubyte.gz ] || [ -f data/FashionMNIST/raw/train-images-idx3-ubyte ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then apt-get update -q && apt-get install -y -q dataset-fashion-mnist; \
	else echo "Fashion-MNIST is missing: sudo apt-get install dataset-fashion-mnist (or see README, 'Data')"; exit 1; fi

test: install data
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check zfviz tests scripts

# A finished run leaves run.json; make skips runs that already have one (delete the folder to redo).
# resume=true: an interrupted `make figures` continues its training runs where they stopped.
$(RUNS)/%/run.json: | install data
	$(BIN)/zfviz train model=$* preset=$(PRESET) experiment=table2 resume=true hydra.run.dir=$(RUNS)/$*

results/table2_$(PRESET).csv: $(RUNS)/zfnet/run.json $(RUNS)/alexnet/run.json
	$(BIN)/python scripts/table2.py --preset $(PRESET) --out results $(^D)

# Each block below adds its outputs to FIGURES; `figures` (at the end) builds them all.
FIGURES := results/table2_$(PRESET).csv
CHECKPOINT := $(RUNS)/zfnet/checkpoint.pt

# --- deconvnet figures (Figs. 2, 4, 6) ---

# --- occlusion, correspondence, invariance (Figs. 5, 7, 8; Table 1) ---

figures: install data $(FIGURES)

clean-figures:
	rm -rf $(RUNS)
