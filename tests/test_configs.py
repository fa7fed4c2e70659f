"""Every config of the project parses, names the plugin, and builds its model."""
import copy
from pathlib import Path

import pytest
import yaml
from conftest import REPO_ROOT
from mmdet.registry import MODELS
from mmengine.config import Config
from mmengine.registry import init_default_scope

from drconv_mmdet.models.layers import DRConv2d

CONFIGS = sorted(p for p in (REPO_ROOT / 'configs').rglob('*.py') if '_base_' not in p.parts)


def _no_sync_bn(cfg):
    """SyncBN needs a process group; the same model with BN is what one CPU process builds."""
    if isinstance(cfg, dict):
        if cfg.get('type') == 'SyncBN':
            cfg['type'] = 'BN'
        for value in cfg.values():
            _no_sync_bn(value)
    elif isinstance(cfg, (list, tuple)):
        for value in cfg:
            _no_sync_bn(value)


def test_configs_found():
    names = {p.name for p in CONFIGS}
    assert {
        'mask-rcnn_r50_fpn_180k_coco.py', 'mask-rcnn_r50_drfpn-4r_180k_coco.py',
        'mask-rcnn_r50_drfpn-8r_180k_coco.py', 'mask-rcnn_r50_drfpn-16r_180k_coco.py',
        'mask-rcnn_r18_drfpn-8r_toy-coco.py'
    } <= names


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_config_builds(path: Path):
    init_default_scope('mmdet')
    cfg = Config.fromfile(str(path))
    assert cfg.custom_imports == dict(imports=['drconv_mmdet'], allow_failed_imports=False)
    model_cfg = copy.deepcopy(cfg.model)
    _no_sync_bn(model_cfg)
    model = MODELS.build(model_cfg)
    assert sum(p.numel() for p in model.parameters()) > 0


def test_paper_schedule():
    cfg = Config.fromfile(str(REPO_ROOT / 'configs/drconv/mask-rcnn_r50_drfpn-8r_180k_coco.py'))
    assert cfg.train_cfg.type == 'IterBasedTrainLoop' and cfg.train_cfg.max_iters == 180000
    assert 'max_epochs' not in cfg.train_cfg
    assert cfg.train_dataloader.sampler.type == 'InfiniteSampler'
    assert cfg.train_dataloader.batch_size * 8 == cfg.auto_scale_lr.base_batch_size == 16
    warmup, steps = cfg.param_scheduler
    assert (warmup.type, warmup.start_factor, warmup.end, warmup.by_epoch) == ('LinearLR', 0.33,
                                                                              500, False)
    assert steps.milestones == [120000, 140000, 150000] and steps.gamma == 0.1
    assert cfg.optim_wrapper.optimizer == dict(type='SGD', lr=0.02, momentum=0.9,
                                               weight_decay=1e-4)
    assert cfg.model.train_cfg.rcnn.sampler.num == 512
    assert cfg.default_hooks.checkpoint.by_epoch is False and cfg.log_processor.by_epoch is False
    assert cfg.model.neck.drconv_cfg.region_num == 8
    assert cfg.val_evaluator.metric == ['bbox', 'segm']


def test_metafiles_point_at_configs():
    index = yaml.safe_load((REPO_ROOT / 'model-index.yml').read_text())
    for metafile in index['Import']:
        meta = yaml.safe_load((REPO_ROOT / metafile).read_text())
        for model in meta['Models']:
            assert (REPO_ROOT / model['Config']).is_file(), model['Config']
            assert model['Weights'] is None


def test_lateral_config_puts_drconv_in_p2_p3_laterals():
    init_default_scope('mmdet')
    cfg = Config.fromfile(
        str(REPO_ROOT / 'configs/drconv/mask-rcnn_r50_drfpn-lateral-8r_180k_coco.py'))
    neck = MODELS.build(cfg.model.neck)
    drconvs = {name: m for name, m in neck.named_modules() if isinstance(m, DRConv2d)}
    assert sorted(drconvs) == ['lateral_convs.0.conv', 'lateral_convs.1.conv']
    assert all(m.kernel_size == (1, 1) and m.region_num == 8 for m in drconvs.values())
