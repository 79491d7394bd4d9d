# Two commands for a fresh machine:
#   make demo   set up .venv and run the main job on the built-in synthetic data
#   make test   set up .venv and run the linter and the test suite (what CI runs)
# VENV=path reuses another environment; PYTHON picks the interpreter that creates it.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.cpn-dist-installed
DEMO   ?= demo

.PHONY: setup test lint demo clean

setup: $(STAMP)

# The CPU wheel torch==2.13.0 lies on these machines' disk; a plain `torch` requirement in an empty
# venv would pull a multi-GB CUDA build. A torch that is already importable (yours) is kept.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev,deepspeed]"
	touch $(STAMP)

lint: setup
	$(VENV)/bin/ruff check .

test: lint
	$(PY) -m pytest -q

demo: setup
	$(VENV)/bin/cpn synth-voc --out $(DEMO)/VOC2012 --images 200 --size 160 --overwrite
	$(VENV)/bin/cpn check-voc $(DEMO)/VOC2012
	$(VENV)/bin/cpn pack --voc-root $(DEMO)/VOC2012 --split train_aug --out $(DEMO)/shards --slic-segments 50 --overwrite
	$(VENV)/bin/cpn shards verify $(DEMO)/shards

clean:
	rm -rf $(DEMO) .pytest_cache .ruff_cache
