"""build_resnet_drfpn_backbone and MODEL.DRCONV on real detectron2."""
import pytest
import torch

pytest.importorskip('detectron2',
                    reason='detectron2 is not installed; `make setup-core` builds it '
                    'from its source tarball into .venv-core')

from d2_helpers import CONFIG_DIR, TOY_CONFIG, drconv_cfg  # noqa: E402
from detectron2.modeling import build_backbone  # noqa: E402

from drconv_mmdet.detectron2 import NormActDRConv2d  # noqa: E402
from drconv_mmdet.nn import DRConv2d  # noqa: E402


def drconv_names(module):
    return sorted(name for name, m in module.named_modules() if isinstance(m, DRConv2d))


@pytest.mark.parametrize('config, regions', [
    ('mask_rcnn_R_50_DRFPN_4R_180k.yaml', 4),
    ('mask_rcnn_R_50_DRFPN_8R_180k.yaml', 8),
    ('mask_rcnn_R_50_DRFPN_16R_180k.yaml', 16),
])
def test_paper_configs_put_drconvs_in_the_p2_p3_output_convs(config, regions):
    backbone = build_backbone(drconv_cfg(CONFIG_DIR / config, 'MODEL.DEVICE', 'cpu'))
    assert drconv_names(backbone) == ['fpn_output2', 'fpn_output3']
    for name in ('fpn_output2', 'fpn_output3'):
        layer = getattr(backbone, name)
        assert layer.region_num == regions and layer.generator_type == 'basis'
        assert (layer.in_channels, layer.out_channels, layer.kernel_size) == (256, 256, (3, 3))


def test_baseline_config_has_no_drconv():
    backbone = build_backbone(drconv_cfg(CONFIG_DIR / 'mask_rcnn_R_50_FPN_180k.yaml'))
    assert drconv_names(backbone) == []


def test_defaults_are_the_mmdet_8r_model():
    from detectron2.config import get_cfg

    from drconv_mmdet.detectron2 import add_drconv_config
    cfg = get_cfg()
    add_drconv_config(cfg)
    node = cfg.MODEL.DRCONV
    assert (node.REGION_NUM, node.GENERATOR, node.LEVELS, node.CONVS) == (8, 'basis', ['p2', 'p3'],
                                                                          ['output'])
    assert not node.SHARED_GUIDE and not node.STATIC_KERNEL


def test_shared_guide_gives_each_level_one_guide_conv():
    cfg = drconv_cfg(TOY_CONFIG, 'MODEL.DRCONV.CONVS', ['lateral', 'output'],
                     'MODEL.DRCONV.SHARED_GUIDE', True, 'MODEL.DRCONV.RECORD_MASK', True,
                     'MODEL.FPN.OUT_CHANNELS', 16)
    backbone = build_backbone(cfg)
    for level in (2, 3):
        lateral, output = getattr(backbone,
                                  f'fpn_lateral{level}'), getattr(backbone, f'fpn_output{level}')
        assert lateral.with_guide_conv and not output.with_guide_conv
        assert output.guide_sources == [lateral]
    # The guide is a parameter of the lateral DRConv only.
    assert not any('fpn_output' in name and '.guide.' in name
                   for name, _ in backbone.named_parameters())
    out = backbone(torch.rand(2, 3, 64, 96))
    for level in (2, 3):
        lateral, output = getattr(backbone,
                                  f'fpn_lateral{level}'), getattr(backbone, f'fpn_output{level}')
        assert torch.equal(lateral.last_mask, output.last_mask)
        assert lateral.last_guide is None
    sum(v.sum() for v in out.values()).backward()
    # The lateral's guide conv learns from the straight-through gradients of both layers.
    assert backbone.fpn_lateral2.guide.weight.grad.abs().sum() > 0


