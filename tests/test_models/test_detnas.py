import logging

import pytest
import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from drconv_mmdet.models.backbones import (DetNAS, DetNASBlock, SpatialPointwiseUnit,
                                           split_even_odd)

ARCHS = tuple(DetNAS.arch_settings)
# Backbone parameters (weights, conv biases, BN affine) from the DetNAS reference table.
ARCH_PARAMS = {
    'COCO-FPN-300M': 1.85e6,
    'COCO-RetinaNet-300M': 2.04e6,
    'COCO-FPN-1.3G': 8.42e6,
    'COCO-FPN-3.8G': 26.7e6
}
ARCH_POINTWISE_CONVS = {
    'COCO-FPN-300M': 50,
    'COCO-RetinaNet-300M': 54,
    'COCO-FPN-1.3G': 100,
    'COCO-FPN-3.8G': 100
}


@pytest.mark.parametrize('arch', ARCHS)
def test_detnas_output_shapes(arch):
    model = DetNAS(arch=arch).eval()
    with torch.no_grad():
        outs = model(torch.rand(1, 3, 64, 96))
    channels = DetNAS.arch_settings[arch]['channels'][1:]
    assert [tuple(out.shape) for out in outs] == [(1, c, 64 // s, 96 // s)
                                                  for c, s in zip(channels, (4, 8, 16, 32))]


def test_detnas_out_indices():
    model = DetNAS(out_indices=(1, 3)).eval()
    with torch.no_grad():
        outs = model(torch.rand(1, 3, 64, 64))
    assert [tuple(out.shape) for out in outs] == [(1, 160, 8, 8), (1, 640, 2, 2)]


@pytest.mark.parametrize('arch', ARCHS)
def test_detnas_size(arch):
    model = DetNAS(arch=arch)
    num_params = sum(p.numel() for p in model.parameters())
    assert num_params == pytest.approx(ARCH_PARAMS[arch], rel=0.01)
    pointwise = [
        m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)
    ]
    assert len(pointwise) == ARCH_POINTWISE_CONVS[arch]


def test_detnas_madds():
    complexity = pytest.importorskip('drconv_mmdet.utils.complexity')
    madds = complexity.count_madds(DetNAS().eval(), torch.rand(1, 3, 224, 224))
    assert madds == pytest.approx(288.1e6, abs=0.05e6)


def test_detnas_official_key_names():
    state_dict = DetNAS().state_dict()
    expected_shapes = {
        'first_conv.conv.weight': (16, 3, 3, 3),
        'first_conv.conv.bias': (16, ),
        'first_conv.bn.running_mean': (16, ),
        'features.0.conv.0.interstellar1a_shufflenet_7x7_branch2a.weight': (32, 16, 1, 1),
        'features.0.conv.0.bn1a_shufflenet_7x7_branch2a.num_batches_tracked': (),
        'features.0.conv.1.interstellar1a_shufflenet_7x7_branch2b_s.weight': (32, 1, 7, 7),
        'features.0.conv.1.interstellar1a_shufflenet_7x7_branch2b_s_bn.weight': (32, ),
        'features.0.conv.1.interstellar1a_shufflenet_7x7_branch2b.weight': (48, 32, 1, 1),
        'features.0.conv.1.bn1a_shufflenet_7x7_branch2b.running_var': (48, ),
        'features.0.proj_conv.interstellar1a_proj_s.weight': (16, 1, 7, 7),
        'features.0.proj_conv.interstellar1a_proj_s_bn.bias': (16, ),
        'features.0.proj_conv.interstellar1a_proj.weight': (16, 16, 1, 1),
        'features.0.proj_conv.bn1a_proj.weight': (16, ),
        'features.1.conv.0.interstellar1b_shufflenet_5x5_branch2a.weight': (32, 32, 1, 1),
        'features.8.conv.0.interstellar3a_xception_3x3_branch2a_s.weight': (160, 1, 3, 3),
        'features.8.conv.0.interstellar3a_xception_3x3_branch2a.weight': (160, 160, 1, 1),
        'features.8.conv.2.interstellar3a_xception_3x3_branch2c.weight': (160, 160, 1, 1),
        'features.8.conv.2.bn3a_xception_3x3_branch2c.bias': (160, ),
        'features.19.conv.1.interstellar4d_shufflenet_7x7_branch2b.weight': (320, 320, 1, 1),
    }
    assert {key: tuple(state_dict[key].shape) for key in expected_shapes} == expected_shapes
    assert len(state_dict) == 523


def test_split_even_odd():
    even, odd = split_even_odd(torch.arange(8.).view(1, 8, 1, 1))
    assert even.flatten().tolist() == [0., 2., 4., 6.]
    assert odd.flatten().tolist() == [1., 3., 5., 7.]


def test_split_even_odd_rejects_odd_channels():
    with pytest.raises(ValueError, match=r'even C, got shape \(1, 3, 2, 2\)'):
        split_even_odd(torch.rand(1, 3, 2, 2))


@pytest.mark.parametrize('op', ['shufflenet_5x5', 'xception_3x3'])
def test_block_stride1_keeps_even_channels_and_feeds_odd_ones(op):
    block = DetNASBlock('1b', op, 8, 8, stride=1).eval()
    x = torch.rand(2, 8, 5, 6)
    with torch.no_grad():
        out = block(x)
        main = x[:, 1::2]
        for unit in block.conv:
            main = unit(main)
    torch.testing.assert_close(out[:, :4], x[:, 0::2])
    torch.testing.assert_close(out[:, 4:], main.relu())


