"""Helpers shared by the tests: the op's arguments and its float64 loop definition, the
demo configs shrunk to seconds for the tools' runs, and checks of networks with DRConvs.

Imported as a module (``import helpers`` / ``from helpers import ...``; pytest puts ``tests/`` on
the path for its conftest.py). Needs torch alone: what needs mmengine imports it where used.
"""
import argparse
import functools
import itertools
import os
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence, Tuple, Union

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from drconv_mmdet.nn import DRConv2d
from drconv_mmdet.ops import conv_output_size, region_products
from drconv_mmdet.ops.geometry import as_pair

if TYPE_CHECKING:
    from mmengine.config import Config
    from mmengine.runner import Runner

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_CONFIG = 'configs/demo/mask-rcnn_r18_fpn_toy-coco.py'
DEMO_DRFPN_CONFIG = 'configs/demo/mask-rcnn_r18_drfpn-8r_toy-coco.py'

IntOrPair = Union[int, Sequence[int]]

NEEDS_DYNAMO_EXPORTER = pytest.mark.skipif(
    (tuple(int(v) for v in torch.__version__.split('.')[:2]) < (2, 5)),
    reason='the dynamo ONNX exporter needs torch >= 2.5')

# (kernel, stride, padding, dilation): asymmetric on purpose, so that H/W mix-ups fail.
GEOMETRIES = [
    ((1, 1), (1, 1), (0, 0), (1, 1)),
    ((3, 1), (2, 1), (1, 0), (2, 1)),
    ((3, 3), (1, 1), (1, 1), (1, 1)),
    ((1, 1), (2, 2), (0, 0), (1, 1)),
    ((2, 3), (1, 2), (0, 1), (1, 2)),
]
IN_CHANNELS, OUT_CHANNELS, HEIGHT, WIDTH = 3, 4, 7, 6


def make_args(batch: int,
              regions: int,
              geometry: Tuple[IntOrPair, IntOrPair, IntOrPair, IntOrPair] = GEOMETRIES[0],
              dtype: torch.dtype = torch.float64,
              seed: int = 0,
              with_bias: bool = True,
              *,
              channels: int = IN_CHANNELS,
              out_channels: int = OUT_CHANNELS,
              size: Tuple[int, int] = (HEIGHT, WIDTH),
              scaled: bool = False) -> tuple:
    """Random arguments of ``dr_conv2d``: ``(input, weight, guide, bias, stride, padding,
    dilation)`` with pairs for the geometry ``(kernel, stride, padding, dilation)``.

    ``scaled`` divides the filters by the square root of their fan-in, so that float32 sums of
    many products stay near 1.
    """
    kernel, stride, padding, dilation = [
        as_pair(value, name, minimum) for value, name, minimum in zip(
            geometry,
            ('kernel', 'stride', 'padding', 'dilation'),
            (1, 1, 0, 1),
        )
    ]
    gen = torch.Generator().manual_seed(seed)
    out_size = conv_output_size(tuple(size), kernel, stride, padding, dilation)
    x = torch.randn(batch, channels, *size, generator=gen, dtype=dtype)
    weight = torch.randn(batch,
                         regions,
                         out_channels,
                         channels,
                         *kernel,
                         generator=gen,
                         dtype=dtype)
    if scaled:
        weight = weight / (channels * kernel[0] * kernel[1])**0.5
    guide = torch.randn(batch, regions, *out_size, generator=gen, dtype=dtype)
    bias = torch.randn(out_channels, generator=gen, dtype=dtype) if with_bias else None
    return x, weight, guide, bias, stride, padding, dilation


def loop_dr_conv2d(x: Tensor, weight: Tensor, guide: Tensor, bias: Optional[Tensor], stride,
                   padding, dilation) -> Tuple[Tensor, Tensor]:
    """Per-pixel float64 definition: the output and every region's response (for Eq. 7)."""
    batch, num_regions, out_channels = weight.shape[:3]
    kh, kw = weight.shape[-2:]
    x = F.pad(x, (padding[1], padding[1], padding[0], padding[0]))
    out_h, out_w = guide.shape[-2:]
    out_rows, responses = [], torch.zeros(batch,
                                          num_regions,
                                          out_channels,
                                          out_h,
                                          out_w,
                                          dtype=x.dtype)
    for b in range(batch):
        for i, j in itertools.product(range(out_h), range(out_w)):
            pixel = [x.new_zeros(out_channels) for _ in range(num_regions)]
            for di, dj in itertools.product(range(kh), range(kw)):
                column = x[b, :, i * stride[0] + di * dilation[0], j * stride[1] + dj * dilation[1]]
                for r in range(num_regions):
                    pixel[r] = pixel[r] + weight[b, r, :, :, di, dj] @ column
            scores = guide[b, :, i, j].tolist()
            region = scores.index(max(scores))  # first maximum wins ties, like torch.argmax
            out_rows.append(pixel[region] + (0 if bias is None else bias))
            for r in range(num_regions):
                responses[b, r, :, i, j] = pixel[r].detach()
    if batch:
        out = torch.stack(out_rows).view(batch, out_h, out_w, out_channels).permute(0, 3, 1, 2)
    else:
        out = (x.sum() + weight.sum()) * x.new_zeros(0, out_channels, out_h, out_w)
    return out, responses


