import re
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
from helpers import REPO_ROOT
from mmdet.registry import MODELS
from mmdet.testing import demo_mm_inputs
from mmengine.config import Config
from mmengine.registry import init_default_scope
from torch.nn.modules.batchnorm import _BatchNorm

from drconv_mmdet.analysis import count_madds
from drconv_mmdet.models.backbones import (DetNAS, DetNASBlock, SpatialPointwiseUnit,
                                           convert_detnas_checkpoint, split_even_odd)
from drconv_mmdet.models.backbones.detnas_checkpoint import VOC_ARCH_OPS
from drconv_mmdet.nn import DRConv2d

CONFIG_DIR = REPO_ROOT / 'configs' / 'detnas'

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

# Few regions and bases keep the CPU tests fast; the DRConv layer has its own tests.
DRCONV_CFG = dict(type='DRConv', region_num=4, generator='basis', num_bases=2)


def _random_state_dict(model):
    """The state dict of ``model`` with random values, so that loading it is observable."""
    state_dict = model.state_dict()
    for tensor in state_dict.values():
        if tensor.is_floating_point():
            tensor.uniform_()
    return state_dict


def _pointwise_conv_names(model):
    return {
        name
        for name, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)
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
    assert len(_pointwise_conv_names(model)) == ARCH_POINTWISE_CONVS[arch]


def test_detnas_madds():
    madds = count_madds(DetNAS().eval(), torch.rand(1, 3, 224, 224))
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
    """Whether ``module`` is in eval mode with no trainable parameters."""
    no_grad = all(not p.requires_grad for p in module.parameters())
    return no_grad and not any(m.training for m in module.modules())


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
    message = r'stride must be 1 when kernel_size is None .*, got stride=2'
    with pytest.raises(ValueError, match=message):
        SpatialPointwiseUnit('1a_x', 4, 4, stride=2)


def test_unit_layer_names():
    unit = SpatialPointwiseUnit('1a_proj', 4, 4, kernel_size=3, stride=2)
    assert [name for name, _ in unit.named_children()] == [
        'interstellar1a_proj_s', 'interstellar1a_proj_s_bn', 'interstellar1a_proj', 'bn1a_proj',
        'activation'
    ]


@pytest.mark.parametrize('drconv_proj', [False, True])
@pytest.mark.parametrize('shared_guide', [False, True])
def test_detnas_drconv_replaces_searched_pointwise_convs(drconv_proj, shared_guide):
    model = DetNAS(drconv_cfg=DRCONV_CFG, drconv_proj=drconv_proj, shared_guide=shared_guide)
    plain = _pointwise_conv_names(DetNAS())
    replaced = {
        name
        for name in plain if '_branch2' in name or (drconv_proj and name.endswith('_proj'))
    }
    drconvs = {name: m for name, m in model.named_modules() if isinstance(m, DRConv2d)}
    assert len(replaced) == (50 if drconv_proj else 46)
    assert set(drconvs) == set(model.drconv_names) == replaced
    assert all(m.with_guide_conv != shared_guide for m in drconvs.values())
    guide_convs = {f'features.{i}.guide_conv' for i in range(20)} if shared_guide else set()
    assert _pointwise_conv_names(model) == plain - replaced | guide_convs


def test_detnas_shared_guide_reads_searched_branch_input():
    model = DetNAS(drconv_cfg=DRCONV_CFG, shared_guide=True)
    # Block 1a sees the whole 16-channel stem output, block 1b the odd half of 64 channels.
    assert model.features[0].guide_conv.weight.shape == (4, 16, 1, 1)
    assert model.features[1].guide_conv.weight.shape == (4, 32, 1, 1)
    assert model.features[1].guide_conv.bias is None


def test_detnas_drconv_keeps_official_key_prefixes():
    plain_keys = set(DetNAS().state_dict())
    model = DetNAS(drconv_cfg=DRCONV_CFG, drconv_proj=True)
    keys = set(model.state_dict())
    drconv_prefixes = tuple(f'{name}.' for name in model.drconv_names)
    replaced = {f'{name}.weight' for name in model.drconv_names}
    assert replaced <= plain_keys
    assert plain_keys - replaced <= keys
    assert all(key in plain_keys or key.startswith(drconv_prefixes) for key in keys)
    assert all(any(key.startswith(prefix) for key in keys) for prefix in drconv_prefixes)


