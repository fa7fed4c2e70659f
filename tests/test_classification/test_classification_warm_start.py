"""Warm start of the plain-torch DRConv networks: a plain state dict of the same width starts
every DRConv from the 1x1 weight at its place, equal at load; torch alone."""
import logging

import pytest
import torch
from helpers import randomised

from drconv_mmdet.classification import (MobileNetV2, ShuffleNetV2, drconv_mobilenet_v2,
                                         drconv_shufflenet_v2, mobilenet_v2, shufflenet_v2)
from drconv_mmdet.nn import DRConv2d

NETWORKS = {
    'shufflenet_v2-0.5x': (shufflenet_v2, drconv_shufflenet_v2, 0.5),
    'mobilenet_v2-0.25x': (mobilenet_v2, drconv_mobilenet_v2, 0.25),
}


@pytest.mark.parametrize('network', sorted(NETWORKS))
@pytest.mark.parametrize('shared_guide', [False, True])
@pytest.mark.parametrize('generator', ['basis', 'paper'])
def test_plain_state_dict_starts_the_drconvs(network, shared_guide, generator, caplog):
    build_plain, build_drconv, width = NETWORKS[network]
    plain = randomised(build_plain(width, num_classes=10)).eval()
    model = build_drconv(width,
                         num_classes=10,
                         region_num=4,
                         generator=generator,
                         shared_guide=shared_guide).eval()
    state = plain.state_dict()
    keys = list(state)
    with caplog.at_level(logging.INFO, logger='drconv_mmdet'):
        model.load_state_dict(state, strict=True)
    assert list(state) == keys, 'the caller\'s dict must stay as it was'
    started = len(model.backbone.drconv_names)
    assert f'{started} DRConv layers start from the plain 1x1 weights at their positions' in \
        caplog.text
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), plain(x), rtol=1e-4, atol=1e-4)
    # Its own state dict (DRConv keys) loads back as it is, and says nothing.
    again = build_drconv(width,
                         num_classes=10,
                         region_num=4,
                         generator=generator,
                         shared_guide=shared_guide).eval()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger='drconv_mmdet'):
        again.load_state_dict(model.state_dict(), strict=True)
    assert 'DRConv layers start' not in caplog.text
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x), rtol=0, atol=0)


@pytest.mark.parametrize('cls, width', [(ShuffleNetV2, 0.5), (MobileNetV2, 0.5)])
def test_plain_backbone_state_dict_starts_every_output(cls, width):
    indices = (0, 1, 2, 3) if cls is ShuffleNetV2 else (1, 3, 7)
    plain = randomised(cls(width, out_indices=indices)).eval()
    model = cls(width, out_indices=indices, region_num=2).eval()
    model.load_state_dict(plain.state_dict())
    assert all(isinstance(model.get_submodule(name), DRConv2d) for name in model.drconv_names)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        for out, expected in zip(model(x), plain(x), strict=True):
            torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


def test_plain_state_dict_of_another_width_is_refused():
    model = drconv_shufflenet_v2(0.5, num_classes=10, region_num=2)
    with pytest.raises(ValueError,
                       match=r'backbone\.layers\.0\.0\.branch1\.1\.conv\.weight has shape '
                       r'\(58, 24, 1, 1\), but the DRConv at layers\.0\.0\.branch1\.1\.conv '
                       r'starts from a conv weight of shape \(24, 24, 1, 1\)'):
        model.load_state_dict(shufflenet_v2(1.0, num_classes=10).state_dict())