def loop_guide_grad(guide: Tensor, responses: Tensor, grad_out: Tensor) -> Tensor:
    """Eq. 7, then Eq. 8, written out per pixel."""
    grad = torch.zeros_like(guide)
    batch, num_regions, out_h, out_w = guide.shape
    for b, i, j in itertools.product(range(batch), range(out_h), range(out_w)):
        probs = torch.softmax(guide[b, :, i, j], dim=0)
        grad_probs = torch.stack(
            [grad_out[b, :, i, j] @ responses[b, r, :, i, j] for r in range(num_regions)])
        grad[b, :, i, j] = probs * (grad_probs - probs @ grad_probs)
    return grad


def non_contiguous(t: Tensor) -> Tensor:
    return t.transpose(-1, -2).contiguous().transpose(-1, -2)


LAYOUTS = {
    'contiguous': lambda t: t,
    'non_contiguous': non_contiguous,
    'channels_last': lambda t: t.contiguous(memory_format=torch.channels_last),
}


def grads(out: Tensor, inputs: Sequence[Optional[Tensor]], grad_out: Tensor) -> Tuple[Tensor, ...]:
    """Gradients of ``out`` with respect to the inputs that require them."""
    wanted = [t for t in inputs if t is not None and t.requires_grad]
    return torch.autograd.grad(out, wanted, grad_out)


def tiny_run_options(data_root: str, max_iters: int = 4, checkpoint_interval: int = 2) -> list:
    """``--cfg-options`` that shrink a demo config to seconds: small images, few iterations."""
    ann = data_root + '/annotations/instances_val.json'
    options = [
        f'train_dataloader.dataset.data_root={data_root}',
        f'val_dataloader.dataset.data_root={data_root}',
        f'test_dataloader.dataset.data_root={data_root}',
        f'val_evaluator.ann_file={ann}',
        f'test_evaluator.ann_file={ann}',
        'train_dataloader.batch_size=2',
        'train_dataloader.num_workers=0',
        'val_dataloader.num_workers=0',
        'test_dataloader.num_workers=0',
        'train_dataloader.dataset.pipeline.2.scale=(128,128)',
        'val_dataloader.dataset.pipeline.1.scale=(128,128)',
        'test_dataloader.dataset.pipeline.1.scale=(128,128)',
        f'train_cfg.max_iters={max_iters}',
        f'train_cfg.val_interval={max_iters}',
        f'default_hooks.checkpoint.interval={checkpoint_interval}',
        'default_hooks.checkpoint.max_keep_ckpts=5',
        'default_hooks.logger.interval=1',
        'param_scheduler.0.end=2',
        'param_scheduler.1.milestones=[1000]',
        'randomness.seed=0',
    ]
    return ['--cfg-options', *options]