def test_block_stride2_concatenates_projection_then_main():
    block = DetNASBlock('1a', 'shufflenet_7x7', 4, 12, stride=2).eval()
    x = torch.rand(2, 4, 7, 6)
    with torch.no_grad():
        out = block(x)
        projection = block.proj_conv(x)
        main = x
        for unit in block.conv:
            main = unit(main)
    assert out.shape == (2, 12, 4, 3)
    torch.testing.assert_close(out[:, :4], projection)
    torch.testing.assert_close(out[:, 4:], main.relu())


def test_xception_block_puts_stride_on_first_depthwise_conv():
    block = DetNASBlock('3a', 'xception_3x3', 8, 16, stride=2)
    assert [unit.depthwise.stride for unit in block.conv] == [(2, 2), (1, 1), (1, 1)]
    assert block.proj_conv.depthwise.kernel_size == (3, 3)


def test_shufflenet_block_puts_stride_on_its_depthwise_conv():
    block = DetNASBlock('1a', 'shufflenet_5x5', 8, 16, stride=2)
    assert block.conv[0].depthwise is None
    assert block.conv[1].depthwise.stride == (2, 2)
    assert block.conv[1].depthwise.kernel_size == (5, 5)
    assert block.proj_conv.depthwise.kernel_size == (5, 5)


def _frozen(module):
    return all(not p.requires_grad for p in module.parameters()) and not any(
        m.training for m in module.modules())


@pytest.mark.parametrize('frozen_stages, num_frozen_blocks', [(0, 0), (1, 4), (4, 20)])
def test_detnas_frozen_stages(frozen_stages, num_frozen_blocks):
    model = DetNAS(frozen_stages=frozen_stages)
    model.train()
    assert _frozen(model.first_conv)
    blocks = list(model.features)
    assert all(_frozen(block) for block in blocks[:num_frozen_blocks])
    assert all(block.training and all(p.requires_grad for p in block.parameters())
               for block in blocks[num_frozen_blocks:])


def test_detnas_not_frozen_by_default():
    model = DetNAS().train()
    assert all(p.requires_grad for p in model.parameters())
    assert all(m.training for m in model.modules())


def test_detnas_norm_eval():
    model = DetNAS(norm_eval=True).train()
    norms = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    assert not any(norm.training for norm in norms)
    assert all(m.training for m in model.modules() if not isinstance(m, _BatchNorm))
    running_means = [norm.running_mean.clone() for norm in norms]
    model(torch.rand(1, 3, 32, 32))
    assert all(torch.equal(norm.running_mean, mean) for norm, mean in zip(norms, running_means))


@pytest.mark.parametrize('kwargs, message', [
    (dict(arch='COCO-FPN-600M'), r"arch must be one of \('COCO-FPN-300M'.*got 'COCO-FPN-600M'"),
    (dict(out_indices=(0, 4)), r'out_indices must be .* in 0\.\.3, got \(0, 4\)'),
    (dict(out_indices=()), r'out_indices must be a non-empty .*got \(\)'),
    (dict(frozen_stages=5), r'frozen_stages must be in -1\.\.4, got 5'),
    (dict(frozen_stages=-2), r'frozen_stages must be in -1\.\.4, got -2'),
    (dict(drconv_proj=True), r'need a drconv_cfg, got drconv_cfg=None, drconv_proj=True'),
    (dict(shared_guide=True), r'need a drconv_cfg, .*shared_guide=True'),
    (dict(drconv_cfg=dict(type='DRConv', with_guide_conv=True), shared_guide=True),
     r'expected no with_guide_conv in drconv_cfg, got with_guide_conv=True'),
])
def test_detnas_invalid_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DetNAS(**kwargs)


@pytest.mark.parametrize('args, message', [
    (('1a', 'shufflenet_9x9', 8, 16, 2), r"op must be one of \('shufflenet_3x3'.*got "
     r"'shufflenet_9x9'"),
    (('1a', 'shufflenet_3x3', 8, 16, 3), r'stride must be 1 or 2, got 3'),
    (('1b', 'shufflenet_3x3', 8, 16, 1), r'in_channels == out_channels and an even count, got '
     r'in_channels=8, out_channels=16'),
    (('1b', 'shufflenet_3x3', 7, 7, 1), r'even count, got in_channels=7, out_channels=7'),
    (('1a', 'shufflenet_3x3', 16, 16, 2), r'out_channels > in_channels, got in_channels=16, '
     r'out_channels=16'),
])
def test_block_invalid_arguments(args, message):
    with pytest.raises(ValueError, match=message):
        DetNASBlock(*args)


def test_unit_rejects_stride_without_depthwise_conv():
    with pytest.raises(ValueError, match=r'stride must be 1 when kernel_size is None .*got '
                       r'stride=2'):
        SpatialPointwiseUnit('1a_x', 4, 4, stride=2)


def test_unit_layer_names():
    unit = SpatialPointwiseUnit('1a_proj', 4, 4, kernel_size=3, stride=2)
    assert [name for name, _ in unit.named_children()] == [
        'interstellar1a_proj_s', 'interstellar1a_proj_s_bn', 'interstellar1a_proj', 'bn1a_proj',
        'activation'
    ]


def test_detnas_loads_plain_checkpoint_with_pretrained_init(tmp_path, caplog):
    source = DetNAS()
    for tensor in source.state_dict().values():
        if tensor.is_floating_point():
            tensor.uniform_()
    path = tmp_path / 'detnas.pth'
    torch.save(dict(state_dict=source.state_dict()), path)
    model = DetNAS(init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    with caplog.at_level(logging.WARNING):
        model.init_weights()
    assert 'missing keys' not in caplog.text and 'unexpected key' not in caplog.text
    loaded = model.state_dict()
    assert all(torch.equal(loaded[key], value) for key, value in source.state_dict().items())
