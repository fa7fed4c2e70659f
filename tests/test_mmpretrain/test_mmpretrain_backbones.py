"""DRConv-ShuffleNetV2 and DRConv-MobileNetV2: DRConvs exactly at the 1x1 convs, a plain state
dict starts them as the plain network, every DRConv parameter learns."""
import subprocess
import sys

import pytest
import torch
from torch import nn

pytest.importorskip('mmpretrain',
                    reason='needs mmpretrain and torchvision: make setup-compat '
                    'installs them (the torch 2.13 CPU wheel cannot load torchvision)')

from helpers import assert_drconvs_start_like_the_plain_convs  # noqa: E402
from helpers import assert_every_drconv_parameter_learns, randomised  # noqa: E402
from mmengine.registry import DefaultScope  # noqa: E402
from mmpretrain.models.backbones import MobileNetV2, ShuffleNetV2  # noqa: E402
from mmpretrain.registry import MODELS  # noqa: E402

# isort's wrapping, which keeps the noqa on the line flake8 checks: yapf would move it.
# yapf: disable
from drconv_mmdet.mmpretrain import (DRMobileNetV2, DRShuffleNetV2,  # noqa: E402
                                     SharedGuideSequential)
# yapf: enable
from drconv_mmdet.nn import DRConv2d  # noqa: E402

# The widths of the paper's Fig. 4.
VARIANTS = [(DRShuffleNetV2, ShuffleNetV2, w) for w in (0.5, 1.0, 1.5, 2.0)] + \
    [(DRMobileNetV2, MobileNetV2, w) for w in (0.25, 0.5, 0.75, 1.0)]
IDS = [f'{dr.__name__}-{w}x' for dr, _, w in VARIANTS]
# Few bases keep the wide variants light; the layer has its own tests.
SMALL = dict(region_num=4, drconv_cfg=dict(num_bases=2))
# Channels of the last conv at widths up to 1x.
LAST_CHANNELS = {DRShuffleNetV2: 1024, DRMobileNetV2: 1280}


def _pointwise(model):
    return {
        name
        for name, m in model.named_modules()
        if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.groups == 1
    }


