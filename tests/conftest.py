"""Fixtures shared by the tests; shared functions and constants are in helpers.py.

Importable with torch and pytest alone, so that ``pytest tests/test_ops tests/test_nn`` runs without
OpenMMLab: what needs mmengine or mmdet imports it where it is used.
"""
import os

import pytest
import torch

# Without a CUDA device the Triton kernels' tests run them in Triton's interpreter, which triton
# reads when it is imported; torch imports it lazily (on a registered op's first call, say), so
# this is set before any test runs.
if not torch.cuda.is_available():
    os.environ.setdefault('TRITON_INTERPRET', '1')


@pytest.fixture(scope='session')
def toy_coco_root(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Root folder of a small toy COCO set (8 train / 4 val images) shared by the session.

    Layout: ``train/``, ``val/``, ``annotations/instances_{train,val}.json``, i.e. use
    ``data_root=toy_coco_root``, ``ann_file='annotations/instances_train.json'`` and
    ``data_prefix=dict(img='train/')``. Treat it as read-only.
    """
    from drconv_mmdet.datasets import ensure_toy_coco

    root = tmp_path_factory.mktemp('toy_coco')
    ensure_toy_coco(str(root), num_train=8, num_val=4)
    return str(root)
