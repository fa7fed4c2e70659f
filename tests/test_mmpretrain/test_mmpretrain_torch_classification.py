"""The plain-torch networks of drconv_mmdet.classification against mmpretrain's ImageClassifier
with the same backbone (plain ShuffleNetV2/MobileNetV2, DRShuffleNetV2/DRMobileNetV2) and a
LinearClsHead: the same state-dict keys and shapes, strict loads both ways, equal eval outputs;
a plain mmpretrain state dict starts the torch DRConv network."""
import pytest
import torch

pytest.importorskip('mmpretrain',
                    reason='needs mmpretrain and torchvision: make setup-compat '
                    'installs them (the torch 2.13 CPU wheel cannot load torchvision)')

from helpers import randomised  # noqa: E402
from mmengine.registry import DefaultScope  # noqa: E402
from mmpretrain.registry import MODELS  # noqa: E402

import drconv_mmdet.mmpretrain  # noqa: F401,E402 (registers the DRConv backbones)
from drconv_mmdet.classification import mobilenet_v2, shufflenet_v2  # noqa: E402
from drconv_mmdet.nn import DRConv2d  # noqa: E402

NUM_CLASSES = 10
# (mmpretrain backbone type, torch factory, widen_factor, DRConv arguments, head in_channels)
VARIANTS = {
    'ShuffleNetV2-0.5x': ('ShuffleNetV2', shufflenet_v2, 0.5, {}, 1024),
    'ShuffleNetV2-2x': ('ShuffleNetV2', shufflenet_v2, 2.0, {}, 2048),
    'MobileNetV2-0.35x': ('MobileNetV2', mobilenet_v2, 0.35, {}, 1280),
    'DRShuffleNetV2-0.5x': ('DRShuffleNetV2', shufflenet_v2, 0.5, dict(region_num=4), 1024),
    'DRShuffleNetV2-1x-shared-paper':
    ('DRShuffleNetV2', shufflenet_v2, 1.0, dict(region_num=2, generator='paper',
                                                shared_guide=True), 1024),
    'DRMobileNetV2-0.25x-shared': ('DRMobileNetV2', mobilenet_v2, 0.25,
                                   dict(region_num=4,
                                        shared_guide=True,
                                        drconv_cfg=dict(num_bases=3)), 1280),
    'DRMobileNetV2-1.2x': ('DRMobileNetV2', mobilenet_v2, 1.2, dict(region_num=3), 1536),
}


def _mmpretrain_classifier(backbone, width, drconv, in_channels):
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        return MODELS.build(
            dict(type='ImageClassifier',
                 backbone=dict(type=backbone, widen_factor=width, **drconv),
                 neck=dict(type='GlobalAveragePooling'),
                 head=dict(type='LinearClsHead', num_classes=NUM_CLASSES, in_channels=in_channels)))


def _pair(variant):
    backbone, build, width, drconv, in_channels = VARIANTS[variant]
    reference = _mmpretrain_classifier(backbone, width, drconv, in_channels).eval()
    model = build(width, NUM_CLASSES, **drconv).eval()
    return reference, model


def _assert_same_outputs(reference, model):
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        expected = reference(x, mode='tensor')
        torch.testing.assert_close(model(x), expected, rtol=0, atol=0)
    assert expected.shape == (2, NUM_CLASSES)


@pytest.mark.parametrize('variant', sorted(VARIANTS))
def test_same_state_dict_keys_and_shapes(variant):
    reference, model = _pair(variant)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    assert [name for name, m in model.named_modules() if isinstance(m, DRConv2d)] == \
        [name for name, m in reference.named_modules() if isinstance(m, DRConv2d)]


@pytest.mark.parametrize('variant', sorted(VARIANTS))
def test_mmpretrain_state_dict_loads_into_the_torch_network(variant):
    reference, model = _pair(variant)
    randomised(reference, seed=0)
    model.load_state_dict(reference.state_dict(), strict=True)
    _assert_same_outputs(reference, model)


@pytest.mark.parametrize('variant', sorted(VARIANTS))
def test_torch_state_dict_loads_into_mmpretrain(variant):
    reference, model = _pair(variant)
    randomised(model, seed=1)
    reference.load_state_dict(model.state_dict(), strict=True)
    _assert_same_outputs(reference, model)


@pytest.mark.parametrize('variant', ['ShuffleNetV2-0.5x', 'MobileNetV2-0.35x'])
def test_plain_mmpretrain_state_dict_starts_the_torch_drconv_network(variant):
    backbone, build, width, _, in_channels = VARIANTS[variant]
    plain = randomised(_mmpretrain_classifier(backbone, width, {}, in_channels), seed=2).eval()
    model = build(width, NUM_CLASSES, region_num=4, shared_guide=True).eval()
    model.load_state_dict(plain.state_dict(), strict=True)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), plain(x, mode='tensor'), rtol=1e-4, atol=1e-4)
