"""Bad arguments of the plain-torch classification networks fail at once, naming the argument,
its value and what was expected; torch alone."""
import re

import pytest
from torch import nn

from drconv_mmdet.classification import (ImageClassifier, MobileNetV2, ShuffleNetV2,
                                         drconv_mobilenet_v2, drconv_shufflenet_v2, mobilenet_v2,
                                         shufflenet_v2)

GENERATORS = re.escape("generator must be one of ('paper', 'basis'), but got 'condconv'")
CASES = [
    (ShuffleNetV2, dict(widen_factor=0.75),
     re.escape('widen_factor must be one of (0.5, 1.0, 1.5, 2.0) for ShuffleNetV2, but got '
               '0.75')),
    (ShuffleNetV2, dict(widen_factor='1.0'), "widen_factor must be one of .* but got '1.0'"),
    (ShuffleNetV2, dict(widen_factor=True), 'widen_factor must be one of .* but got True'),
    (MobileNetV2, dict(widen_factor=0),
     'widen_factor must be a positive number for MobileNetV2, but got 0'),
    (MobileNetV2, dict(widen_factor=-0.5), 'widen_factor must be a positive number .* got -0.5'),
    (MobileNetV2, dict(widen_factor=None), 'widen_factor must be a positive number .* got None'),
    (ShuffleNetV2, dict(out_indices=(4, )),
     re.escape('out_indices must be a non-empty sequence of distinct ints in range(0, 4), but '
               'got (4,)')),
    (MobileNetV2, dict(out_indices=()), r'out_indices must be .* range\(0, 8\), but got \(\)'),
    (MobileNetV2, dict(out_indices=7), 'out_indices must be .* but got 7'),
    (MobileNetV2, dict(out_indices=(1, 1)), r'out_indices must be .* but got \(1, 1\)'),
    (ShuffleNetV2, dict(region_num=0),
     'region_num must be None \\(the plain network\\) or a positive int, but got 0'),
    (MobileNetV2, dict(region_num=2.0), 'region_num must be .* but got 2.0'),
    (MobileNetV2, dict(region_num=True), 'region_num must be .* but got True'),
    (ShuffleNetV2, dict(region_num=4, generator='condconv'), GENERATORS),
    (MobileNetV2, dict(generator='condconv'), GENERATORS),
    (ShuffleNetV2, dict(drconv_cfg=dict(num_bases=2)),
     re.escape("drconv_cfg={'num_bases': 2} needs DRConvs, but region_num=None builds the plain "
               'network; expected drconv_cfg=None or a region_num')),
    (MobileNetV2, dict(shared_guide=True),
     'shared_guide=True needs DRConvs, .* expected shared_guide=False or a region_num'),
    (MobileNetV2, dict(region_num=4, shared_guide=1), 'shared_guide must be a bool, but got 1'),
    (ShuffleNetV2, dict(region_num=4,
                        drconv_cfg=dict(region_num=2)), 'drconv_cfg must not set region_num'),
    (ShuffleNetV2, dict(region_num=4, drconv_cfg=dict(with_guide_conv=False)),
     'drconv_cfg must not set with_guide_conv'),
    (MobileNetV2, dict(region_num=4, drconv_cfg=[('num_bases', 2)]),
     'drconv_cfg must be a dict of DRConv2d arguments or None'),
    (MobileNetV2, dict(region_num=4, drconv_cfg=dict(kernel_size=3, num_base=2)),
     re.escape("drconv_cfg sets kernel_size, num_base, which DRConv2d does not take; expected "
               "some of ('hidden_channels', 'num_bases', 'static_kernel', 'record_mask')")),
]


@pytest.mark.parametrize('cls, kwargs, message', CASES)
def test_bad_backbone_argument(cls, kwargs, message):
    with pytest.raises(ValueError, match=message):
        cls(**kwargs)


@pytest.mark.parametrize('build, kwargs, message', [
    (shufflenet_v2, dict(widen_factor=0.5,
                         num_classes=0), 'num_classes must be a positive int, but got 0'),
    (mobilenet_v2, dict(widen_factor=0.25,
                        num_classes=10.0), 'num_classes must be a positive int, but got 10.0'),
    (drconv_shufflenet_v2, dict(widen_factor=0.5, region_num=None),
     r'region_num must be a positive int for a DRConv network, but got None; shufflenet_v2\(\)'),
    (drconv_mobilenet_v2, dict(widen_factor=0.25, region_num=None),
     r'region_num must be .* but got None; mobilenet_v2\(\) builds the plain network'),
    (drconv_mobilenet_v2, dict(widen_factor=0.3), None),
    (drconv_shufflenet_v2, dict(widen_factor=1.2), 'widen_factor must be one of'),
])
def test_bad_classifier_argument(build, kwargs, message):
    if message is None:  # any positive width builds a MobileNetV2
        build(**kwargs)
        return
    with pytest.raises(ValueError, match=message):
        build(**kwargs)


def test_classifier_needs_a_module_and_its_channels():
    with pytest.raises(ValueError, match='backbone must be an nn.Module, but got str'):
        ImageClassifier('shufflenet_v2')
    with pytest.raises(ValueError,
                       match=r'in_channels=None takes the channels from backbone.out_channels, '
                       r'which this Conv2d does not have; expected in_channels, a positive int'):
        ImageClassifier(nn.Conv2d(3, 8, 3), num_classes=10)
    with pytest.raises(ValueError, match='in_channels must be a positive int, but got 0'):
        ImageClassifier(ShuffleNetV2(0.5), num_classes=10, in_channels=0)
    assert ImageClassifier(MobileNetV2(0.25, out_indices=(5, )), 10).head.in_channels == 40
