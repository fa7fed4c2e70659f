"""An mmdet detector on an mmpretrain DRConv backbone, taken by scope: it builds, starts from a
plain mmpretrain checkpoint through its init_cfg, and trains a step."""
import copy

import pytest
import torch
from helpers import REPO_ROOT
from torch import nn

pytest.importorskip('mmpretrain',
                    reason='needs mmpretrain and torchvision: make setup-compat '
                    'installs them (the torch 2.13 CPU wheel cannot load torchvision)')
pytest.importorskip('mmcv.ops', reason='mmdet\'s detectors need mmcv built with its ops')

from mmdet.registry import MODELS  # noqa: E402
from mmdet.testing import demo_mm_inputs  # noqa: E402
from mmengine.config import Config  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402
from mmpretrain.models.backbones import ShuffleNetV2  # noqa: E402

from drconv_mmdet.mmpretrain import DRShuffleNetV2  # noqa: E402
from drconv_mmdet.nn import DRConv2d  # noqa: E402

CONFIG = REPO_ROOT / 'configs/mmpretrain/retinanet_shufflenet-v2-1x-drconv-8r_fpn_1x_coco.py'


@pytest.fixture(scope='module')
def cfg():
    cfg = Config.fromfile(str(CONFIG))
    assert cfg.model.backbone.type == 'mmpretrain.DRShuffleNetV2'
    assert 'drconv_mmdet.mmpretrain' in cfg.custom_imports['imports']
    return cfg


def _build(cfg, checkpoint=None):
    model_cfg = copy.deepcopy(cfg.model)
    model_cfg.backbone.init_cfg = (None if checkpoint is None else dict(model_cfg.backbone.init_cfg,
                                                                        checkpoint=checkpoint))
    init_default_scope('mmdet')
    return MODELS.build(model_cfg)


def test_backbone_starts_from_a_plain_mmpretrain_checkpoint(cfg, tmp_path):
    torch.manual_seed(0)
    plain = ShuffleNetV2(widen_factor=1.0, out_indices=(0, 1, 2))
    for name, tensor in plain.state_dict().items():
        if name.endswith('running_var'):
            tensor.uniform_(0.5, 1.5)
        elif tensor.is_floating_point():
            tensor.normal_(0, 0.1)
    checkpoint = tmp_path / 'shufflenet-v2-1x.pth'
    state = {f'backbone.{key}': value for key, value in plain.state_dict().items()}
    state['head.fc.weight'] = torch.zeros(1000, 1024)
    torch.save(dict(state_dict=state), str(checkpoint))
    model = _build(cfg, str(checkpoint))
    model.init_weights()
    assert isinstance(model.backbone, DRShuffleNetV2)
    model.eval()
    plain.eval()
    x = torch.rand(1, 3, 96, 64)
    with torch.no_grad():
        for out, expected in zip(model.backbone(x), plain(x)):
            torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_detector_trains_a_step(cfg):
    torch.manual_seed(0)
    model = _build(cfg)
    model.init_weights()
    drconvs = {name: m for name, m in model.backbone.named_modules() if isinstance(m, DRConv2d)}
    assert drconvs and all(m.region_num == 8 for m in drconvs.values())
    assert not any(
        isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.groups == 1
        for m in model.backbone.modules())
    model.train()
    data = model.data_preprocessor(
        demo_mm_inputs(2, [[3, 128, 160], [3, 96, 128]], num_items=[3, 2]), True)
    losses = model(**data, mode='loss')
    loss, log_vars = model.parse_losses(losses)
    loss.backward()
    assert torch.isfinite(loss)
    # mmpretrain's ShuffleNetV2 runs its last 1x1 conv (layers.3) whatever out_indices says; with
    # the stage outputs (0, 1, 2) nothing uses it.
    used = {name: layer for name, layer in drconvs.items() if not name.startswith('layers.3.')}
    assert len(used) == len(drconvs) - 1
    for name, layer in used.items():
        for p_name, param in layer.named_parameters():
            assert param.grad is not None and torch.isfinite(param.grad).all(), f'{name}.{p_name}'
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    optimizer.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())
