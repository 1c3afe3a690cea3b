# descend: `make train` and `make test` work on a fresh machine; `make help` lists every target.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Hydra overrides for train, eval and landscape, e.g. ARGS="model/net=cnn trainer.max_epochs=5".
ARGS ?=
CKPT ?=
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install train train-ddp-sim eval landscape test test-fast lint format sync clean

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-14s %s\n", $$1, $$2}'

# The virtual environment is rebuilt when pyproject.toml is newer than the last install.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## Create .venv and install the package with its dev tools

train: $(STAMP) ## Train with the default config; pass Hydra overrides with ARGS="..."
	$(BIN)/descend-train $(ARGS)

train-ddp-sim: $(STAMP) ## Train with 2 CPU processes (DDP over gloo)
	$(BIN)/descend-train trainer=ddp_sim $(ARGS)

eval: $(STAMP) ## Evaluate a checkpoint on the test split: make eval CKPT=path/to.ckpt
	@test -n "$(CKPT)" || { echo "CKPT is missing: make eval CKPT=logs/train/runs/<run>/checkpoints/last.ckpt"; exit 2; }
	$(BIN)/descend-eval ckpt_path=$(CKPT) $(ARGS)

landscape: $(STAMP) ## Recompute loss landscapes of a checkpoint: make landscape CKPT=path/to.ckpt ARGS="surfaces=[random]"
	@test -n "$(CKPT)" || { echo "CKPT is missing: make landscape CKPT=logs/train/runs/<run>/checkpoints/last.ckpt"; exit 2; }
	$(BIN)/descend-landscape ckpt_path=$(CKPT) $(ARGS)

test: $(STAMP) ## Run the whole test suite, slow tests included
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP) ## Run the tests not marked slow
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP) ## Check style with ruff
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

format: $(STAMP) ## Format and fix style with ruff
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

sync: $(STAMP) ## Upload offline W&B runs under logs/ (needs `wandb login` first)
	@runs=$$(find logs -type d -name 'offline-run-*' 2>/dev/null); \
	if [ -z "$$runs" ]; then echo "No offline W&B runs under logs/"; exit 0; fi; \
	$(BIN)/wandb sync --include-offline $$runs

clean: ## Delete logs/, caches and build files (keeps .venv)
	rm -rf logs .pytest_cache .ruff_cache build dist src/*.egg-info
	find . -name __pycache__ -type d -prune -not -path './$(VENV)/*' -exec rm -rf {} +

# Experiments: summaries of finished multiruns, and the notebooks.
SWEEP ?=
.PHONY: report notebooks

report: $(STAMP) ## Figures and table of a finished multirun: make report SWEEP=logs/train/multiruns/<dir>
	@test -n "$(SWEEP)" || { echo "SWEEP is missing: make report SWEEP=logs/train/multiruns/<dir> (from descend-train -m experiment=<name>)"; exit 2; }
	$(BIN)/python -m descend.report $(SWEEP)

notebooks: $(STAMP) ## Execute the notebooks in place (their runs go to logs/notebooks/)
	$(BIN)/jupyter-execute --inplace --timeout=600 notebooks/01_descent_tour.ipynb notebooks/02_gd_vs_sgd.ipynb
