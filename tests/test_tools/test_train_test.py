"""tools/train.py, tools/test.py and tools/dist_train.sh on the toy COCO set, as users run them."""
import glob
import json
import os.path as osp
import socket
import sys

import pytest
import torch
import torch.distributed as dist
from helpers import DEMO_CONFIG, REPO_ROOT, run_tool, tiny_run_config, tiny_run_options
from mmengine.runner import Runner

from drconv_mmdet.utils import allow_mmengine_checkpoints, load_tool_config, shutdown_distributed

PY = sys.executable


def _assert_ok(result):
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]


@pytest.fixture(scope='module')
def trained(toy_coco_root, tmp_path_factory):
    """A 4-iteration run of the demo config with checkpoints at iterations 2 and 4."""
    work_dir = str(tmp_path_factory.mktemp('train'))
    result = run_tool(PY, 'tools/train.py', DEMO_CONFIG, '--work-dir', work_dir,
                      *tiny_run_options(toy_coco_root))
    _assert_ok(result)
    return work_dir


def _train_log(work_dir):
    (scalars, ) = glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json'))
    with open(scalars) as f:
        return [json.loads(line) for line in f]


@pytest.mark.slow
def test_train_writes_checkpoints_and_finite_losses(trained):
    assert osp.isfile(osp.join(trained, 'iter_2.pth'))
    assert osp.isfile(osp.join(trained, 'iter_4.pth'))
    losses = [entry['loss'] for entry in _train_log(trained) if 'loss' in entry]
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))


@pytest.mark.slow
def test_test_reports_coco_metrics(trained, toy_coco_root, tmp_path):
    out = str(tmp_path / 'results.pkl')
    result = run_tool(PY, 'tools/test.py', DEMO_CONFIG, osp.join(trained, 'iter_4.pth'),
                      '--work-dir', str(tmp_path), '--out', out, *tiny_run_options(toy_coco_root))
    _assert_ok(result)
    (metrics_file, ) = glob.glob(str(tmp_path / '*' / '*.json'))
    with open(metrics_file) as f:
        metrics = json.load(f)
    assert 'coco/bbox_mAP' in metrics and 'coco/segm_mAP' in metrics
    assert osp.getsize(out) > 0


@pytest.mark.slow
def test_resume_restores_iteration_and_optimizer(trained, toy_coco_root, tmp_path):
    checkpoint = osp.join(trained, 'iter_2.pth')
    allow_mmengine_checkpoints()
    cfg = tiny_run_config(DEMO_CONFIG, toy_coco_root)
    cfg.work_dir = str(tmp_path)
    cfg.resume = True
    cfg.load_from = checkpoint
    runner = Runner.from_cfg(cfg)
    runner.load_or_resume()
    assert runner.iter == 2
    saved = torch.load(checkpoint, map_location='cpu', weights_only=False)
    restored = runner.optim_wrapper.state_dict()['state']
    assert restored.keys() == saved['optimizer']['state'].keys() and restored
    for key, state in saved['optimizer']['state'].items():
        torch.testing.assert_close(restored[key]['momentum_buffer'], state['momentum_buffer'])


@pytest.mark.slow
def test_resume_continues_from_saved_iteration(trained, toy_coco_root, tmp_path):
    work_dir = str(tmp_path)
    result = run_tool(PY, 'tools/train.py', DEMO_CONFIG, '--work-dir', work_dir, '--resume',
                      osp.join(trained, 'iter_2.pth'), *tiny_run_options(toy_coco_root,
                                                                         max_iters=3))
    _assert_ok(result)
    assert 'resumed epoch: 0, iter: 2' in result.stdout + result.stderr
    assert osp.isfile(osp.join(work_dir, 'iter_3.pth'))
    iters = [entry['iter'] for entry in _train_log(work_dir) if 'loss' in entry]
    assert iters == [3]


def _two_process_env():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    return dict(PYTHON=PY, PORT=str(port), OMP_NUM_THREADS='1')


@pytest.mark.slow
def test_two_process_gloo_training(toy_coco_root, tmp_path):
    work_dir = str(tmp_path)
    result = run_tool('bash',
                      'tools/dist_train.sh',
                      DEMO_CONFIG,
                      '2',
                      '--work-dir',
                      work_dir,
                      *tiny_run_options(toy_coco_root, max_iters=2),
                      env=_two_process_env())
    _assert_ok(result)
    assert osp.isfile(osp.join(work_dir, 'iter_2.pth'))
    assert 'Distributed training is not used' not in result.stdout + result.stderr