@pytest.mark.parametrize('shared_guide', [False, True])
def test_detnas_drconv_forward_backward(shared_guide):
    model = DetNAS(drconv_cfg=DRCONV_CFG, drconv_proj=True, shared_guide=shared_guide)
    outs = model(torch.rand(2, 3, 32, 48))
    assert [tuple(out.shape) for out in outs] == [(2, 64, 8, 12), (2, 160, 4, 6), (2, 320, 2, 3),
                                                  (2, 640, 1, 2)]
    sum(out.square().mean() for out in outs).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def _plain_detnas(seed=0):
    """A plain DetNAS in eval mode with random conv weights and BN statistics, as trained."""
    torch.manual_seed(seed)
    model = DetNAS()
    for module in model.modules():
        if isinstance(module, _BatchNorm):
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.normal_(0, 0.1)
    return model.eval()


def _assert_same_outputs(outs, expected_outs):
    """Float32 tolerance, relative to each output's scale (20 blocks of rounding)."""
    assert len(outs) == len(expected_outs) == 4
    for out, expected in zip(outs, expected_outs):
        torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4 * expected.abs().max())


def _drconv_backbone_cfg(checkpoint, **kwargs):
    """The backbone of the DRConv DetNAS config, on BN, with ``checkpoint`` as its weights."""
    config = CONFIG_DIR / 'faster-rcnn_detnas-300m-drconv-8r_fpn-4conv1fc_90k_coco.py'
    backbone = Config.fromfile(str(config)).model.backbone
    backbone.update(norm_cfg=dict(type='BN'),
                    init_cfg=dict(type='Pretrained', checkpoint=checkpoint),
                    **kwargs)
    return backbone


@pytest.mark.parametrize('drconv_proj, shared_guide', [(False, False), (True, False), (False, True),
                                                       (True, True)])
def test_detnas_drconv_starts_from_converted_imagenet_weights(tmp_path, drconv_proj, shared_guide):
    plain = _plain_detnas()
    path = tmp_path / 'detnas.pth'
    converted = convert_detnas_checkpoint(_official_checkpoint(plain.state_dict()))
    torch.save(dict(state_dict=converted), path)
    init_default_scope('mmdet')
    # The config's backbone with fewer regions and bases, to keep the test fast.
    model = MODELS.build(
        _drconv_backbone_cfg(str(path),
                             drconv_proj=drconv_proj,
                             shared_guide=shared_guide,
                             drconv_cfg=DRCONV_CFG))
    model.init_weights()
    model.eval()
    assert len(model.drconv_names) == (50 if drconv_proj else 46)
    x = torch.rand(2, 3, 32, 64) * 255
    with torch.no_grad():
        _assert_same_outputs(model(x), plain(x))


@pytest.mark.parametrize('shared_guide', [False, True])
def test_detnas_drconv_loads_plain_detector_weights_strictly(shared_guide):
    """``load_from`` a plain detector: keys under ``backbone.``, no key missing or unexpected."""
    plain = _plain_detnas(seed=1)
    detector = nn.Module()
    detector.backbone = DetNAS(drconv_cfg=DRCONV_CFG, drconv_proj=True, shared_guide=shared_guide)
    guide_convs = {
        name: m.weight.clone()
        for name, m in detector.named_modules() if name.endswith('guide_conv')
    }
    state_dict = {f'backbone.{key}': value for key, value in plain.state_dict().items()}
    detector.load_state_dict(state_dict, strict=True)
    detector.eval()
    assert all(
        torch.equal(detector.get_submodule(name).weight, weight)
        for name, weight in guide_convs.items())
    assert len(guide_convs) == (20 if shared_guide else 0)
    x = torch.rand(1, 3, 32, 64) * 255
    with torch.no_grad():
        _assert_same_outputs(detector.backbone(x), plain(x))


def test_detnas_drconv_loads_its_own_checkpoints_unchanged():
    model = DetNAS(drconv_cfg=DRCONV_CFG, shared_guide=True)
    state_dict = _random_state_dict(model)
    other = DetNAS(drconv_cfg=DRCONV_CFG, shared_guide=True)
    other.load_state_dict(state_dict, strict=True)
    assert all(torch.equal(other.state_dict()[key], value) for key, value in state_dict.items())


