"""convert_to_drconv and replace_conv2d on a small model of our own; torch alone."""
import re
import subprocess
import sys

import pytest
import torch
from torch import nn

from drconv_mmdet.nn import DRConv2d, convert_to_drconv, replace_conv2d


class Net(nn.Module):
    """Convs of several geometries, with and without bias, nested at several depths."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, stride=2, padding=1)
        self.body = nn.Sequential(
            nn.Conv2d(6, 5, (3, 1), padding=(2, 0), dilation=(2, 1), bias=False), nn.ReLU(),
            nn.Conv2d(5, 5, 3, padding='same'))
        self.head = nn.Conv2d(5, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.stem(x)))


NET_CONVS = ['stem', 'body.0', 'body.2', 'head']


class NormConv2d(nn.Conv2d):
    """Like detectron2's Conv2d: forward also applies a norm, which a DRConv2d would drop."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.norm = nn.BatchNorm2d(self.out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(super().forward(x))


class Zoo(nn.Module):
    """One module of every kind convert_to_drconv refuses, and one it takes."""

    def __init__(self) -> None:
        super().__init__()
        self.ok = nn.Conv2d(4, 4, 3)
        self.act = nn.ReLU()
        self.grouped = nn.Conv2d(4, 4, 3, groups=2)
        self.up = nn.ConvTranspose2d(4, 4, 2, stride=2)
        self.reflect = nn.Conv2d(4, 4, 3, padding=1, padding_mode='reflect')
        self.even_same = nn.Conv2d(4, 4, 2, padding='same')
        self.normed = NormConv2d(4, 4, 3)
        self.hooked = nn.Conv2d(4, 4, 1)
        self.hooked.register_forward_hook(lambda module, args, out: out * 2)
        self.drconv = DRConv2d(4, 4, 1, region_num=2)


@pytest.mark.parametrize('dtype, tol', [(torch.float32, 1e-5), (torch.float64, 1e-12)])
@pytest.mark.parametrize(
    'kwargs', [dict(generator='basis', num_bases=3),
               dict(generator='paper', static_kernel=True)])
def test_outputs_unchanged_at_conversion(dtype, tol, kwargs):
    torch.manual_seed(0)
    model = Net().to(dtype).eval()
    x = torch.randn(2, 3, 13, 10, dtype=dtype)
    expected = model(x)
    assert convert_to_drconv(model, NET_CONVS, region_num=3, **kwargs) == NET_CONVS
    for name in NET_CONVS:
        layer = model.get_submodule(name)
        assert isinstance(layer, DRConv2d) and not layer.training, name
        assert all(p.dtype == dtype for p in layer.parameters()), name
    assert (model.body[0].bias is None) and (model.head.bias is not None)
    torch.testing.assert_close(model(x), expected, rtol=tol, atol=tol)


def test_converted_model_trains_its_drconvs():
    torch.manual_seed(0)
    model = Net()
    convert_to_drconv(model, ['stem', 'head'], region_num=2, generator='basis')
    model(torch.randn(2, 3, 9, 8)).square().mean().backward()
    for name in ('stem', 'head'):
        grads = [p.grad for p in model.get_submodule(name).generator.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads), name


def test_replace_conv2d_takes_any_builder_and_keeps_dtype_and_mode():
    model = Net().double().eval()
    built = []

    def build(conv: nn.Conv2d) -> nn.Module:
        built.append(conv)
        return DRConv2d(conv.in_channels,
                        conv.out_channels,
                        conv.kernel_size,
                        conv.stride,
                        conv.padding,
                        conv.dilation,
                        region_num=2)

    old_head = model.head
    assert replace_conv2d(model, ('head', ), build) == ['head']
    assert built == [old_head]
    assert all(p.dtype == torch.float64 for p in model.head.parameters())
    assert not model.head.training
    assert model(torch.randn(1, 3, 8, 8, dtype=torch.float64)).shape == (1, 4, 4, 4)


def test_the_conv_of_a_model_made_of_it_alone_is_not_a_choice():
    with pytest.raises(ValueError, match=r"'' is not a submodule .* no convertible nn.Conv2d"):
        convert_to_drconv(nn.Conv2d(3, 3, 1), [''])


def test_nothing_is_replaced_when_a_layer_fails():
    model = Net()
    # The 'paper' generator cannot start from a 3x3 kernel without static_kernel.
    with pytest.raises(ValueError, match='static_kernel'):
        convert_to_drconv(model, ['head', 'stem'], region_num=2, generator='paper')
    assert type(model.head) is nn.Conv2d and type(model.stem) is nn.Conv2d


