# The contract: `make demo` and `make test` work on a fresh clone (README). Each target
# creates or updates .venv first, idempotently.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# A CPU wheel of this torch lies on disk on our machines; installing it first stops pip from
# pulling a multi-GB CUDA build. Where it is not available, pip picks torch itself.
TORCH_PIN ?= torch==2.13.0
EXTRAS  ?= wandb,sklearn,slurm,test,bench,docs,hf,hf-datasets

.PHONY: venv demo test lint bench docs clean

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_PIN)" numpy || $(BIN)/python -m pip install -q torch numpy
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	touch $(STAMP)

demo: venv
	WANDB_MODE=offline $(BIN)/python -m distrib.train launcher=local launcher.nproc=2 'logger=[console,jsonl,wandb]'

test: venv
	@bash tests/system_deps.sh || echo "make test: system packages missing; their tests skip (CI installs them as root)"
	PY=$(BIN)/python bash tests/run.sh

lint: venv
	$(BIN)/ruff check distrib tests launchers examples
	$(BIN)/ruff format --check distrib tests launchers examples
	$(BIN)/lint-imports --no-cache

bench: venv
	$(BIN)/python -m distrib.bench

# the guide as a site in site/ (docs/mkdocs.yml; --strict: a broken link or reference fails)
docs: venv
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict -f docs/mkdocs.yml -d $(CURDIR)/site

clean:
	rm -rf $(VENV) outputs .pytest_cache site
