# Two commands for a fresh machine:
#   make demo   set up .venv and run the demo on built-in synthetic data: the plain CAM against CPN,
#               then CPN's CAMs through AffinityNet + random walk and DeepLab (the whole pipeline)
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
	$(PY) -m pip install --quiet -e ".[dev,deepspeed,imagenet,coco]"
	touch $(STAMP)

lint: setup
	$(VENV)/bin/ruff check .

test: lint
	$(PY) -m pytest -q

# The plain CAM against CPN on the synthetic parts task: data, training, CAMs, β sweep, table and
# $(DEMO)/demo.png; then stages 2 and 3 on that CPN (configs/pipeline_demo.yaml) and the table of the
# mIoU after each stage (see docs/demo.md). Finished steps are kept on a re-run.
demo: setup
	$(VENV)/bin/cpn demo --out $(DEMO)
	$(VENV)/bin/cpn pipeline --config configs/pipeline_demo.yaml voc_root=$(DEMO)/VOC2012 \
	    shards=$(DEMO)/shards work_dir=$(DEMO)/pipeline weights.cpn=$(DEMO)/runs/cpn/model_final.pth

clean:
	rm -rf $(DEMO) .pytest_cache .ruff_cache