def run_tool(*args: str,
             env: Optional[dict] = None,
             timeout: int = 600) -> subprocess.CompletedProcess:
    """Runs a command from the repository root, capturing its output."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([*args],
                          cwd=REPO_ROOT,
                          env=full_env,
                          capture_output=True,
                          text=True,
                          timeout=timeout)


def tiny_run_config(config: str, data_root: str, **kwargs) -> 'Config':
    """The config a tool gets with ``tiny_run_options`` (parsed as its ``--cfg-options`` are)."""
    from mmengine.config import Config, DictAction

    parser = argparse.ArgumentParser()
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    cfg = Config.fromfile(str(REPO_ROOT / config))
    cfg.merge_from_dict(parser.parse_args(tiny_run_options(data_root, **kwargs)).cfg_options)
    return cfg


# How a call is cut: the product-call cost that decides how far groups are padded into length
# classes, and the band size; or the compiled CPU kernels. Every other strategy runs the PyTorch
# kernels.
STRATEGIES = {
    'default': {},
    # No padding: only groups of equal length share a product.
    'exact_lengths': dict(call_macs=0),
    # Every group padded to the longest one: one class, one product per band.
    'one_padded_class': dict(call_macs=1 << 62),
    # One-row bands: groups and samples split across bands, sums over bands.
    'one_row_bands': dict(band_values=0),
    # Filters used in place: all groups, empty ones too, padded in key order.
    'key_order': dict(key_order=True),
    'key_order_one_row_bands': dict(key_order=True, band_values=0),
    'cpu_extension': dict(cpu_extension=True),
}
NOT_BUILT = 'the compiled CPU kernels are not built for this torch (pip install -e .)'


def set_band_values(monkeypatch, values):
    for device_type in ('cpu', 'cuda'):
        monkeypatch.setitem(region_products.BAND_VALUES, device_type, values)
        monkeypatch.setitem(region_products.GUIDE_CONV_BAND_VALUES, device_type, values)


def apply_strategy(name, monkeypatch):
    """Sets up the strategy ``name`` for the test; the kernels it runs, for use_kernels."""
    settings = STRATEGIES[name]
    if 'call_macs' in settings:
        for device_type in ('cpu', 'cuda'):
            monkeypatch.setitem(region_products.PRODUCT_CALL_MACS, device_type,
                                settings['call_macs'])
    if 'band_values' in settings:
        set_band_values(monkeypatch, settings['band_values'])
    if 'key_order' in settings:
        monkeypatch.setattr(region_products, '_filters_outweigh_windows', lambda *args: True)
    return 'compiled' if settings.get('cpu_extension') else 'pytorch'


def skewed_args(batch, geometry, dtype=torch.float64):
    """Arguments whose region 0 owns most pixels, so that groups differ in length."""
    x, weight, guide, bias, *geo = make_args(batch, 3, geometry, dtype=dtype)
    guide = guide.clone()
    guide[:, 0] += 1.0
    return (x, weight, guide, bias, *geo)


@functools.lru_cache(maxsize=None)
def loop_results(batch, geometry):
    """The loop definition's output and gradients for ``skewed_args(batch, geometry)``, computed
    once for every strategy and layout (the loops are the slow part)."""
    x, weight, guide, bias, stride, padding, dilation = skewed_args(batch, geometry)
    x.requires_grad_()
    weight.requires_grad_()
    expected, responses = loop_dr_conv2d(x, weight, guide, bias, stride, padding, dilation)
    grad_out = torch.randn(expected.shape,
                           generator=torch.Generator().manual_seed(1),
                           dtype=expected.dtype)
    want_x, want_w = torch.autograd.grad(expected, (x, weight), grad_out)
    want_guide = loop_guide_grad(guide, responses, grad_out)
    return expected.detach(), grad_out, (want_x, want_w, want_guide, grad_out.sum(dim=(0, 2, 3)))


def relative_error(got, want):
    return ((got.float() - want).norm() / want.norm()).item()


def schedule_runner(cfg: 'Config', work_dir: str, scale_lr: bool = False) -> 'Runner':
    """The train loop, optimizer and parameter schedulers a Runner builds from ``cfg`` before its
    first iteration, on a one-parameter model and a dataset of one batch; ``scale_lr`` applies
    ``--auto-scale-lr`` for one process."""
    from mmengine.model import BaseModel
    from mmengine.runner import Runner

    class OneParameter(BaseModel):

        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))

        def forward(self, *args, **kwargs):
            return {}

    batch_size = cfg.train_dataloader.batch_size
    runner = Runner(model=OneParameter(),
                    work_dir=work_dir,
                    train_dataloader=dict(dataset=list(range(batch_size)),
                                          sampler=cfg.train_dataloader.sampler,
                                          batch_size=batch_size,
                                          collate_fn=dict(type='pseudo_collate')),
                    train_cfg=cfg.train_cfg,
                    optim_wrapper=cfg.optim_wrapper,
                    param_scheduler=cfg.param_scheduler,
                    auto_scale_lr=dict(cfg.auto_scale_lr, enable=True) if scale_lr else None,
                    default_scope=cfg.default_scope)
    runner._train_loop = runner.build_train_loop(runner._train_loop)
    runner.optim_wrapper = runner.build_optim_wrapper(runner.optim_wrapper)
    if scale_lr:
        runner.scale_lr(runner.optim_wrapper, runner.auto_scale_lr)
    runner.param_schedulers = runner.build_param_scheduler(runner.param_schedulers)
    return runner


def randomised(model: nn.Module, seed: int = 0) -> nn.Module:
    """``model`` with random weights, biases and norm statistics, so that loading them shows."""
    torch.manual_seed(seed)
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point():
            if name.endswith('running_var'):
                tensor.uniform_(0.5, 1.5)
            else:
                tensor.normal_(0, 0.3 if tensor.dim() > 1 else 0.1)
    return model


def assert_every_drconv_parameter_learns(model: nn.Module) -> None:
    """After a backward pass: ``model`` has DRConvs and each of their parameters has a finite,
    non-zero gradient."""
    drconv_params = {
        f'{name}.{p_name}': p
        for name, m in model.named_modules() if isinstance(m, DRConv2d)
        for p_name, p in m.named_parameters()
    }
    assert drconv_params
    for name, param in drconv_params.items():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all() and param.grad.abs().sum() > 0, name


def assert_drconvs_start_like_the_plain_convs(drconv_model: nn.Module,
                                              plain_model: nn.Module) -> None:
    """Every DRConv of ``drconv_model`` generates filters of the size of the plain conv at its
    name in ``plain_model`` (both initialised), within the sampling noise of a std."""
    plain = dict(plain_model.named_modules())
    layers = {name: m for name, m in drconv_model.named_modules() if isinstance(m, DRConv2d)}
    assert layers
    torch.manual_seed(0)
    for name, layer in layers.items():
        with torch.no_grad():
            filters = layer.generator(torch.randn(2, layer.in_channels, 4, 4))
        ratio = filters.std().item() / plain[name].weight.std().item()
        assert 0.8 < ratio < 1.25, (name, ratio)