@pytest.mark.slow
def test_two_process_gloo_testing(trained, toy_coco_root, tmp_path):
    result = run_tool('bash',
                      'tools/dist_test.sh',
                      DEMO_CONFIG,
                      osp.join(trained, 'iter_4.pth'),
                      '2',
                      '--work-dir',
                      str(tmp_path),
                      *tiny_run_options(toy_coco_root),
                      env=_two_process_env())
    _assert_ok(result)
    assert 'coco/bbox_mAP' in result.stdout + result.stderr


def test_shutdown_distributed_destroys_the_group(tmp_path):
    dist.init_process_group('gloo', init_method=f'file://{tmp_path}/store', rank=0, world_size=1)
    shutdown_distributed()
    assert not dist.is_initialized()
    shutdown_distributed()


def test_missing_dataset_says_how_to_make_it(tmp_path):
    with pytest.raises(FileNotFoundError,
                       match=r'train_dataloader: dataset file\(s\) not found: .*'
                       r'python tools/misc/make_toy_coco.py --out-dir'):
        load_tool_config(str(REPO_ROOT / DEMO_CONFIG), str(tmp_path),
                         {'train_dataloader.dataset.data_root': f'{tmp_path}/none/'}, 'none')


def test_missing_evaluator_annotations_are_reported(toy_coco_root, tmp_path):
    options = {
        f'{split}_dataloader.dataset.data_root': toy_coco_root
        for split in ('train', 'val', 'test')
    }
    options['val_evaluator.ann_file'] = f'{tmp_path}/val.json'
    with pytest.raises(FileNotFoundError,
                       match=f'val_dataloader: dataset file\\(s\\) not found: '
                       f'{tmp_path}/val.json'):
        load_tool_config(str(REPO_ROOT / DEMO_CONFIG), str(tmp_path), options, 'none')


def test_coco_dataset_missing_says_where_coco_goes(tmp_path):
    with pytest.raises(FileNotFoundError, match=r'put COCO 2017 under .*/coco/ \(annotations/'):
        load_tool_config(str(REPO_ROOT / 'configs/drconv/mask-rcnn_r50_fpn_180k_coco.py'),
                         str(tmp_path), {'train_dataloader.dataset.data_root': f'{tmp_path}/coco/'},
                         'none')


def test_missing_config():
    missing = str(REPO_ROOT / 'configs' / 'none.py')
    with pytest.raises(FileNotFoundError, match=f"config file '{missing}' does not exist"):
        load_tool_config(missing, None, None, 'none')


@pytest.mark.slow
def test_missing_checkpoints_stop_the_tools(toy_coco_root, tmp_path):
    missing = str(tmp_path / 'nope.pth')
    result = run_tool(PY, 'tools/test.py', DEMO_CONFIG, missing, *tiny_run_options(toy_coco_root))
    assert result.returncode != 0
    assert f"FileNotFoundError: checkpoint '{missing}' does not exist" in result.stderr
    result = run_tool(PY, 'tools/train.py', DEMO_CONFIG, '--work-dir', str(tmp_path), '--resume',
                      missing, *tiny_run_options(toy_coco_root))
    assert result.returncode != 0
    assert f"FileNotFoundError: --resume checkpoint '{missing}' does not exist" in result.stderr


@pytest.mark.slow
def test_detnas_drconv_config_trains_on_toy_set(toy_coco_root, tmp_path):
    """The DetNAS-300M 8R config trains on one CPU process (mmengine turns SyncBN into BN)."""
    config = 'configs/detnas/faster-rcnn_detnas-300m-drconv-8r_fpn-4conv1fc_90k_coco.py'
    splits = (('train', 'train'), ('val', 'val'), ('test', 'val'))
    options = [
        f'{loader}_dataloader.dataset.{key}' for loader, split in splits
        for key in ('type=ToyCocoDataset', f'data_root={toy_coco_root}',
                    f'ann_file=annotations/instances_{split}.json', f'data_prefix.img={split}/')
    ]
    options += [
        f'val_evaluator.ann_file={toy_coco_root}/annotations/instances_val.json',
        f'test_evaluator.ann_file={toy_coco_root}/annotations/instances_val.json',
        'train_dataloader.dataset.pipeline.2.scale=(128,128)',
        'train_dataloader.num_workers=0',
        'train_dataloader.persistent_workers=False',
        'train_cfg.max_iters=2',
        'train_cfg.val_interval=100',
        'default_hooks.logger.interval=1',
        'model.backbone.init_cfg=None',
    ]
    result = run_tool(PY, 'tools/train.py', config, '--work-dir', str(tmp_path), '--cfg-options',
                      *options)
    _assert_ok(result)
    losses = [entry['loss'] for entry in _train_log(str(tmp_path)) if 'loss' in entry]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
