"""Fixtures and helpers shared by the tests.

Importable with torch and pytest alone, so that ``pytest tests/test_ops tests/test_nn`` runs without
OpenMMLab: what needs mmengine or mmdet imports it where it is used.
"""
import argparse
import os
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import pytest

if TYPE_CHECKING:
    from mmengine.config import Config


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


REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_CONFIG = 'configs/demo/mask-rcnn_r18_fpn_toy-coco.py'
DEMO_DRFPN_CONFIG = 'configs/demo/mask-rcnn_r18_drfpn-8r_toy-coco.py'


def tiny_run_options(data_root: str, max_iters: int = 4, checkpoint_interval: int = 2) -> list:
    """``--cfg-options`` that shrink a demo config to seconds: small images, few iterations."""
    ann = data_root + '/annotations/instances_val.json'
    options = [
        f'train_dataloader.dataset.data_root={data_root}',
        f'val_dataloader.dataset.data_root={data_root}',
        f'test_dataloader.dataset.data_root={data_root}',
        f'val_evaluator.ann_file={ann}',
        f'test_evaluator.ann_file={ann}',
        'train_dataloader.batch_size=2',
        'train_dataloader.num_workers=0',
        'val_dataloader.num_workers=0',
        'test_dataloader.num_workers=0',
        'train_dataloader.dataset.pipeline.2.scale=(128,128)',
        'val_dataloader.dataset.pipeline.1.scale=(128,128)',
        'test_dataloader.dataset.pipeline.1.scale=(128,128)',
        f'train_cfg.max_iters={max_iters}',
        f'train_cfg.val_interval={max_iters}',
        f'default_hooks.checkpoint.interval={checkpoint_interval}',
        'default_hooks.checkpoint.max_keep_ckpts=5',
        'default_hooks.logger.interval=1',
        'param_scheduler.0.end=2',
        'param_scheduler.1.milestones=[1000]',
        'randomness.seed=0',
    ]
    return ['--cfg-options', *options]


def run_tool(*args: str, env: Optional[dict] = None,
             timeout: int = 600) -> subprocess.CompletedProcess:
    """Runs a command from the repository root with this interpreter, capturing its output."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([*args], cwd=REPO_ROOT, env=full_env, capture_output=True, text=True,
                          timeout=timeout)


def tiny_run_config(config: str, data_root: str, **kwargs) -> 'Config':
    """The config a tool gets with ``tiny_run_options`` (parsed as its ``--cfg-options`` are)."""
    from mmengine.config import Config, DictAction

    parser = argparse.ArgumentParser()
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    cfg = Config.fromfile(str(REPO_ROOT / config))
    cfg.merge_from_dict(parser.parse_args(tiny_run_options(data_root, **kwargs)).cfg_options)
    return cfg
