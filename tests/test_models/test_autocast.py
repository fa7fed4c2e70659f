"""DRConv models under CPU autocast: the filters come out of the generator in the low precision
dtype while the layer's bias stays float32, as on a GPU with ``--amp``.

mmengine's AmpOptimWrapper refuses CPU, so these tests drive ``torch.autocast`` directly.
"""
import warnings

import pytest
import torch
from helpers import DEMO_DRFPN_CONFIG, tiny_run_config
from mmcv.cnn import ConvModule
from mmdet.registry import DATASETS, MODELS
from mmengine.dataset import pseudo_collate
from mmengine.registry import init_default_scope

from drconv_mmdet.models.backbones import DetNAS
from drconv_mmdet.models.necks import DRFPN
from drconv_mmdet.nn import DRConv2d
from drconv_mmdet.torch_compat import get_autocast_dtype, is_autocast_enabled


def _cpu_autocast_supports(dtype):
    """CPU autocast disables itself, with a warning, for a dtype it lacks: torch 2.1 has
    bfloat16 only (and raises when entered with float16), float16 came later (pytorch#112484)."""
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', UserWarning)
        try:
            with torch.autocast('cpu', dtype=dtype):
                return is_autocast_enabled('cpu') and get_autocast_dtype('cpu') == dtype
        except RuntimeError:  # torch 2.1 raises on entering instead
            return False


LOW_PRECISION = [
    torch.bfloat16,
    pytest.param(torch.float16,
                 marks=pytest.mark.skipif(
                     not _cpu_autocast_supports(torch.float16),
                     reason=f'CPU autocast has no float16 in torch {torch.__version__}')),
]


def _assert_finite_grads(model):
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert param.grad is not None, f'{name} got no gradient'
            assert param.grad.dtype == param.dtype, name
            assert torch.isfinite(param.grad).all(), f'{name} has a non-finite gradient'


@pytest.mark.parametrize('dtype', LOW_PRECISION)
def test_conv_module_of_drconvs(dtype):
    """The ConvModule that a config's ``conv_cfg=dict(type='DRConv')`` builds, applied twice, so
    that the second call gets a low precision input."""
    torch.manual_seed(0)
    module = ConvModule(16,
                        16,
                        3,
                        padding=1,
                        conv_cfg=dict(type='DRConv', region_num=4),
                        norm_cfg=None)
    assert isinstance(module.conv, DRConv2d) and module.conv.bias is not None
    with torch.autocast('cpu', dtype=dtype):
        out = module(module(torch.randn(2, 16, 20, 24)))
    assert out.dtype == dtype and out.shape == (2, 16, 20, 24)
    out.float().square().mean().backward()
    _assert_finite_grads(module)


@pytest.mark.parametrize('input_dtype', [torch.float32, torch.bfloat16])
@pytest.mark.parametrize('kernel_size', [1, 3])
@pytest.mark.parametrize('generator', ['paper', 'basis'])
def test_drconv2d_with_bias(generator, kernel_size, input_dtype):
    torch.manual_seed(0)
    layer = DRConv2d(6,
                     5,
                     kernel_size,
                     padding=kernel_size // 2,
                     bias=True,
                     region_num=3,
                     generator=generator,
                     num_bases=2)
    torch.nn.init.normal_(layer.bias)
    x = torch.randn(2, 6, 9, 7)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = layer(x.to(input_dtype))
    assert out.dtype == torch.bfloat16
    # Against float32: bfloat16 rounding, and the few pixels whose region the rounded guide
    # changes.
    with torch.no_grad():
        reference = layer(x.to(input_dtype).float())
    assert (out.float() - reference).abs().mean() < 0.05 * reference.abs().mean()
    out.float().square().mean().backward()
    _assert_finite_grads(layer)


def test_drfpn_forward_backward():
    torch.manual_seed(0)
    in_channels = [4, 6, 8, 10]
    neck = DRFPN(in_channels,
                 8,
                 5,
                 add_extra_convs='on_output',
                 drconv_cfg=dict(type='DRConv', region_num=4),
                 drconv_layers=('lateral_convs.0', 'fpn_convs.0', 'fpn_convs.1'))
    inputs = [torch.randn(2, c, s, s) for c, s in zip(in_channels, [24, 12, 6, 3])]
    with torch.autocast('cpu', dtype=torch.bfloat16):
        outs = neck(inputs)
    assert [out.shape[-1] for out in outs] == [24, 12, 6, 3, 2]
    assert all(out.dtype == torch.bfloat16 for out in outs)
    sum(out.float().square().mean() for out in outs).backward()
    _assert_finite_grads(neck)


def test_detnas_forward_backward():
    torch.manual_seed(0)
    model = DetNAS(drconv_cfg=dict(type='DRConv', region_num=4, generator='basis', num_bases=2))
    with torch.autocast('cpu', dtype=torch.bfloat16):
        outs = model(torch.rand(2, 3, 32, 32))
    assert [tuple(out.shape) for out in outs] == [(2, 64, 8, 8), (2, 160, 4, 4), (2, 320, 2, 2),
                                                  (2, 640, 1, 1)]
    assert all(out.dtype == torch.bfloat16 for out in outs)
    sum(out.float().square().mean() for out in outs).backward()
    _assert_finite_grads(model)


def test_mask_rcnn_drfpn_loss_step(toy_coco_root, monkeypatch):
    """The backbone and the DRFPN, where the DRConvs are, under autocast; the heads in float32,
    since mmcv's CPU NMS and RoIAlign have no bfloat16 kernels (their CUDA kernels take the
    float16 of ``--amp``)."""
    init_default_scope('mmdet')
    cfg = tiny_run_config(DEMO_DRFPN_CONFIG, toy_coco_root)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    extract_feat = model.extract_feat

    def extract_feat_under_autocast(inputs):
        with torch.autocast('cpu', dtype=torch.bfloat16):
            feats = extract_feat(inputs)
        assert all(feat.dtype == torch.bfloat16 for feat in feats)
        return tuple(feat.float() for feat in feats)

    monkeypatch.setattr(model, 'extract_feat', extract_feat_under_autocast)
    dataset = DATASETS.build(cfg.train_dataloader.dataset)
    data = model.data_preprocessor(pseudo_collate([dataset[i] for i in range(2)]), True)
    total, _ = model.parse_losses(model(**data, mode='loss'))
    assert torch.isfinite(total) and total > 0
    total.backward()
    drconvs = [m for m in model.modules() if isinstance(m, DRConv2d)]
    assert len(drconvs) == 2
    for layer in drconvs:
        for name, param in layer.named_parameters():
            assert param.grad.abs().sum() > 0, f'{name} got no gradient'
    _assert_finite_grads(model)
