# make help lists the targets. Every target installs what it needs into .venv first.
SHELL := /bin/bash
PY := .venv/bin/python
PIP := .venv/bin/pip
STAMP := .venv/.installed

TASKS := cifar10 translation
# the rows of each task's table in the paper
NORMS_cifar10 := none,batchnorm,weightnorm,layernorm,rmsnorm,prmsnorm
NORMS_translation := none,layernorm,l2norm,rmsnorm,prmsnorm
SEEDS := 0,1,2
DATA_DIR ?= data

.DEFAULT_GOAL := help
.PHONY: help install demo test test-slow lint bench bench-tasks report data-cifar10 replicate-cifar10 data-translation \
	replicate-translation replicate-all clean

help: ## list the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-20s %s\n", $$1, $$2}'

install: $(STAMP) ## create .venv with the suite and its dev tools (idempotent)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PIP) install -q -e '.[dev,translation]'
	$(PY) -m rmsnorm.kernels.build  # compile the fused CPU kernel now rather than on first use (cached)
	touch $@

demo: install ## every task x every norm on built-in data (CPU, offline, minutes); table + plots in results/demo/
	rm -rf multirun/demo
	status=0; \
	$(foreach t,$(TASKS),$(PY) scripts/train.py -m task=$(t) norm=$(NORMS_$(t)) preset=demo logger=none \
	  train.progress=false hydra.sweep.dir=multirun/demo/$(t) || status=1;) \
	$(PY) scripts/report.py multirun/demo --out results/demo --command "make demo" || status=1; \
	exit $$status

test: install ## ruff, then the fast test suite (pytest, no GPU, no network)
	.venv/bin/ruff check .
	$(PY) -m pytest -q

test-slow: install ## the long tests too
	$(PY) -m pytest -q -m "slow or not slow"

bench: install ## norm-layer benchmark at the tasks' shapes -> results/bench/<device>.md (+ plot)
	$(PY) scripts/bench.py

bench-tasks: install ## whole training steps of every task's paper model, norms interleaved, speed-ups with 95% intervals
	$(PY) scripts/bench_tasks.py

lint: install ## ruff
	.venv/bin/ruff check .

report: install ## tables and plots from every run under multirun/ and outputs/ into results/report/
	$(PY) scripts/report.py multirun outputs --out results/report --command "make report"

data-cifar10: install ## download CIFAR-10 into $(DATA_DIR)/cifar10 (needs internet, once)
	$(PY) scripts/prepare_cifar10.py --data-dir $(DATA_DIR)

replicate-cifar10: install ## Table 10: every norm, preset=paper, 3 seeds, one Hydra multirun
	$(PY) scripts/train.py -m task=cifar10 norm=$(NORMS_cifar10) preset=paper seed=$(SEEDS) data_dir=$(DATA_DIR)

data-translation: install ## WMT14 En-De (+ newstest2017) via datasets, joint 32k BPE, into $(DATA_DIR)/translation
	$(PY) scripts/prepare_translation.py --data-dir $(DATA_DIR)

replicate-translation: install ## Table 2: every norm, preset=paper, 3 seeds, one Hydra multirun (GPU advised)
	$(PY) scripts/train.py -m task=translation norm=$(NORMS_translation) preset=paper seed=$(SEEDS) data_dir=$(DATA_DIR)

replicate-all: $(addprefix replicate-,$(TASKS)) ## every task's replication, one after the other

clean: ## remove run outputs (keeps data/ and .venv)
	rm -rf outputs multirun
