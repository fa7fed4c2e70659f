"""The route for mim users: ``mim install .``, then ``mim train`` / ``mim test`` from any folder.

``make test-mim`` sets this up in its own environment (a regular install, which copies ``configs/``,
``tools/`` and ``model-index.yml`` into ``drconv_mmdet/.mim``) and sets ``DRCONV_MIM_ROUTE=1``.
"""
import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import DEMO_DRFPN_CONFIG, REPO_ROOT, tiny_run_options

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get('DRCONV_MIM_ROUTE') != '1',
        reason='needs openmim and a regular install of the plugin, as `make test-mim` sets up'),
]

MIM = str(Path(sys.executable).with_name('mim'))


def _mim(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run([MIM, *args], cwd=cwd, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


@pytest.mark.parametrize('where', ['outside', 'repo_root'])
def test_mim_train_then_test(where, toy_coco_root, tmp_path):
    cwd = REPO_ROOT if where == 'repo_root' else tmp_path
    work_dir = tmp_path / 'work'
    options = tiny_run_options(toy_coco_root, max_iters=2, checkpoint_interval=2)
    train = _mim('train',
                 'drconv_mmdet',
                 DEMO_DRFPN_CONFIG,
                 '--work-dir',
                 str(work_dir),
                 *options,
                 cwd=cwd)
    # mim runs the copy of tools/train.py that the install put in the package.
    assert os.path.join('drconv_mmdet', '.mim', 'tools', 'train.py') in train.stdout
    checkpoint = work_dir / 'iter_2.pth'
    assert checkpoint.is_file()

    test_dir = tmp_path / 'test'
    _mim('test',
         'drconv_mmdet',
         DEMO_DRFPN_CONFIG,
         '--checkpoint',
         str(checkpoint),
         '--work-dir',
         str(test_dir),
         *options,
         cwd=cwd)
    (metrics_file, ) = glob.glob(str(test_dir / '*' / '*.json'))
    with open(metrics_file) as f:
        metrics = json.load(f)
    assert 'coco/bbox_mAP' in metrics and 'coco/segm_mAP' in metrics
