"""The plain-torch ShuffleNetV2 and MobileNetV2: DRConvs exactly at the 1x1 convs, the output
shapes, the state-dict names of mmpretrain's ImageClassifier, a training step; torch alone."""
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_drconvs_start_like_the_plain_convs, assert_every_drconv_parameter_learns
from torch import nn

from drconv_mmdet.classification import (ImageClassifier, MobileNetV2, ShuffleNetV2,
                                         drconv_mobilenet_v2, drconv_shufflenet_v2, mobilenet_v2,
                                         shufflenet_v2)
from drconv_mmdet.nn import DRConv2d, SharedGuideSequential

SHUFFLENET_WIDTHS = (0.5, 1.0, 1.5, 2.0)
MOBILENET_WIDTHS = (0.25, 0.5, 0.75, 1.0, 1.4)
VARIANTS = [(ShuffleNetV2, w) for w in SHUFFLENET_WIDTHS] + [(MobileNetV2, w)
                                                             for w in MOBILENET_WIDTHS]
IDS = [f'{cls.__name__}-{w}x' for cls, w in VARIANTS]
# Few regions and bases keep the wide variants light; the layer has its own tests.
SMALL = dict(region_num=4, drconv_cfg=dict(num_bases=2))
# 1x1 convs: ShuffleNetV2 has 3 per stride-2 block (3 blocks), 2 per other block (13) and the
# last conv; MobileNetV2 has 1 in its first block (expand ratio 1), 2 in the 16 others and the
# last conv.
NUM_POINTWISE = {ShuffleNetV2: 3 * 3 + 2 * 13 + 1, MobileNetV2: 1 + 2 * 16 + 1}
# Branches (ShuffleNetV2) and blocks (MobileNetV2) with two 1x1 convs, which share a guide.
NUM_GUIDED = {ShuffleNetV2: 16, MobileNetV2: 16}
# Channels of each output at width 0.5 (ShuffleNetV2) and 0.25 (MobileNetV2).
OUT_CHANNELS = {
    ShuffleNetV2: (0.5, (48, 96, 192, 1024)),
    MobileNetV2: (0.25, (8, 8, 8, 16, 24, 40, 80, 1280)),
}
# Output strides of each output.
OUT_STRIDES = {ShuffleNetV2: (8, 16, 32, 32), MobileNetV2: (2, 4, 8, 16, 16, 32, 32, 32)}


def _convs(model):
    return {name: m for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, DRConv2d))}


@pytest.mark.parametrize('cls, width', VARIANTS, ids=IDS)
@pytest.mark.parametrize('shared_guide', [False, True])
def test_drconvs_exactly_at_the_1x1_convs(cls, width, shared_guide):
    plain = cls(widen_factor=width)
    model = cls(widen_factor=width, shared_guide=shared_guide, **SMALL)
    assert plain.drconv_names == [] and plain.region_num is None
    assert not any(isinstance(m, DRConv2d) for m in plain.modules())
    plain_convs, convs = _convs(plain), _convs(model)
    assert convs.keys() == plain_convs.keys()
    pointwise = [
        name for name, conv in plain_convs.items()
        if conv.kernel_size == (1, 1) and conv.groups == 1
    ]
    assert len(pointwise) == NUM_POINTWISE[cls]
    assert [name for name, m in convs.items() if isinstance(m, DRConv2d)] == pointwise
    assert model.drconv_names == pointwise
    for name in pointwise:
        layer, conv = convs[name], plain_convs[name]
        assert (layer.in_channels, layer.out_channels, layer.stride, layer.region_num,
                layer.generator.num_bases) == (conv.in_channels, conv.out_channels, conv.stride, 4,
                                               2)
        assert layer.bias is None
    # The 3x3 stem and the depthwise 3x3 convs stay plain.
    for name, conv in convs.items():
        if name not in pointwise:
            assert type(conv) is nn.Conv2d and conv.kernel_size == (3, 3), name
            assert conv.groups == (1 if name == 'conv1.conv' else conv.in_channels), name
    guided = [m for m in model.modules() if isinstance(m, SharedGuideSequential)]
    assert len(guided) == (NUM_GUIDED[cls] if shared_guide else 0)
    for sequence in guided:
        owners = [unit.conv.with_guide_conv for unit in sequence if isinstance(unit.conv, DRConv2d)]
        assert owners == [True, False]


