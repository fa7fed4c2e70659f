"""DRConvCheckpointer: plain detectron2 checkpoints start every DRConv as the conv at its place."""
import pickle

import pytest
import torch

pytest.importorskip('detectron2',
                    reason='detectron2 is not installed; `make setup-core` builds it '
                    'from its source tarball into .venv-core')

from d2_helpers import TOY_CONFIG, drconv_cfg  # noqa: E402
from detectron2.modeling import build_backbone  # noqa: E402

from drconv_mmdet.detectron2 import DRConvCheckpointer  # noqa: E402
from drconv_mmdet.nn import DRConv2d  # noqa: E402

# Small enough to run in a second: the toy config's ResNet-18 with a 32-channel FPN.
SMALL = ('MODEL.FPN.OUT_CHANNELS', 32)


def plain_and_drconv(*opts):
    """A trained-looking plain ResNet-FPN and the DRConv one of the same config, in eval mode."""
    torch.manual_seed(0)
    cfg = drconv_cfg(TOY_CONFIG, *SMALL, *opts)
    drconv = build_backbone(cfg).eval()
    cfg.MODEL.BACKBONE.NAME = 'build_resnet_fpn_backbone'
    plain = build_backbone(cfg).eval()
    with torch.no_grad():
        # Random statistics and affine parameters, so that a lost norm would show.
        for module in plain.modules():
            if isinstance(module, (torch.nn.BatchNorm2d, torch.nn.GroupNorm)):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return plain, drconv


def save(state, path):
    if path.suffix == '.pkl':
        # detectron2's model-zoo format: numpy arrays under 'model', and an author.
        with open(path, 'wb') as f:
            pickle.dump({
                'model': {
                    k: v.numpy()
                    for k, v in state.items()
                },
                '__author__': 'test'
            }, f)
    else:
        torch.save({'model': state, 'iteration': 7}, path)


# float32 sums the generated filter's bases in another order than the plain conv's weight.
@pytest.mark.parametrize('suffix, dtype, tol', [('.pkl', torch.float32, 1e-5),
                                                ('.pth', torch.float64, 1e-10)])
@pytest.mark.parametrize(
    'opts',
    [
        (),
        ('MODEL.DRCONV.CONVS', ['lateral', 'output'], 'MODEL.DRCONV.LEVELS', ['p2', 'p4', 'p5'],
         'MODEL.FPN.NORM', 'GN', 'MODEL.DRCONV.REGION_NUM', 4),
        ('MODEL.DRCONV.CONVS', ['lateral', 'output'], 'MODEL.DRCONV.SHARED_GUIDE', True),
        ('MODEL.DRCONV.GENERATOR', 'paper', 'MODEL.DRCONV.STATIC_KERNEL', True),
    ],
    ids=['8r-output', 'gn-lateral-output', 'shared-guide', 'paper-static'],
)
def test_features_equal_the_plain_fpn_after_warm_start(tmp_path, suffix, opts, dtype, tol):
    plain, drconv = plain_and_drconv(*opts)
    plain.to(dtype)
    drconv.to(dtype)
    path = tmp_path / f'plain{suffix}'
    save(plain.state_dict(), path)
    DRConvCheckpointer(drconv).load(str(path))
    x = torch.rand(2, 3, 64, 96, dtype=dtype)
    with torch.no_grad():
        expected, actual = plain(x), drconv(x)
    assert list(actual) == list(expected)
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=tol, atol=tol)
    # And the DRConvs are real: they differ from the plain model once their regions differ.
    assert any(isinstance(m, DRConv2d) for m in drconv.modules())


def test_drconv_checkpoint_loads_as_saved(tmp_path):
    _, drconv = plain_and_drconv()
    path = tmp_path / 'drconv.pth'
    save(drconv.state_dict(), path)
    _, other = plain_and_drconv()
    torch.nn.init.ones_(other.fpn_output2.guide.weight)
    DRConvCheckpointer(other).load(str(path))
    for key, value in drconv.state_dict().items():
        torch.testing.assert_close(other.state_dict()[key], value, rtol=0, atol=0)


def test_backbone_only_checkpoint_is_left_to_detectron2(tmp_path):
    # ImageNet weights of the bottom-up network: nothing at any DRConv place.
    plain, drconv = plain_and_drconv()
    state = {k: v for k, v in plain.state_dict().items() if k.startswith('bottom_up.')}
    path = tmp_path / 'imagenet.pth'
    save(state, path)
    guide = drconv.fpn_output2.guide.weight.clone()
    DRConvCheckpointer(drconv).load(str(path))
    torch.testing.assert_close(drconv.bottom_up.stem.conv1.weight,
                               plain.bottom_up.stem.conv1.weight,
                               rtol=0,
                               atol=0)
    torch.testing.assert_close(drconv.fpn_output2.guide.weight, guide, rtol=0, atol=0)


def edit(state, change):
    state = dict(state)
    change(state)
    return state


@pytest.mark.parametrize('change, message', [
    (lambda s: s.pop('fpn_output3.weight'),
     r"no conv and no DRConv at the DRConv place\(s\) \['fpn_output3'\]: expected "
     r"fpn_output3\.weight"),
    (lambda s: s.update({'fpn_output2.weight': torch.zeros(32, 32, 1, 1)}),
     r'fpn_output2\.weight has shape \(32, 32, 1, 1\) in the checkpoint, but the DRConv at '
     r'fpn_output2 needs a conv weight of shape \(32, 32, 3, 3\)'),
    (lambda s: s.pop('fpn_lateral4.bias'),
     r'missing keys 1 \(fpn_lateral4\.bias\), unexpected keys 0 \(\)'),
    (lambda s: s.update({'head.extra': torch.zeros(1)}), r'unexpected keys 1 \(head\.extra\)'),
    (lambda s: s.update({'fpn_lateral4.weight': torch.zeros(32, 256, 3, 3)}),
     r'mis-shaped keys \(checkpoint != model\) 1 \(fpn_lateral4\.weight \(32, 256, 3, 3\) != '
     r'\(32, 256, 1, 1\)\)'),
])
def test_checkpoints_that_do_not_fit_are_refused(tmp_path, change, message):
    plain, drconv = plain_and_drconv()
    path = tmp_path / 'plain.pkl'
    save(edit(plain.state_dict(), change), path)
    with pytest.raises(ValueError, match=message):
        DRConvCheckpointer(drconv).load(str(path))