def test_detnas_drconv_refuses_a_plain_weight_of_another_shape():
    state_dict = DetNAS().state_dict()
    key = 'features.0.conv.0.interstellar1a_shufflenet_7x7_branch2a.weight'
    state_dict[key] = torch.rand(32, 8, 1, 1)
    model = DetNAS(drconv_cfg=DRCONV_CFG)
    with pytest.raises(
            ValueError,
            match=re.escape(
                f'{key} has shape (32, 8, 1, 1), but the DRConv at '
                'features.0.conv.0.interstellar1a_shufflenet_7x7_branch2a starts from a conv '
                'weight of shape (32, 16, 1, 1)')):
        model.load_state_dict(state_dict)


@pytest.mark.parametrize('op, sampled', [('shufflenet_3x3', [False, True]),
                                         ('xception_3x3', [True, True, True])])
def test_shared_guide_is_taken_at_the_depthwise_window_centres(op, sampled):
    """At odd sizes a nearest resize would drift (rows 0, 1, 3, 5 of 7); the block's stride
    samples rows 0, 2, 4, 6."""
    block = DetNASBlock('1a',
                        op,
                        4,
                        12,
                        stride=2,
                        drconv_cfg=DRCONV_CFG,
                        drconv_proj=True,
                        shared_guide=True)
    seen = {}
    for unit in [*block.conv, block.proj_conv]:
        unit.pointwise.register_forward_pre_hook(
            lambda module, args, name=unit.pointwise_name: seen.__setitem__(name, args[1]))
    x = torch.rand(2, 4, 7, 9)
    block(x)
    guide = block.guide_conv(x)
    strided = guide[:, :, 0::2, 0::2]
    assert seen.pop(block.proj_conv.pointwise_name).equal(strided)
    assert len(block.conv) == len(sampled)
    for unit, is_sampled in zip(block.conv, sampled):
        assert seen[unit.pointwise_name].equal(strided if is_sampled else guide)


def _official_checkpoint(state_dict, wrapped=True, data_parallel=True):
    """The layout of an official ImageNet checkpoint: classifier included, maybe wrapped."""
    checkpoint = dict(state_dict)
    checkpoint.update({
        'last_conv.conv.weight': torch.rand(1024, 640, 1, 1),
        'last_conv.conv.bias': torch.rand(1024),
        'last_conv.bn.running_mean': torch.rand(1024),
        'fc.fc.weight': torch.rand(1000, 1024),
        'fc.fc.bias': torch.rand(1000),
    })
    if data_parallel:
        checkpoint = {f'module.{key}': value for key, value in checkpoint.items()}
    return dict(state_dict=checkpoint) if wrapped else checkpoint