@pytest.mark.parametrize('cls', [ShuffleNetV2, MobileNetV2])
@pytest.mark.parametrize('region_num', [None, 4])
def test_every_output_has_its_shape(cls, region_num):
    width, channels = OUT_CHANNELS[cls]
    model = cls(widen_factor=width,
                out_indices=range(len(channels)),
                region_num=region_num,
                shared_guide=region_num is not None).eval()
    assert model.out_channels == channels
    with torch.no_grad():
        outs = model(torch.rand(2, 3, 64, 96))
    assert [tuple(o.shape) for o in outs] == [(2, c, 64 // s, 96 // s)
                                              for c, s in zip(channels, OUT_STRIDES[cls])]
    # Outputs come in layer order, whatever the order of out_indices.
    model = cls(widen_factor=width, out_indices=(2, 0), region_num=region_num).eval()
    assert model.out_indices == (0, 2) and model.out_channels == (channels[0], channels[2])
    with torch.no_grad():
        assert [o.shape[1] for o in model(torch.rand(1, 3, 32, 32))] == list(model.out_channels)


@pytest.mark.parametrize('build, width, last', [(shufflenet_v2, 0.5, 1024),
                                                (shufflenet_v2, 2.0, 2048),
                                                (mobilenet_v2, 0.25, 1280),
                                                (mobilenet_v2, 1.4, 1792)])
def test_classifier_has_the_names_of_mmpretrain(build, width, last):
    model = build(width, num_classes=7)
    assert isinstance(model, ImageClassifier) and model.num_classes == 7
    state = model.state_dict()
    assert tuple(state['head.fc.weight'].shape) == (7, last)
    assert tuple(state['backbone.conv1.conv.weight'].shape)[1:] == (3, 3, 3)
    for key in ('backbone.conv1.bn.weight', 'backbone.conv1.bn.running_mean',
                'backbone.conv1.bn.num_batches_tracked', 'head.fc.bias'):
        assert key in state
    assert not any(key.startswith('neck.') for key in state)
    drconv = (drconv_shufflenet_v2 if build is shufflenet_v2 else drconv_mobilenet_v2)(width, 7)
    keys = set(drconv.state_dict())
    first = ('backbone.layers.0.0.branch2.0.conv'
             if build is shufflenet_v2 else 'backbone.layer1.0.conv.1.conv')
    assert {f'{first}.guide.weight', f'{first}.guide.bias', f'{first}.generator.bases'} <= keys
    assert f'{first}.weight' not in keys and f'{first}.weight' in state
    assert {m.region_num for m in drconv.modules() if isinstance(m, DRConv2d)} == {8}


@pytest.mark.parametrize('build, width', [(drconv_shufflenet_v2, 0.5), (drconv_mobilenet_v2, 0.25)])
@pytest.mark.parametrize('shared_guide, generator', [(False, 'basis'), (True, 'basis'),
                                                     (False, 'paper')])
def test_training_step_gives_every_drconv_parameter_a_finite_gradient(build, width, shared_guide,
                                                                      generator):
    torch.manual_seed(0)
    model = build(width,
                  num_classes=10,
                  region_num=4,
                  generator=generator,
                  shared_guide=shared_guide).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.rand(4, 3, 32, 32), torch.randint(0, 10, (4, ))
    F.cross_entropy(model(x), y).backward()
    assert_every_drconv_parameter_learns(model)
    optimizer.step()
    assert torch.isfinite(model(x)).all()


@pytest.mark.parametrize('cls, width', [(ShuffleNetV2, 0.5), (MobileNetV2, 0.25)])
@pytest.mark.parametrize('generator', ['basis', 'paper'])
def test_drconvs_start_at_the_size_of_the_plain_convs(cls, width, generator):
    """mmpretrain's ShuffleNetV2 starts its 1x1 convs far smaller than a DRConv's own init; behind
    a norm layer the smaller weight learns faster, so the DRConvs take the plain network's size."""
    assert_drconvs_start_like_the_plain_convs(
        cls(width, region_num=4, generator=generator, drconv_cfg=dict(hidden_channels=4)),
        cls(width))


@pytest.mark.parametrize('build, width, kwargs', [(shufflenet_v2, 0.5, {}),
                                                  (drconv_shufflenet_v2, 0.5, SMALL),
                                                  (drconv_mobilenet_v2, 0.25, SMALL)])
def test_empty_batch(build, width, kwargs):
    model = build(width, num_classes=10, **kwargs).eval()
    with torch.no_grad():
        assert model(torch.rand(0, 3, 32, 32)).shape == (0, 10)


def test_shared_guide_regions_follow_the_depthwise_conv():
    """The projection DRConv of a stride-2 block takes the expansion DRConv's regions at the
    centres of the depthwise conv's windows (rows and columns 0, 2, 4, ...)."""
    torch.manual_seed(0)
    model = MobileNetV2(0.25, region_num=4, shared_guide=True,
                        drconv_cfg=dict(record_mask=True)).eval()
    block = model.layer2[0]
    assert block.stride == 2 and isinstance(block.conv, SharedGuideSequential)
    with torch.no_grad():
        model(torch.rand(2, 3, 56, 56))
    expansion, projection = block.conv[0].conv.last_mask, block.conv[2].conv.last_mask
    assert expansion.shape == (2, 28, 28) and projection.shape == (2, 14, 14)
    assert torch.equal(projection, expansion[:, ::2, ::2])
    assert expansion.unique().numel() > 1


def test_import_needs_neither_openmmlab_nor_torchvision():
    blocked = ('mmcv', 'mmengine', 'mmdet', 'mmpretrain', 'torchvision', 'detectron2')
    code = (f'import sys; sys.modules.update(dict.fromkeys({blocked!r})); '
            'import torch; from drconv_mmdet.classification import drconv_shufflenet_v2; '
            'model = drconv_shufflenet_v2(0.5, num_classes=3, region_num=2).eval(); '
            'assert model(torch.rand(1, 3, 32, 32)).shape == (1, 3)')
    result = subprocess.run([sys.executable, '-c', code],
                            capture_output=True,
                            text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
