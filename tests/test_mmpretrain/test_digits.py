"""The small real-data run: scikit-learn's digits as an mmpretrain dataset, trained and tested
through tools/train.py and tools/test.py with mmpretrain's Accuracy evaluator."""
import glob
import json
import sys

import numpy as np
import pytest
from helpers import run_tool

pytest.importorskip('mmpretrain',
                    reason='needs mmpretrain and torchvision: make setup-compat '
                    'installs them (the torch 2.13 CPU wheel cannot load torchvision)')
pytest.importorskip('sklearn', reason='the digits ship with scikit-learn')

from drconv_mmdet.mmpretrain import DigitsDataset  # noqa: E402

PY = sys.executable
DRCONV_CONFIG = 'configs/mmpretrain/shufflenet-v2-0.5x-drconv-8r_1xb32-10e_digits.py'
# One short epoch on a slice of each split.
TINY = [
    '--cfg-options', 'train_cfg.max_epochs=1', 'train_cfg.val_interval=1',
    'param_scheduler.0.end=1', 'default_hooks.checkpoint.interval=1',
    'default_hooks.logger.interval=1', 'train_dataloader.dataset.indices=96',
    'val_dataloader.dataset.indices=64', 'test_dataloader.dataset.indices=64'
]


def test_digits_split():
    train, test = DigitsDataset(split='train'), DigitsDataset(split='test', test_mode=True)
    assert (len(train), len(test)) == (1257, 540)
    labels = [
        np.array([train.get_data_info(i)['gt_label'] for i in range(len(train))]),
        np.array([test.get_data_info(i)['gt_label'] for i in range(len(test))])
    ]
    # Stratified: every digit is about 10 % of each split.
    for split in labels:
        assert set(split.tolist()) == set(range(10))
        assert np.bincount(split).min() >= 0.09 * len(split)
    image = train.get_data_info(0)['img']
    assert image.shape == (8, 8, 3) and image.dtype == np.uint8 and image.max() > 200
    assert (image[..., 0] == image[..., 2]).all()
    assert train.metainfo['classes'] == tuple('0123456789')


@pytest.mark.parametrize('kwargs, message', [
    (dict(split='val'), "split must be one of \\('train', 'test'\\), but got 'val'"),
    (dict(ann_file='a.json'), 'takes no ann_file'),
])
def test_digits_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DigitsDataset(**kwargs)


@pytest.mark.slow
def test_train_then_test_prints_top1(tmp_path):
    work_dir, test_dir = str(tmp_path / 'train'), str(tmp_path / 'test')
    result = run_tool(PY, 'tools/train.py', DRCONV_CONFIG, '--work-dir', work_dir, *TINY)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert 'accuracy/top1' in result.stdout + result.stderr
    checkpoint = f'{work_dir}/epoch_1.pth'
    result = run_tool(PY, 'tools/test.py', DRCONV_CONFIG, checkpoint, '--work-dir', test_dir, *TINY)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    (metrics_file, ) = glob.glob(f'{test_dir}/*/*.json')
    with open(metrics_file) as f:
        top1 = json.load(f)['accuracy/top1']
    assert 0 <= top1 <= 100
