import pytest
import torch
from torch import nn

from drconv_mmdet.analysis import MaddAnalyzer, count_madds
from drconv_mmdet.nn import DRConv2d


def test_plain_network_counts_conv_and_linear_only():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 12, 3, padding=1, groups=4, bias=False), nn.Sigmoid(),
                          nn.Upsample(scale_factor=2), nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(12, 10))
    x = torch.randn(2, 3, 13, 10)  # stride 2 -> 7 x 5
    expected = (
        2 * 8 * 3 * 3 * 3 * 7 * 5  # B * Cout * Cin * kh * kw * Ho * Wo
        + 2 * 12 * (8 // 4) * 3 * 3 * 7 * 5  # groups=4
        + 2 * 12 * 10)
    assert count_madds(model, x) == expected
    analyzer = MaddAnalyzer(model.eval(), x)
    assert set(analyzer.by_operator()) == {'conv', 'linear'}
    assert not analyzer.unsupported_ops()


def test_matrix_products():

    class Products(nn.Module):

        def forward(self, a, b):
            return (a @ b).sum() + torch.bmm(a, b).sum() + torch.einsum('bij,bjk->bik', a, b).sum()

    a, b = torch.randn(3, 4, 5), torch.randn(3, 5, 6)
    assert count_madds(Products(), (a, b)) == 3 * (3 * 4 * 5 * 6)


def _drconv_madds(batch,
                  in_channels,
                  out_channels,
                  kernel,
                  out_size,
                  region_num,
                  generator,
                  num_bases=8):
    """Guide conv + filter generator + ONE conv per output pixel, written out by hand."""
    taps, pixels = kernel * kernel, out_size[0] * out_size[1]
    guide = batch * region_num * in_channels * taps * pixels
    conv = batch * out_channels * in_channels * taps * pixels
    if generator == 'paper':
        hidden = region_num * region_num
        # 1x1 convs on the k x k pooled input: C -> hidden, then hidden -> m*O*C in m groups.
        generator_madds = (batch * hidden * in_channels * taps +
                           batch * region_num * out_channels * in_channels *
                           (hidden // region_num) * taps)
    else:
        # routing fc on the pooled input, then (B*m, bases) @ (bases, O*C*kh*kw).
        generator_madds = (batch * in_channels * region_num * num_bases +
                           batch * region_num * num_bases * out_channels * in_channels * taps)
    return guide, generator_madds, conv


@pytest.mark.parametrize('generator', ['paper', 'basis'])
@pytest.mark.parametrize('kernel', [1, 3])
def test_drconv_counts_one_conv_not_region_num(generator, kernel):
    layer = DRConv2d(6, 5, kernel, stride=2, padding=kernel // 2, region_num=4, generator=generator)
    x = torch.randn(2, 6, 11, 9)  # stride 2 -> 6 x 5
    guide, generator_madds, conv = _drconv_madds(2, 6, 5, kernel, (6, 5), 4, generator)

    assert count_madds(layer, x) == guide + generator_madds + conv
    analyzer = MaddAnalyzer(layer, x)
    assert analyzer.by_operator()['drconv'] == conv
    assert analyzer.total('generator') == generator_madds
    assert not analyzer.unsupported_ops()


def test_drconv_inside_a_network_is_attributed_to_its_module():
    model = nn.Sequential(nn.Conv2d(3, 6, 1), DRConv2d(6, 5, 3, padding=1, region_num=8))
    x = torch.randn(1, 3, 8, 7)
    guide, generator_madds, conv = _drconv_madds(1, 6, 5, 3, (8, 7), 8, 'basis')
    analyzer = MaddAnalyzer(model, x)
    assert analyzer.by_module()['1'] == guide + generator_madds + conv
    assert analyzer.total() == 6 * 3 * 8 * 7 + guide + generator_madds + conv


def test_count_restores_modes_and_statistics():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.BatchNorm2d(4))
    model[2].eval()  # a frozen norm, as norm_eval=True backbones keep
    running_mean = model[1].running_mean.clone()
    count_madds(model, torch.randn(2, 3, 6, 6))
    assert [m.training for m in model] == [True, True, False]
    assert torch.equal(model[1].running_mean, running_mean)


@pytest.mark.parametrize('inputs', [[torch.randn(1, 3, 4, 4)], (torch.randn(1, 3), 2), None])
def test_inputs_must_be_tensors(inputs):
    with pytest.raises(ValueError,
                       match='inputs must be a Tensor or a tuple of Tensors .*, but '
                       f'got {type(inputs).__name__}$'):
        count_madds(nn.Conv2d(3, 4, 1), inputs)
