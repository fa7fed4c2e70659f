"""configs/mmpretrain: each builds the network its name says, and a Runner builds the paper's
schedule from the ImageNet configs (Sec. 4.1); the metafile lists them."""
import copy
from pathlib import Path

import pytest
import torch
import yaml
from helpers import REPO_ROOT, schedule_runner
from torch import nn

pytest.importorskip('mmpretrain',
                    reason='needs mmpretrain and torchvision: make setup-compat '
                    'installs them (the torch 2.13 CPU wheel cannot load torchvision)')

from mmengine.config import Config  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402
from mmengine.runner import EpochBasedTrainLoop, Runner  # noqa: E402
from mmpretrain.registry import MODELS  # noqa: E402

from drconv_mmdet.nn import DRConv2d  # noqa: E402

CONFIG_DIR = REPO_ROOT / 'configs' / 'mmpretrain'
IMAGENET_CONFIGS = sorted(CONFIG_DIR.glob('*_in1k.py'))
CLASSIFIER_CONFIGS = IMAGENET_CONFIGS + sorted(CONFIG_DIR.glob('*_digits.py'))
TABLE_1 = {
    'shufflenet-v2-0.5x': ('DRShuffleNetV2', 0.5),
    'shufflenet-v2-1x': ('DRShuffleNetV2', 1.0),
    'mobilenet-v2': ('DRMobileNetV2', 1.0),
}


def _name(path: Path) -> str:
    return path.name


def _build(path: Path) -> nn.Module:
    cfg = Config.fromfile(str(path))
    # A config that mmpretrain's own tools run must import the plugin itself.
    assert 'drconv_mmdet.mmpretrain' in cfg.custom_imports['imports']
    init_default_scope(cfg.default_scope)
    return MODELS.build(copy.deepcopy(cfg.model)), cfg


@pytest.mark.parametrize('path', CLASSIFIER_CONFIGS, ids=_name)
def test_network_is_the_one_the_name_says(path):
    model, cfg = _build(path)
    network, _, _ = path.stem.partition('_')
    is_drconv = network.endswith('-drconv-8r')
    plain_path = path.with_name(path.name.replace('-drconv-8r', ''))
    drconvs = {name for name, m in model.backbone.named_modules() if isinstance(m, DRConv2d)}
    backbone_type, width = TABLE_1[network.replace('-drconv-8r', '')]
    assert cfg.model.backbone.widen_factor == width
    if not is_drconv:
        assert not drconvs and cfg.model.backbone.type == backbone_type[2:]
        return
    assert cfg.model.backbone.type == backbone_type
    assert {m.region_num for m in model.modules() if isinstance(m, DRConv2d)} == {8}
    # The DRConv network differs from its baseline in the 1x1 convs only.
    plain, plain_cfg = _build(plain_path)
    assert drconvs == {
        name
        for name, m in plain.backbone.named_modules()
        if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.groups == 1
    }
    assert plain_cfg.model.head == cfg.model.head
    assert plain_cfg.train_dataloader == cfg.train_dataloader


def _lrs(runner: Runner) -> list:
    optimizer = runner.optim_wrapper.optimizer
    runner.optim_wrapper.step()  # the schedulers expect an optimizer step before theirs
    lrs = []
    for _ in range(runner.max_iters):
        lrs.append(optimizer.param_groups[0]['lr'])
        for scheduler in runner.param_schedulers:
            scheduler.step()
    return lrs


@pytest.mark.parametrize('path', IMAGENET_CONFIGS, ids=_name)
def test_imagenet_configs_train_on_the_paper_schedule(path, tmp_path):
    """Sec. 4.1: 240 epochs, lr from 0.5 linearly to 0; ShuffleNetV2's setting: SGD, momentum 0.9,
    weight decay 4e-5 and none on the norms, 1024 images a step; 224 x 224 crops."""
    cfg = Config.fromfile(str(path))
    runner = schedule_runner(cfg, str(tmp_path))
    assert isinstance(runner.train_loop, EpochBasedTrainLoop)
    assert runner.max_epochs == 240 and runner.max_iters == 240
    optimizer = runner.optim_wrapper.optimizer
    assert type(optimizer) is torch.optim.SGD
    assert optimizer.defaults['momentum'] == 0.9 and optimizer.defaults['weight_decay'] == 4e-5
    assert cfg.optim_wrapper.paramwise_cfg.norm_decay_mult == 0
    lrs = _lrs(runner)
    # mmengine's PolyLR reaches its end value at its last iteration, end - 1.
    for iteration in (0, 60, 120, 180, 239):
        assert lrs[iteration] == pytest.approx(0.5 * (1 - iteration / 239), abs=1e-12), iteration
    assert cfg.train_dataloader.batch_size * 16 == cfg.auto_scale_lr.base_batch_size == 1024
    crops = [t for t in cfg.train_dataloader.dataset.pipeline if t.type == 'RandomResizedCrop']
    assert [t.scale for t in crops] == [224]
    assert [t.crop_size for t in cfg.val_dataloader.dataset.pipeline
            if t.type == 'CenterCrop'] == [224]


@pytest.mark.parametrize('path', sorted(CONFIG_DIR.glob('*_digits.py')), ids=_name)
def test_digits_configs_decay_linearly_to_zero(path, tmp_path):
    cfg = Config.fromfile(str(path))
    runner = schedule_runner(cfg, str(tmp_path))
    lrs = _lrs(runner)
    base_lr = cfg.optim_wrapper.optimizer.lr
    assert lrs[0] == base_lr and len(lrs) == runner.max_epochs and lrs[-1] < 1e-12
    steps = [b - a for a, b in zip(lrs, lrs[1:])]
    assert min(steps) == pytest.approx(max(steps)) == pytest.approx(-base_lr / (len(lrs) - 1))


def test_metafile_lists_the_imagenet_configs():
    index = yaml.safe_load((REPO_ROOT / 'model-index.yml').read_text())
    assert 'configs/mmpretrain/metafile.yml' in index['Import']
    meta = yaml.safe_load((CONFIG_DIR / 'metafile.yml').read_text())
    assert sorted(model['Config'] for model in meta['Models']) == \
        sorted(str(p.relative_to(REPO_ROOT)) for p in IMAGENET_CONFIGS)
