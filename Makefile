# The README's commands. Every target sets the environment up first (seconds once it is done).
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_CONFIG ?= configs/demo/mask-rcnn_r18_drfpn-8r_toy-coco.py
DEMO_WORK_DIR ?= work_dirs/demo
PYTEST_ARGS ?=

.PHONY: setup test demo data bench clean

setup:
	@VENV=$(VENV) bash tools/misc/setup_env.sh

data: setup
	$(PY) tools/misc/make_toy_coco.py --out-dir data/toy_coco

test: setup
	$(PY) -m pytest tests $(PYTEST_ARGS)

demo: data
	PYTHON=$(PY) bash tools/misc/demo.sh $(DEMO_CONFIG) $(DEMO_WORK_DIR)

bench: setup
	$(PY) tools/analysis_tools/benchmark_drconv.py

clean:
	rm -rf $(DEMO_WORK_DIR) data/toy_coco