def test_lateral_and_output_convs_with_norm_stay_in_the_lists_forward_reads():
    cfg = drconv_cfg(TOY_CONFIG, 'MODEL.DRCONV.LEVELS', ['p3', 'p5'], 'MODEL.DRCONV.CONVS',
                     ['lateral', 'output'], 'MODEL.DRCONV.REGION_NUM', 3, 'MODEL.FPN.NORM', 'GN',
                     'MODEL.FPN.OUT_CHANNELS', 32, 'MODEL.DRCONV.RECORD_MASK', True)
    backbone = build_backbone(cfg)
    expected = ['fpn_lateral3', 'fpn_lateral5', 'fpn_output3', 'fpn_output5']
    assert drconv_names(backbone) == expected
    for name in expected:
        layer = getattr(backbone, name)
        assert isinstance(layer, NormActDRConv2d) and layer.region_num == 3
        assert isinstance(layer.norm, torch.nn.GroupNorm) and layer.bias is None
    # FPN.forward reads the convs from these lists, lowest resolution first.
    assert backbone.lateral_convs == [
        backbone.fpn_lateral5, backbone.fpn_lateral4, backbone.fpn_lateral3, backbone.fpn_lateral2
    ]
    assert backbone.output_convs == [
        backbone.fpn_output5, backbone.fpn_output4, backbone.fpn_output3, backbone.fpn_output2
    ]
    out = backbone(torch.rand(2, 3, 64, 96))
    assert {
        k: tuple(v.shape)
        for k, v in out.items()
    } == {
        'p2': (2, 32, 16, 24),
        'p3': (2, 32, 8, 12),
        'p4': (2, 32, 4, 6),
        'p5': (2, 32, 2, 3),
        'p6': (2, 32, 1, 2)
    }
    # Every DRConv ran and recorded its guided mask, at its level's size.
    assert tuple(backbone.fpn_output3.last_mask.shape) == (2, 8, 12)
    assert tuple(backbone.fpn_lateral5.last_mask.shape) == (2, 2, 3)
    assert int(backbone.fpn_output3.last_mask.max()) < 3


# yapf: disable
@pytest.mark.parametrize('opts, message', [
    (['MODEL.DRCONV.LEVELS', ['p2', 'p6']],
     r"MODEL\.DRCONV\.LEVELS has \['p6'\], .* expected some of \['p2', 'p3', 'p4', 'p5'\]"),
    (['MODEL.DRCONV.LEVELS', []], r'MODEL\.DRCONV\.LEVELS is empty'),
    (['MODEL.DRCONV.LEVELS', ['p2', 'p2']], r"MODEL\.DRCONV\.LEVELS names an entry more than once"),
    (['MODEL.DRCONV.REGION_NUM', 0], r'MODEL\.DRCONV\.REGION_NUM must be an int >= 1, but got 0'),
    (['MODEL.DRCONV.NUM_BASES', -2], r'MODEL\.DRCONV\.NUM_BASES must be an int >= 1, but got -2'),
    (['MODEL.DRCONV.CONVS', ['output', 'top_block']],
     r"MODEL\.DRCONV\.CONVS has \['top_block'\], .* expected some of \['lateral', 'output'\]"),
    (['MODEL.DRCONV.GENERATOR', 'mixture'],
     r"MODEL\.DRCONV\.GENERATOR must be one of \['paper', 'basis'\], but got 'mixture'"),
    (['MODEL.DRCONV.STATIC_KERNEL', True],
     r"MODEL\.DRCONV\.STATIC_KERNEL: True needs GENERATOR 'paper', but got 'basis'"),
    (['MODEL.DRCONV.SHARED_GUIDE', True],
     r"MODEL\.DRCONV\.SHARED_GUIDE: True .* needs CONVS \['lateral', 'output'\], but got CONVS "
     r"\['output'\]"),
])
# yapf: enable
def test_bad_configs_name_the_key(opts, message):
    with pytest.raises(ValueError, match=message):
        build_backbone(drconv_cfg(TOY_CONFIG, *opts))


def test_config_without_the_drconv_node_is_refused():
    from detectron2.config import get_cfg
    cfg = get_cfg()
    cfg.merge_from_file(str(CONFIG_DIR / 'Base-RCNN-FPN.yaml'))
    cfg.MODEL.BACKBONE.NAME = 'build_resnet_drfpn_backbone'
    with pytest.raises(ValueError, match=r'MODEL\.DRCONV is missing: call .*add_drconv_config'):
        build_backbone(cfg)
