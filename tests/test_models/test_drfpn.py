"""DRFPN: mmdet's FPN with the named convs replaced by fresh DRConvs."""
import pytest
import torch
from torch import nn

from drconv_mmdet.models import DRFPN
from drconv_mmdet.nn import DRConv2d

IN_CHANNELS = [2, 3, 5]


def _inputs():
    return [torch.rand(2, c, s, s + 1) for c, s in zip(IN_CHANNELS, [16, 8, 4])]


def test_default_replaces_the_p2_p3_output_convs_only():
    neck = DRFPN(IN_CHANNELS,
                 6,
                 4,
                 add_extra_convs='on_output',
                 drconv_cfg=dict(type='DRConv', region_num=2, generator='basis'))
    drconvs = [name for name, m in neck.named_modules() if isinstance(m, DRConv2d)]
    assert drconvs == ['fpn_convs.0.conv', 'fpn_convs.1.conv']
    assert all(
        type(m) is nn.Conv2d for name, m in neck.named_modules()
        if name.endswith('conv') and name not in drconvs)
    layer = neck.fpn_convs[0].conv
    assert (layer.kernel_size, layer.padding, layer.region_num) == ((3, 3), (1, 1), 2)
    neck.init_weights()
    outs = neck(_inputs())
    assert [tuple(out.shape) for out in outs] == [(2, 6, 16, 17), (2, 6, 8, 9), (2, 6, 4, 5),
                                                  (2, 6, 2, 3)]


def test_lateral_and_extra_convs_can_be_chosen():
    neck = DRFPN(IN_CHANNELS,
                 6,
                 4,
                 add_extra_convs='on_output',
                 drconv_layers=['lateral_convs.0', 'fpn_convs.3'],
                 drconv_cfg=dict(type='DRConv', region_num=2))
    assert isinstance(neck.lateral_convs[0].conv, DRConv2d)
    assert isinstance(neck.fpn_convs[3].conv, DRConv2d) and neck.fpn_convs[3].conv.stride == (2, 2)
    assert isinstance(neck.fpn_convs[0].conv, nn.Conv2d)
    assert len(neck(_inputs())) == 4


@pytest.mark.parametrize('kwargs, message', [
    (dict(drconv_cfg=dict(region_num=2)), r"drconv_cfg must be a dict with a type"),
    (dict(drconv_layers='fpn_convs.0'),
     r"drconv_layers must be a sequence of layer names, but got the string 'fpn_convs.0'"),
    (dict(drconv_layers=['fpn_convs.3']),
     r"unknown layer name\(s\) \['fpn_convs.3'\]; the valid names of this FPN are "
     r"\['lateral_convs.0', 'lateral_convs.1', 'lateral_convs.2', 'fpn_convs.0', 'fpn_convs.1', "
     r"'fpn_convs.2'\]"),
    (dict(drconv_layers=['fpn_convs.0', 'fpn_convs.0']),
     r"drconv_layers names a layer more than once: \['fpn_convs.0', 'fpn_convs.0'\]"),
])
def test_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DRFPN(IN_CHANNELS, 6, 3, **kwargs)
