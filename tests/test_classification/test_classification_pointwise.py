"""drconv_mmdet.nn.pointwise, which the plain-torch and the mmpretrain networks share, on a small
network of units of our own; torch alone."""
import logging

import pytest
import torch
from torch import nn

from drconv_mmdet.classification import ConvNormAct
from drconv_mmdet.nn import DRConv2d, SharedGuideSequential, pointwise_to_drconv
from drconv_mmdet.nn.pointwise import drconv_kwargs


class Unit(ConvNormAct):
    """A unit of another class, to check that only ``unit_types`` count."""


def _net(order=None):
    net = nn.Sequential(
        ConvNormAct(3, 8, 3, padding=1),
        nn.Sequential(ConvNormAct(8, 16, 1), ConvNormAct(16, 16, 3, 2, 1, groups=16),
                      ConvNormAct(16, 8, 1, activation=None)),
        Unit(8, 4, 1),
    )
    if order is not None:
        net[1][0].order = order
    return net


def test_only_the_units_1x1_convs_become_drconvs_sharing_a_guide():
    net = _net()
    names = pointwise_to_drconv(net,
                                drconv_kwargs(3, 'basis', None),
                                True,
                                unit_types=(ConvNormAct, ))
    assert names == ['1.0.conv', '1.2.conv', '2.conv']
    assert isinstance(net[1], SharedGuideSequential)
    assert [net.get_submodule(name).with_guide_conv for name in names] == [True, False, True]
    assert type(net[0].conv) is nn.Conv2d and type(net[1][1].conv) is nn.Conv2d
    assert net(torch.rand(2, 3, 10, 10)).shape == (2, 4, 5, 5)
    other = _net()
    assert pointwise_to_drconv(other, drconv_kwargs(3, 'basis', None), True,
                               unit_types=(Unit, )) == ['2.conv']
    assert not isinstance(other[1], SharedGuideSequential)


def test_plain_weights_start_the_drconvs_and_the_log_says_so():
    torch.manual_seed(0)
    plain = _net().eval()
    net = _net().eval()
    reports = []
    pointwise_to_drconv(net,
                        drconv_kwargs(3, 'paper', None),
                        False,
                        unit_types=(ConvNormAct, ),
                        log=reports.append)
    net.load_state_dict(plain.state_dict())
    assert reports == [
        '3 DRConv layers start from the plain 1x1 weights at their positions '
        '(each region\'s filter is the plain weight)'
    ]
    x = torch.rand(2, 3, 10, 10)
    with torch.no_grad():
        torch.testing.assert_close(net(x), plain(x), rtol=1e-5, atol=1e-5)
    assert all(isinstance(net.get_submodule(n), DRConv2d) for n in ('1.0.conv', '1.2.conv'))


def test_default_log_is_the_modules_logger(caplog):
    net = _net()
    pointwise_to_drconv(net, drconv_kwargs(2, 'basis', None), False, unit_types=(ConvNormAct, ))
    with caplog.at_level(logging.INFO, logger='drconv_mmdet.nn.pointwise'):
        net.load_state_dict(_net().state_dict())
    assert [r.name for r in caplog.records] == ['drconv_mmdet.nn.pointwise']
    assert '3 DRConv layers start from the plain 1x1 weights' in caplog.text


def test_unit_of_another_order_is_refused():
    with pytest.raises(ValueError,
                       match=r"1\.0\.conv: a ConvModule of order \('norm', 'conv', "
                       r"'act'\) is not supported; expected \('conv', 'norm', 'act'\)"):
        pointwise_to_drconv(_net(order=('norm', 'conv', 'act')),
                            drconv_kwargs(2, 'basis', None),
                            False,
                            unit_types=(ConvNormAct, ))


@pytest.mark.parametrize('args, message', [
    ((0, 'basis', None), 'region_num must be a positive int, but got 0'),
    ((2, 'condconv', None), "generator must be one of \\('paper', 'basis'\\), but got 'condconv'"),
    ((2, 'basis', dict(generator='paper')), 'drconv_cfg must not set generator'),
    ((2, 'basis', dict(bias=True)), 'drconv_cfg sets bias, which DRConv2d does not take'),
])
def test_bad_drconv_kwargs(args, message):
    with pytest.raises(ValueError, match=message):
        drconv_kwargs(*args)


def test_drconv_kwargs():
    assert drconv_kwargs(4, 'paper', dict(hidden_channels=8)) == dict(hidden_channels=8,
                                                                      region_num=4,
                                                                      generator='paper')
