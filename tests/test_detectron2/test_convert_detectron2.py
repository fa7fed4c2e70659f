"""convert_to_drconv on detectron2's Conv2d and FPN: norm and activation kept, lists updated."""
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip('detectron2',
                    reason='detectron2 is not installed; `make setup-core` builds it '
                    'from its source tarball into .venv-core')

from d2_helpers import TOY_CONFIG, drconv_cfg  # noqa: E402
from detectron2.layers import Conv2d, get_norm  # noqa: E402
from detectron2.modeling import build_backbone  # noqa: E402

from drconv_mmdet.detectron2 import NormActDRConv2d  # noqa: E402
from drconv_mmdet.nn import DRConv2d, convert_to_drconv, replace_conv2d  # noqa: E402


def test_conv_with_norm_and_activation_becomes_a_drconv_that_applies_them():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        Conv2d(3, 32, 3, padding=1, bias=False, norm=get_norm('GN', 32), activation=F.relu))
    torch.nn.init.uniform_(model[0].norm.bias, -1, 1)
    x = torch.rand(2, 3, 9, 7)
    before = model(x)
    convert_to_drconv(model, ['0'], region_num=4)
    layer = model[0]
    assert isinstance(layer, NormActDRConv2d) and layer.activation is F.relu
    assert isinstance(layer.norm, torch.nn.GroupNorm)
    torch.testing.assert_close(model(x), before, rtol=0, atol=1e-5)
    assert (model(x) >= 0).all()


def test_fpn_convs_are_replaced_in_the_lists_forward_reads():
    cfg = drconv_cfg(TOY_CONFIG, 'MODEL.BACKBONE.NAME', 'build_resnet_fpn_backbone',
                     'MODEL.FPN.OUT_CHANNELS', 32, 'MODEL.FPN.NORM', 'GN')
    torch.manual_seed(0)
    fpn = build_backbone(cfg).eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        before = fpn(x)
    convert_to_drconv(fpn, ['fpn_output2', 'fpn_lateral4'], region_num=4)
    assert fpn.output_convs[-1] is fpn.fpn_output2 and fpn.lateral_convs[1] is fpn.fpn_lateral4
    assert isinstance(fpn.fpn_output2, DRConv2d) and isinstance(fpn.fpn_lateral4, DRConv2d)
    with torch.no_grad():
        after = fpn(x)
    for name in before:
        torch.testing.assert_close(after[name], before[name], rtol=0, atol=1e-5)


def test_builder_that_drops_the_norm_is_refused():
    model = torch.nn.Sequential(Conv2d(3, 4, 1, norm=get_norm('BN', 4)))
    with pytest.raises(ValueError,
                       match=r"'0' is a detectron2 Conv2d, whose norm and activation "
                       r"its replacement must apply, but build returned a DRConv2d without them"):
        replace_conv2d(model, ['0'], lambda conv: DRConv2d(3, 4, 1, region_num=2))
    assert type(model[0]) is Conv2d


def test_subclass_with_its_own_forward_is_still_refused():

    class Doubled(Conv2d):

        def forward(self, x):
            return 2 * super().forward(x)

    model = torch.nn.Sequential(Doubled(3, 4, 1))
    with pytest.raises(ValueError, match=r'Doubled, whose forward is not nn\.Conv2d\.forward'):
        convert_to_drconv(model, ['0'])


def test_share_guide_from_checks_both_layers_and_the_order():
    source = NormActDRConv2d(4, 4, 1, region_num=2)
    reader = NormActDRConv2d(4, 4, 3, padding=1, region_num=2, with_guide_conv=False)
    with pytest.raises(ValueError,
                       match='needs a layer built with with_guide_conv=False and a '
                       'source with its own guide conv'):
        source.share_guide_from(NormActDRConv2d(4, 4, 1, region_num=2))
    with pytest.raises(ValueError, match='the source has 3 regions, this layer 2'):
        reader.share_guide_from(NormActDRConv2d(4, 4, 1, region_num=3))
    reader.share_guide_from(source)
    x = torch.rand(1, 4, 6, 5)
    with pytest.raises(RuntimeError, match='has not run since this layer last ran'):
        reader(x)
    source(x)
    reader(x)
    # The guide is used once: a second call without the source running again is refused.
    with pytest.raises(RuntimeError, match='has not run since this layer last ran'):
        reader(x)
