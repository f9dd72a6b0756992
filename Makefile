# Two commands on a fresh machine:  make run   (the whole workbook on the offline default)
#                                   make test  (the whole test suite, notebooks included)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
CONFIG ?= configs/default.yaml
ARGS   ?=
LAB_ARGS ?=
NPROC  ?= 2
STAMP  := $(VENV)/.installed

.PHONY: setup setup-gguf run test test-unit lab data notebooks bench bench-recipe train-multi clean

setup: $(STAMP)

$(STAMP): requirements.txt requirements-bundled.txt requirements-gpu.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps -r requirements-bundled.txt
	if nvidia-smi -L >/dev/null 2>&1; then $(BIN)/python -m pip install -q -r requirements-gpu.txt; fi
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $@

# Optional: llama.cpp (llama-cpp-python, built from source: ~20 minutes on 2 cores, once), so that the
# tests open the written GGUF files in the engine Ollama runs. Its multimodal library is not built.
setup-gguf: setup
	CMAKE_ARGS="-DLLAVA_BUILD=OFF $${CMAKE_ARGS:-}" $(BIN)/python -m pip install -q -r requirements-gguf.txt

# make run CONFIG=configs/smoke.yaml ARGS="-p max_steps 10 --only 04 --only 05"
run: setup
	$(BIN)/python -m tools.run $(CONFIG) $(ARGS)

# Unit tests, the runner on the smoke config, then nbval re-executes the committed notebooks.
test: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider tests notebooks --nbval-lax \
		--sanitize-with tests/nbval_sanitize.cfg

test-unit: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider tests -m "not slow"

# JupyterLab on notebooks/ (as root too); prints the address to open.
# make lab LAB_ARGS="--port 8890 --threads 2"   (python -m tools.lab --help lists the options)
lab: setup
	$(BIN)/python -m tools.lab $(LAB_ARGS)

# Rewrite data/pip_chip2.jsonl (deterministic: the committed file is what this prints).
data: setup
	$(BIN)/python data/make_dataset.py

# Re-execute the notebooks in place on the default config so their stored outputs are fresh.
notebooks: setup
	WORKBOOK_RUN_DIR=$(CURDIR)/runs/notebooks $(BIN)/python -m tools.refresh_outputs

clean:
	rm -rf runs

# GPU benchmark (needs an NVIDIA GPU): make bench ARGS="--size small --steps 6"
bench: setup
	$(BIN)/python bench/gpu_training.py $(ARGS)

# The post's recipe at its real size (8B-shape checkpoint stored in 4-bit, 210k OIG rows), all eight
# notebooks, GPU memory capped at 15 GiB as on a 16 GB card (needs an NVIDIA GPU):
# make bench-recipe ARGS="--json bench/results/recipe.json"
bench-recipe: setup
	$(BIN)/python bench/recipe.py $(ARGS)

# Steps 3-5 data-parallel on NPROC GPUs, one process each (python -m tools.train under accelerate):
# make train-multi NPROC=2 CONFIG=configs/llama31-8b-oig.yaml ARGS="--run-dir runs/multi"
train-multi: setup
	$(BIN)/accelerate launch --num_processes $(NPROC) $(if $(filter-out 1,$(NPROC)),--multi_gpu) \
		-m tools.train $(CONFIG) $(ARGS)
