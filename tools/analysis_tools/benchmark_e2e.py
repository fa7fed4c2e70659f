"""End-to-end CPU speed of Mask R-CNN with and without DRConv, and of each DRConv layer.

On one fixed random batch (mmdet's ``demo_mm_inputs``: images, boxes and masks from a fixed
seed), times a training iteration (loss forward, backward, SGD step) and an inference pass
(predict mode, no grad) of each config, then each DRConv layer against the plain conv of the same
shape on the input it gets in the model. Prints Markdown tables with the ratios to the first
config (the baseline). Example::

    python tools/analysis_tools/benchmark_e2e.py --iters 3 --out work_dirs/benchmark_e2e.md
"""
import argparse
import os
import statistics
import time
from functools import partial
from typing import Callable, Dict, List, Optional, Sequence

import torch
from mmdet.registry import MODELS
from mmdet.testing import demo_mm_inputs
from mmengine.logging import MMLogger
from mmengine.optim import OptimWrapper
from mmengine.registry import init_default_scope
from torch import Tensor, nn

from drconv_mmdet.nn import DRConv2d
from drconv_mmdet.utils import add_cfg_options_argument, load_tool_config

DEFAULT_CONFIGS = (
    'configs/drconv/mask-rcnn_r50_fpn_180k_coco.py',
    'configs/drconv/mask-rcnn_r50_drfpn-8r_180k_coco.py',
    'configs/drconv/mask-rcnn_r50_drfpn-16r_180k_coco.py',
    'configs/drconv/mask-rcnn_r50_drfpn-lateral-8r_180k_coco.py',
)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parses ``argv`` (the command line when None)."""
    parser = argparse.ArgumentParser(
        description='Time training and inference of detectors with and without DRConv')
    parser.add_argument('--configs',
                        nargs='+',
                        default=list(DEFAULT_CONFIGS),
                        help='configs to compare; the first one is the baseline of the ratios')
    parser.add_argument('--shape',
                        type=int,
                        nargs=2,
                        default=[512, 512],
                        metavar=('H', 'W'),
                        help='image size')
    parser.add_argument('--batch', type=int, default=2, help='images per batch')
    parser.add_argument('--iters', type=int, default=3, help='timed runs of each measurement')
    parser.add_argument('--warmup', type=int, default=1, help='untimed runs before them')
    parser.add_argument('--seed', type=int, default=0, help='seed of the weights and gradients')
    parser.add_argument('--out', help='also write the Markdown tables to this file')
    add_cfg_options_argument(
        parser,
        help='override settings of every config, as key=value pairs (nested keys with dots)')
    args = parser.parse_args(argv)
    for name in ('batch', 'iters'):
        if getattr(args, name) < 1:
            raise ValueError(f'--{name} must be a positive int, but got {getattr(args, name)}')
    if args.warmup < 0:
        raise ValueError(f'--warmup must be a non-negative int, but got {args.warmup}')
    if min(args.shape) < 32:
        raise ValueError(f'--shape must be at least 32 x 32, the stride of the coarsest level the '
                         f'heads need, but got {args.shape}')
    return args


def build_detector(config: str, cfg_options: Optional[dict], seed: int) -> nn.Module:
    """Builds and initialises a config's detector, with no pretrained weights to download."""
    cfg = load_tool_config(config, None, cfg_options, 'none', loaders=())
    cfg.model.backbone.init_cfg = None
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    torch.manual_seed(seed)
    model = MODELS.build(cfg.model)
    model.init_weights()
    return model


def train_iteration(model: nn.Module, data: dict, optim_wrapper: OptimWrapper) -> None:
    model.train()
    model.train_step(data, optim_wrapper)


def inference(model: nn.Module, data: dict) -> list:
    model.eval()
    with torch.no_grad():
        return model.test_step(data)


def layer_forward(module: nn.Module, x: Tensor) -> None:
    with torch.no_grad():
        module(x)


def layer_forward_backward(module: nn.Module, x: Tensor, grad: Tensor) -> None:
    module.zero_grad(set_to_none=True)
    x.grad = None
    module(x).backward(grad)


def median_times(calls: Dict[str, Callable[[], object]], warmup: int,
                 iters: int) -> Dict[str, float]:
    """Median seconds of each call.

    The calls take turns, so that a change of load on a shared machine slows all of them alike
    instead of whichever happened to run at the time.
    """
    samples: Dict[str, List[float]] = {name: [] for name in calls}
    for step in range(warmup + iters):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            if step >= warmup:
                samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def drconv_inputs(model: nn.Module, data: dict) -> Dict[str, Tensor]:
    """The input each DRConv layer of ``model`` gets in an inference pass on ``data``."""
    inputs, handles = {}, []
    for name, module in model.named_modules():
        if isinstance(module, DRConv2d):
            handles.append(
                module.register_forward_pre_hook(
                    lambda _, args, name=name: inputs.__setitem__(name, args[0].detach())))
    inference(model, data)
    for handle in handles:
        handle.remove()
    return inputs


