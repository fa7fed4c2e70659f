# The README's commands. Every target sets the environment up first (seconds once it is done).
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_CONFIG ?= configs/demo/mask-rcnn_r18_drfpn-8r_toy-coco.py
DEMO_WORK_DIR ?= work_dirs/demo
PYTEST_ARGS ?=
# Where a C++ compiler works, the plugin's compiled CPU kernels must build and load: the setup, the
# tests and every import of the plugin fail otherwise (drconv_mmdet/ops/cpu_extension.py).
DRCONV_REQUIRE_CPU_KERNELS ?= $(shell $${CXX:-c++} --version >/dev/null 2>&1 && echo 1 || echo 0)
export DRCONV_REQUIRE_CPU_KERNELS

# The oldest supported torch, in two more environments: with OpenMMLab (mmcv 2.1.0 built against it)
# and without it (the op and the layer alone). Both keep the torch wheels in one folder.
COMPAT_VENV ?= .venv-compat
CORE_VENV ?= .venv-core
MIM_VENV ?= .venv-mim
LINT_VENV ?= .venv-lint
OLDEST_TORCH := TORCH_VERSION=2.1.2 CONSTRAINTS=requirements/compat.txt \
	TORCH_WHEELHOUSE=$(HOME)/.cache/drconv-mmdet/torch-2.1.2

.PHONY: setup test test-fast lint demo data bench clean setup-compat test-compat test-mmpretrain \
	setup-core test-core setup-mim test-mim

setup:
	@VENV=$(VENV) bash tools/misc/setup_env.sh

data: setup
	$(PY) tools/misc/make_toy_coco.py --out-dir data/toy_coco

test: setup
	$(PY) -m pytest tests $(PYTEST_ARGS)

# The suite without the tests marked slow (setup.cfg), for quick checks while developing.
test-fast: setup
	$(PY) -m pytest tests -m "not slow" $(PYTEST_ARGS)

# The hooks of .pre-commit-config.yaml (flake8, isort and yapf with setup.cfg's settings) on every
# file; isort and yapf rewrite what they would change, and the run fails.
lint:
	@test -x $(LINT_VENV)/bin/pre-commit || { python3 -m venv $(LINT_VENV) && \
		$(LINT_VENV)/bin/python -m pip install -q pre-commit==4.7.0; }
	$(LINT_VENV)/bin/pre-commit run --all-files --show-diff-on-failure

demo: data
	PYTHON=$(PY) bash tools/misc/demo.sh $(DEMO_CONFIG) $(DEMO_WORK_DIR)

bench: setup
	$(PY) tools/analysis_tools/benchmark_drconv.py

# mmpretrain (DRConv-ShuffleNetV2 and -MobileNetV2) imports torchvision, which the newest CPU torch
# wheel cannot load, so it lives here, with torchvision for the oldest torch.
setup-compat:
	@VENV=$(COMPAT_VENV) $(OLDEST_TORCH) TORCHVISION_VERSION=0.16.2 MMPRETRAIN=1 \
		bash tools/misc/setup_env.sh

test-compat: setup-compat
	$(COMPAT_VENV)/bin/python -m pytest tests $(PYTEST_ARGS)

# The classification part alone: backbones, configs, warm start, the digits run, the detector.
test-mmpretrain: setup-compat
	$(COMPAT_VENV)/bin/python -m pytest tests/test_mmpretrain $(PYTEST_ARGS)

# setup_env.sh checks that the torch-only environment has none of mmengine, mmcv and mmdet. A
# detectron2 user has no OpenMMLab, so detectron2 (built from its source tarball) lives here.
setup-core:
	@VENV=$(CORE_VENV) $(OLDEST_TORCH) TORCHVISION_VERSION=0.16.2 OPENMMLAB=0 DETECTRON2=1 \
		bash tools/misc/setup_env.sh

test-core: setup-core
	$(CORE_VENV)/bin/python -m pytest tests/test_ops tests/test_nn tests/test_classification \
		tests/test_detectron2 $(PYTEST_ARGS)

# The README's route for mim users: an OpenMMLab environment, then openmim and a regular install,
# which pip builds in isolation from torch: pure Python, without the compiled kernels.
setup-mim test-mim: DRCONV_REQUIRE_CPU_KERNELS = 0
setup-mim:
	@VENV=$(MIM_VENV) EDITABLE=0 bash tools/misc/setup_env.sh
	$(MIM_VENV)/bin/python -m pip install -q openmim==0.3.9 'setuptools>=77,<82'
	$(MIM_VENV)/bin/mim install -q .

test-mim: setup-mim
	DRCONV_MIM_ROUTE=1 $(MIM_VENV)/bin/python -m pytest tests/test_packaging $(PYTEST_ARGS)

clean:
	rm -rf $(DEMO_WORK_DIR) data/toy_coco