@pytest.mark.parametrize('dr_cls, plain_cls, width', VARIANTS, ids=IDS)
@pytest.mark.parametrize('shared_guide', [False, True])
def test_drconvs_exactly_at_the_1x1_convs(dr_cls, plain_cls, width, shared_guide):
    plain = plain_cls(widen_factor=width)
    model = dr_cls(widen_factor=width, shared_guide=shared_guide, **SMALL)
    drconvs = {name: m for name, m in model.named_modules() if isinstance(m, DRConv2d)}
    assert sorted(drconvs) == sorted(_pointwise(plain)) == sorted(model.drconv_names)
    plain_modules = dict(plain.named_modules())
    for name, layer in drconvs.items():
        conv = plain_modules[name]
        assert (layer.in_channels, layer.out_channels, layer.stride, layer.region_num) == \
            (conv.in_channels, conv.out_channels, conv.stride, 4)
    # Every other conv (the 3x3 stem, the depthwise convs) stays the plain one.
    others = {name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    assert others == {name
                      for name, m in plain.named_modules()
                      if isinstance(m, nn.Conv2d)} - set(drconvs)
    assert all(plain_modules[name].kernel_size == (3, 3) for name in others)
    # With a shared guide, one DRConv per guided branch owns the guide conv.
    guided = [m for m in model.modules() if isinstance(m, SharedGuideSequential)]
    assert bool(guided) == shared_guide
    for sequence in guided:
        owners = [unit.conv.with_guide_conv for unit in sequence if isinstance(unit.conv, DRConv2d)]
        assert owners == [True] + [False] * (len(owners) - 1) and len(owners) == 2
    x = torch.rand(2, 3, 64, 48)
    model.eval()
    plain.eval()
    with torch.no_grad():
        assert [o.shape for o in model(x)] == [o.shape for o in plain(x)]


@pytest.mark.parametrize('dr_cls, plain_cls', [(DRShuffleNetV2, ShuffleNetV2),
                                               (DRMobileNetV2, MobileNetV2)])
@pytest.mark.parametrize('shared_guide', [False, True])
@pytest.mark.parametrize('generator', ['basis', 'paper'])
def test_plain_state_dict_starts_the_drconvs(dr_cls, plain_cls, shared_guide, generator):
    """Warm start: mmpretrain's plain weights load and the network computes what the plain one
    computes, with all stage outputs."""
    plain = randomised(plain_cls(widen_factor=0.5, out_indices=(0, 1, 2)))
    model = dr_cls(widen_factor=0.5,
                   out_indices=(0, 1, 2),
                   shared_guide=shared_guide,
                   generator=generator,
                   region_num=4)
    state = plain.state_dict()
    model.load_state_dict(state)
    assert state.keys() == plain.state_dict().keys(), 'the caller\'s dict must stay as it was'
    plain.eval()
    model.eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        for out, expected in zip(model(x), plain(x)):
            torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    # Its own state dict (DRConv keys) loads back as it is.
    again = dr_cls(widen_factor=0.5,
                   out_indices=(0, 1, 2),
                   shared_guide=shared_guide,
                   generator=generator,
                   region_num=4)
    again.load_state_dict(model.state_dict())
    again.eval()
    with torch.no_grad():
        torch.testing.assert_close(again(x)[-1], model(x)[-1])


def test_plain_state_dict_of_another_width_is_refused():
    model = DRShuffleNetV2(widen_factor=0.5, **SMALL)
    with pytest.raises(ValueError,
                       match=r'layers\.0\.0\.branch1\.1\.conv\.weight has shape '
                       r'\(58, 24, 1, 1\), but the DRConv at layers\.0\.0\.branch1\.1\.conv '
                       r'starts from a conv weight of shape \(24, 24, 1, 1\)'):
        model.load_state_dict(ShuffleNetV2(widen_factor=1.0).state_dict())


@pytest.mark.parametrize('dr_cls', [DRShuffleNetV2, DRMobileNetV2])
@pytest.mark.parametrize('shared_guide', [False, True])
def test_training_step_gives_every_drconv_parameter_a_finite_gradient(dr_cls, shared_guide):
    torch.manual_seed(0)
    model = dr_cls(widen_factor=0.5, shared_guide=shared_guide, **SMALL)
    model.train()  # mmpretrain's train() returns None
    head = nn.Linear(LAST_CHANNELS[dr_cls], 10)
    optimizer = torch.optim.SGD([*model.parameters(), *head.parameters()], lr=0.1)
    x, y = torch.rand(4, 3, 64, 64), torch.randint(0, 10, (4, ))
    loss = nn.functional.cross_entropy(head(model(x)[-1].mean(dim=(2, 3))), y)
    loss.backward()
    assert_every_drconv_parameter_learns(model)
    optimizer.step()
    assert torch.isfinite(model(x)[-1]).all()


@pytest.mark.parametrize('dr_cls, plain_cls, width', [(DRShuffleNetV2, ShuffleNetV2, 0.5),
                                                      (DRMobileNetV2, MobileNetV2, 0.25)])
def test_init_weights_starts_the_drconvs_at_the_size_of_the_plain_convs(dr_cls, plain_cls, width):
    drconv_model = dr_cls(widen_factor=width, **SMALL)
    plain_model = plain_cls(widen_factor=width)
    drconv_model.init_weights()
    plain_model.init_weights()
    assert_drconvs_start_like_the_plain_convs(drconv_model, plain_model)


def test_frozen_stages_freeze_the_drconvs():
    model = DRShuffleNetV2(widen_factor=0.5, frozen_stages=1, **SMALL)
    model.train()
    frozen = [p for name, p in model.named_parameters() if name.startswith(('conv1.', 'layers.0.'))]
    assert frozen and not any(p.requires_grad for p in frozen)
    assert all(p.requires_grad for name, p in model.named_parameters()
               if name.startswith('layers.1.'))


def test_registered_in_mmpretrain():
    # As an mmpretrain config builds them (default_scope='mmpretrain'), whatever scope an earlier
    # test left.
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        model = MODELS.build(
            dict(type='DRShuffleNetV2', widen_factor=0.5, generator='paper', region_num=2))
        mobilenet = MODELS.build(dict(type='DRMobileNetV2', widen_factor=0.25, **SMALL))
    assert isinstance(model, DRShuffleNetV2)
    assert {m.generator_type for m in model.modules() if isinstance(m, DRConv2d)} == {'paper'}
    assert isinstance(mobilenet, DRMobileNetV2)


@pytest.mark.parametrize('drconv_cfg, message', [
    (dict(region_num=4), 'drconv_cfg must not set region_num'),
    (dict(with_guide_conv=False), 'drconv_cfg must not set with_guide_conv'),
    ([('num_bases', 2)], 'drconv_cfg must be a dict of DRConv2d arguments or None'),
])
def test_bad_drconv_cfg(drconv_cfg, message):
    with pytest.raises(ValueError, match=message):
        DRShuffleNetV2(widen_factor=0.5, drconv_cfg=drconv_cfg)


def test_bad_generator():
    with pytest.raises(ValueError, match="generator must be one of"):
        DRMobileNetV2(widen_factor=0.25, generator='condconv')


@pytest.mark.parametrize('block_mmdet', [True, False])
def test_importing_drconv_mmdet_leaves_mmpretrain_out(block_mmdet):
    # mmdet's own ReID models import mmpretrain where it is installed, so without mmdet nothing
    # may import it, and with mmdet the backbones' subpackage stays out.
    code = ('import sys; sys.modules["mmdet"] = None; ' if block_mmdet else 'import sys; ')
    code += 'import drconv_mmdet; assert "drconv_mmdet.mmpretrain" not in sys.modules'
    if block_mmdet:
        code += '; assert "mmpretrain" not in sys.modules, "mmpretrain imported"'
    result = subprocess.run([sys.executable, '-c', code],
                            capture_output=True,
                            text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