@pytest.mark.parametrize('wrapped', [True, False])
@pytest.mark.parametrize('data_parallel', [True, False])
def test_convert_round_trip(tmp_path, wrapped, data_parallel):
    state_dict = _random_state_dict(DetNAS())
    converted = convert_detnas_checkpoint(_official_checkpoint(state_dict, wrapped, data_parallel))
    assert list(converted) == list(state_dict)

    path = tmp_path / 'detnas.pth'
    torch.save(dict(state_dict=converted, meta=dict(arch='COCO-FPN-300M')), path)
    model = DetNAS(init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    model.init_weights()
    loaded = model.state_dict()
    assert all(torch.equal(loaded[key], value) for key, value in state_dict.items())
    model.load_state_dict(converted, strict=True)


def test_convert_refuses_voc_checkpoint(monkeypatch):
    # DetNAS cannot build VOC-FPN-300M; register it only to produce its checkpoint.
    setting = dict(DetNAS.arch_settings['COCO-FPN-300M'], ops=VOC_ARCH_OPS['VOC-FPN-300M'])
    monkeypatch.setitem(DetNAS.arch_settings, 'VOC-FPN-300M', setting)
    checkpoint = _official_checkpoint(DetNAS(arch='VOC-FPN-300M').state_dict())
    monkeypatch.delitem(DetNAS.arch_settings, 'VOC-FPN-300M')
    message = 'not a DetNAS COCO-FPN-300M checkpoint: it looks like VOC-FPN-300M$'
    with pytest.raises(ValueError, match=message):
        convert_detnas_checkpoint(checkpoint)


def test_convert_tells_1_3g_from_3_8g():
    # The two share their op list; the stem width tells them apart.
    message = r'not a DetNAS COCO-FPN-3\.8G checkpoint: it looks like COCO-FPN-1\.3G$'
    with pytest.raises(ValueError, match=message):
        convert_detnas_checkpoint(DetNAS(arch='COCO-FPN-1.3G').state_dict(), 'COCO-FPN-3.8G')


def test_convert_refuses_checkpoint_without_block_keys():
    # A supernet holds every candidate op of block i under features.<i>.<op index>.
    supernet_like = {
        re.sub(r'^features\.(\d+)\.', r'features.\1.0.', key): value
        for key, value in DetNAS().state_dict().items()
    }
    with pytest.raises(ValueError, match='it has no DetNAS block keys'):
        convert_detnas_checkpoint(supernet_like)


def test_convert_refuses_unknown_architecture():
    state_dict = DetNAS().state_dict()
    key = 'features.0.conv.0.interstellar1a_shufflenet_7x7_branch2a.weight'
    state_dict[key.replace('7x7', '3x3')] = state_dict.pop(key)
    message = (r"its blocks \('shufflenet_3x3', 'shufflenet_5x5', .*\) with a 16-channel stem "
               'match no known DetNAS architecture')
    with pytest.raises(ValueError, match=message):
        convert_detnas_checkpoint(state_dict)


@pytest.mark.parametrize('edit, message', [
    ('drop', r'missing keys 1 \(first_conv\.bn\.running_var\), unexpected keys 0 \(\)'),
    ('add', r'unexpected keys 1 \(features\.0\.extra\.weight\)'),
    ('reshape', r'shape mismatches 1 \(first_conv\.bn\.running_var \(8,\) != \(16,\)\)'),
])
def test_convert_refuses_wrong_keys_or_shapes(edit, message):
    state_dict = DetNAS().state_dict()
    if edit == 'drop':
        del state_dict['first_conv.bn.running_var']
    elif edit == 'add':
        state_dict['features.0.extra.weight'] = torch.rand(1)
    else:
        state_dict['first_conv.bn.running_var'] = torch.rand(8)
    with pytest.raises(ValueError, match='does not match DetNAS COCO-FPN-300M: .*' + message):
        convert_detnas_checkpoint(state_dict)


def test_convert_rejects_unknown_arch():
    with pytest.raises(ValueError, match=r"arch must be one of \(.*\), got 'VOC-FPN-300M'"):
        convert_detnas_checkpoint({}, 'VOC-FPN-300M')


@pytest.mark.slow
def test_converter_cli(tmp_path):
    state_dict = _random_state_dict(DetNAS())
    src, dst = tmp_path / 'COCO_FPN_300M.pkl', tmp_path / 'out' / 'detnas.pth'
    torch.save(_official_checkpoint(state_dict), src)
    script = REPO_ROOT / 'tools' / 'model_converters' / 'detnas_to_mmdet.py'
    subprocess.run(
        [sys.executable, str(script), str(src), str(dst)],
        cwd=REPO_ROOT,
        check=True,
        capture_output=True)
    checkpoint = torch.load(dst, weights_only=True)
    assert checkpoint['meta'] == dict(arch='COCO-FPN-300M', source='COCO_FPN_300M.pkl')
    assert all(
        torch.equal(checkpoint['state_dict'][key], value) for key, value in state_dict.items())


@pytest.mark.slow
@pytest.mark.parametrize('config, num_drconvs', [
    ('faster-rcnn_detnas-300m_fpn-4conv1fc_90k_coco.py', 0),
    ('faster-rcnn_detnas-300m-drconv-8r_fpn-4conv1fc_90k_coco.py', 46),
])
def test_detnas_config_builds_and_gives_finite_losses(config, num_drconvs):
    cfg = Config.fromfile(str(CONFIG_DIR / config))
    # What --cfg-options would do for a CPU run without the converted weights.
    cfg.merge_from_dict({
        'model.backbone.norm_cfg.type': 'BN',
        'model.neck.norm_cfg.type': 'BN',
        'model.roi_head.bbox_head.norm_cfg.type': 'BN',
        'model.backbone.init_cfg': None,
    })
    init_default_scope('mmdet')
    model = MODELS.build(cfg.model)
    model.init_weights()
    drconvs = [m for m in model.backbone.modules() if isinstance(m, DRConv2d)]
    assert len(drconvs) == num_drconvs
    assert all(m.region_num == 8 and m.generator_type == 'basis' for m in drconvs)

    data = model.data_preprocessor(demo_mm_inputs(1, [[3, 32, 48]], num_classes=80), True)
    losses = model(**data, mode='loss')
    values = [
        v for value in losses.values() for v in (value if isinstance(value, list) else [value])
    ]
    assert values and all(torch.isfinite(v).all() for v in values)