def plain_conv(layer: DRConv2d) -> nn.Conv2d:
    """The ``nn.Conv2d`` a DRConv layer replaces."""
    return nn.Conv2d(layer.in_channels,
                     layer.out_channels,
                     layer.kernel_size,
                     layer.stride,
                     layer.padding,
                     layer.dilation,
                     bias=layer.bias is not None)


def layer_rows(model: nn.Module, data: dict, warmup: int, iters: int) -> List[list]:
    """Per DRConv layer: the times of it and of its plain conv, forward and forward+backward."""
    rows = []
    for name, x in drconv_inputs(model, data).items():
        layer = model.get_submodule(name)
        plain = plain_conv(layer)
        x = x.clone().requires_grad_()
        grad = torch.randn_like(plain(x))
        times = median_times(
            {
                'plain forward': partial(layer_forward, plain, x),
                'drconv forward': partial(layer_forward, layer, x),
                'plain forward+backward': partial(layer_forward_backward, plain, x, grad),
                'drconv forward+backward': partial(layer_forward_backward, layer, x, grad),
            }, warmup, iters)
        row = [f'{name} ({layer.region_num}R)', 'x'.join(map(str, x.shape))]
        for mode in ('forward', 'forward+backward'):
            plain_time, drconv_time = times[f'plain {mode}'], times[f'drconv {mode}']
            row += [
                f'{1e3 * plain_time:.0f}', f'{1e3 * drconv_time:.0f}',
                f'{drconv_time / plain_time:.2f}'
            ]
        rows.append(row)
    return rows


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = [header, ['---'] * len(header), *rows]
    return '\n'.join('| ' + ' | '.join(map(str, line)) + ' |' for line in lines)


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Times the configs and their DRConv layers and prints the tables."""
    args = parse_args(argv)
    # Building and initialising the models logs every parameter's init; only the tables matter.
    MMLogger.get_current_instance().setLevel('WARNING')
    names = [os.path.splitext(os.path.basename(config))[0] for config in args.configs]
    models = {
        name: build_detector(config, args.cfg_options, args.seed)
        for name, config in zip(names, args.configs)
    }
    num_classes = min(model.roi_head.bbox_head.num_classes for model in models.values())
    data = demo_mm_inputs(batch_size=args.batch,
                          image_shapes=(3, *args.shape),
                          num_items=[5] * args.batch,
                          num_classes=num_classes,
                          with_mask=True)
    load_before = os.getloadavg()

    calls = {}
    for name, model in models.items():
        # With lr=0 the step does all its arithmetic but leaves the weights as they are, so every
        # timed iteration has the same proposals, RoI samples and detections; a model that
        # learned the batch would do more mask-head work than one that did not.
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9, weight_decay=1e-4)
        calls[f'{name} train'] = partial(train_iteration, model, data, OptimWrapper(optimizer))
        calls[f'{name} inference'] = partial(inference, model, data)
    times = median_times(calls, args.warmup, args.iters)
    baseline = names[0]
    model_rows = []
    for name, model in models.items():
        row = [name]
        for mode in ('train', 'inference'):
            seconds = times[f'{name} {mode}']
            row += [f'{seconds:.2f}', f'{seconds / times[f"{baseline} {mode}"]:.2f}']
        # Untrained weights score boxes near 1 / num_classes, often below the test score
        # threshold; the mask head then has nothing to do at inference, in every config alike.
        detections = [len(result.pred_instances) for result in inference(model, data)]
        model_rows.append(row + ['/'.join(map(str, detections))])

    torch.manual_seed(args.seed)
    drconv_rows = [
        row for model in models.values() for row in layer_rows(model, data, args.warmup, args.iters)
    ]
    load_after = os.getloadavg()

    report = [
        f'CPU, {torch.get_num_threads()} threads, torch {torch.__version__}; batch {args.batch} '
        f'x {args.shape[0]} x {args.shape[1]}; median of {args.iters} runs after {args.warmup} '
        f'warm-up; load average {load_before[0]:.1f} before, {load_after[0]:.1f} after',
        '',
        markdown_table([
            'config', 'train iter (s)', 'x baseline', 'inference (s)', 'x baseline',
            'detections per image'
        ], model_rows),
    ]
    if drconv_rows:
        report += [
            '',
            markdown_table([
                'DRConv layer', 'input', 'conv fwd (ms)', 'DRConv fwd (ms)', 'x',
                'conv fwd+bwd (ms)', 'DRConv fwd+bwd (ms)', 'x'
            ], drconv_rows),
        ]
    text = '\n'.join(report)
    print(text)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, 'w') as f:
            f.write(text + '\n')


if __name__ == '__main__':
    main()