ZOO_CHOICES = re.escape("Convertible nn.Conv2d layers: ['ok']")


# yapf: disable
@pytest.mark.parametrize('names, message', [
    ('ok', r"layer_names must be a sequence of layer names, but got the string 'ok'"),
    (['ok', 'ok'], r"layer_names names \['ok'\] more than once"),
    (['missing'], r"'missing' is not a submodule of this Zoo\. " + ZOO_CHOICES),
    (['act'], r"'act' cannot become a DRConv2d: it is a ReLU, not an nn\.Conv2d\. " + ZOO_CHOICES),
    (['drconv'], r"it is a DRConv2d, not an nn\.Conv2d"),
    (['grouped'], r'it is an nn\.Conv2d with groups=2; DRConv2d supports groups=1 only'),
    (['up'], r'it is a transposed convolution'),
    (['reflect'], r"padding_mode='reflect'; DRConv2d pads with zeros only"),
    (['even_same'],
     r"it is an nn\.Conv2d whose padding DRConv2d cannot reproduce \(padding='same'"),
    (['normed'], r'it is a [\w.]*NormConv2d, whose forward is not nn\.Conv2d\.forward'),
    (['hooked'], r'it is an nn\.Conv2d with forward hooks, which would be lost'),
])
# yapf: enable
def test_errors(names, message):
    model = Zoo()
    with pytest.raises(ValueError, match=message):
        convert_to_drconv(model, names, region_num=2)
    assert type(model.ok) is nn.Conv2d


def test_error_lists_close_names_first_and_truncates():
    model = nn.Sequential(*[nn.Conv2d(2, 2, 1) for _ in range(20)])
    expected = ("Convertible nn.Conv2d layers: ['15', '0', '1', '2', '3', '4', '5', '6', '7', "
                "'8', '9', '10'] and 8 more")
    with pytest.raises(ValueError, match=re.escape(expected)):
        convert_to_drconv(model, ['15x'])


def test_shared_conv_is_refused():
    model = nn.Module()
    model.a = nn.Conv2d(2, 2, 1)
    model.b = model.a
    with pytest.raises(ValueError, match=r"'a' is the same module as \['b'\]; replacing it"):
        convert_to_drconv(model, ['a'])


class ListedConvs(nn.Module):
    """Like detectron2's FPN: convs that are submodules and in plain containers forward reads."""

    def __init__(self) -> None:
        super().__init__()
        self.p2 = nn.Conv2d(2, 3, 3, padding=1)
        self.p3 = nn.Conv2d(3, 2, 1)
        self.convs = [self.p2, self.p3]
        self.by_level = {'p2': self.p2}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.convs[1](self.by_level['p2'](x))


def test_conv_also_held_in_plain_lists_and_dicts_is_replaced_there_too():
    model = ListedConvs()
    x = torch.rand(2, 2, 7, 5)
    before = model(x)
    convert_to_drconv(model, ['p2', 'p3'], region_num=2)
    assert model.convs == [model.p2, model.p3] and model.by_level == {'p2': model.p2}
    assert isinstance(model.p2, DRConv2d) and isinstance(model.p3, DRConv2d)
    torch.testing.assert_close(model(x), before, rtol=0, atol=1e-5)
    # forward calls the DRConvs: their guided masks are recorded.
    model.p2.record_mask = True
    model(x)
    assert tuple(model.p2.last_mask.shape) == (2, 7, 5)


@pytest.mark.parametrize('container', [tuple, set])
def test_conv_also_held_in_an_immutable_container_is_refused(container):
    model = nn.Module()
    model.inner = nn.Module()
    model.inner.p2 = nn.Conv2d(2, 2, 1)
    model.inner.output_convs = container([model.inner.p2])
    with pytest.raises(ValueError,
                       match=r"'inner\.p2' is also held in the plain attribute\(s\) "
                       r"\['inner\.output_convs'\], which cannot be updated in place \(only lists "
                       r"and dicts can\)"):
        convert_to_drconv(model, ['inner.p2'])
    assert type(model.inner.p2) is nn.Conv2d


@pytest.mark.slow
def test_conversion_does_not_import_detectron2():
    # convert.py looks for detectron2's Conv2d only where detectron2's layers are imported.
    code = ('import sys; from torch import nn; from drconv_mmdet.nn import convert_to_drconv; '
            'convert_to_drconv(nn.Sequential(nn.Conv2d(2, 2, 1)), ["0"], region_num=2); '
            'print(sorted(m for m in sys.modules if m.split(".")[0] == "detectron2"))')
    result = subprocess.run([sys.executable, '-c', code],
                            capture_output=True,
                            text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == '[]'
