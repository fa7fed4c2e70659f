"""Speed and peak memory of the DRConv op and layer, beside nn.Conv2d and the all-regions way.

For every shape it times, in one run and on the same inputs, the forward pass (no grad) and the
forward + backward pass of
- ``conv2d``: ``nn.Conv2d`` of the same shape (the cost DRConv should keep);
- ``op``: :func:`drconv_mmdet.ops.dr_conv2d` (one conv per pixel);
- ``reference``: :func:`drconv_mmdet.ops.dr_conv2d_reference` (all m region outputs, as the public
  implementations compute them);
and the same for the layer (``DRConv2d`` with its guide conv and filter generator, with either op).
Peak memory is the most the CPU allocator held above what it held before the call.

Example::

    python tools/analysis_tools/benchmark_drconv.py --out bench.md
"""
import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from datetime import date
from typing import Callable, Dict, List, Tuple
from unittest import mock

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from drconv_mmdet.models.layers import DRConv2d
from drconv_mmdet.ops import dr_conv2d, dr_conv2d_reference


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Benchmark the DRConv op and layer on CPU')
    parser.add_argument('--batch', type=int, default=2)
    parser.add_argument('--channels', type=int, default=256, help='input = output channels')
    parser.add_argument('--sizes', nargs='+', default=['100x168', '50x84'], help='HxW')
    parser.add_argument('--kernels', nargs='+', type=int, default=[1, 3])
    parser.add_argument('--regions', nargs='+', type=int, default=[4, 8, 16])
    parser.add_argument('--repeat', type=int, default=5, help='timed runs per case (median)')
    parser.add_argument('--parts', nargs='+', default=['op', 'layer'], choices=['op', 'layer'])
    parser.add_argument('--out', help='also write the tables as Markdown to this file')
    args = parser.parse_args()
    for name in ('batch', 'channels', 'repeat'):
        if getattr(args, name) < 1:
            raise ValueError(f'--{name} must be >= 1, but got {getattr(args, name)}')
    try:
        args.sizes = [tuple(int(v) for v in s.lower().split('x')) for s in args.sizes]
    except ValueError:
        raise ValueError(f'--sizes must look like 100x168, but got {args.sizes}') from None
    return args


def peak_bytes(fn: Callable[[], None]) -> int:
    """Most bytes the allocator held above its level before ``fn`` ran."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, 'trace.json')
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = json.load(f)['traceEvents']
    totals = [e['args']['Total Allocated'] for e in events if e.get('name') == '[memory]']
    return max([0, *totals])


def measure(fn: Callable[[], None], repeat: int) -> Tuple[float, int]:
    """Median wall time in ms over ``repeat`` runs after a warm-up, and peak memory in bytes."""
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), peak_bytes(fn)


def op_cases(x: torch.Tensor, kernel: int, regions: int) -> Dict[str, Callable]:
    batch, channels = x.shape[:2]
    padding = kernel // 2
    # Leaves that need gradients, as the generator's filters and the guide conv's output do in
    # a layer: the backward then includes the weight and the m-conv guide gradients.
    weight = (torch.randn(batch, regions, channels, channels, kernel, kernel) *
              0.05).requires_grad_()
    guide = torch.randn(batch, regions, *x.shape[-2:], requires_grad=True)
    conv = nn.Conv2d(channels, channels, kernel, padding=padding)
    return {
        'conv2d': lambda x_: conv(x_),
        'op': lambda x_: dr_conv2d(x_, weight, guide, padding=padding),
        'reference': lambda x_: dr_conv2d_reference(x_, weight, guide, padding=padding),
    }


def layer_cases(x: torch.Tensor, kernel: int, regions: int) -> Dict[str, Callable]:
    channels = x.shape[1]
    padding = kernel // 2
    conv = nn.Conv2d(channels, channels, kernel, padding=padding)
    layer = DRConv2d(channels, channels, kernel, padding=padding, region_num=regions)

    def reference_layer(x_):
        with mock.patch('drconv_mmdet.nn.drconv2d.dr_conv2d', dr_conv2d_reference):
            return layer(x_)

    return {'conv2d': conv, 'op': layer, 'reference': reference_layer}


def run_case(fn: Callable, x: torch.Tensor, repeat: int) -> Dict[str, Tuple[float, int]]:
    leaf = x.detach().requires_grad_()

    def forward():
        with torch.no_grad():
            fn(x)

    def forward_backward():
        fn(leaf).sum().backward()
        leaf.grad = None

    return {'fwd': measure(forward, repeat), 'fwd+bwd': measure(forward_backward, repeat)}


def make_table(part: str, rows: List[dict]) -> str:
    header = (f'| {part} | k | HxW | m | conv2d fwd ms | {part} fwd ms | ref fwd ms | fwd / conv | '
              'conv2d f+b ms | ' + f'{part} f+b ms | ref f+b ms | f+b / conv | target f+b / conv | '
              'ref / ours f+b | peak MB conv / ours / ref (f+b) |')
    lines = [header, '|' + '---|' * (header.count('|') - 1)]
    for r in rows:
        conv, ours, ref = r['conv2d'], r['op'], r['reference']
        target = 1.3 * (r['m'] + 3) / 3
        lines.append(
            f"| {part} | {r['k']} | {r['size'][0]}x{r['size'][1]} | {r['m']} | "
            f"{conv['fwd'][0]:.1f} | {ours['fwd'][0]:.1f} | {ref['fwd'][0]:.1f} | "
            f"{ours['fwd'][0] / conv['fwd'][0]:.2f} | {conv['fwd+bwd'][0]:.1f} | "
            f"{ours['fwd+bwd'][0]:.1f} | {ref['fwd+bwd'][0]:.1f} | "
            f"{ours['fwd+bwd'][0] / conv['fwd+bwd'][0]:.2f} | {target:.2f} | "
            f"{ref['fwd+bwd'][0] / ours['fwd+bwd'][0]:.2f} | "
            f"{conv['fwd+bwd'][1] / 2**20:.0f} / {ours['fwd+bwd'][1] / 2**20:.0f} / "
            f"{ref['fwd+bwd'][1] / 2**20:.0f} |")
    return '\n'.join(lines)


def main() -> None:
    args = parse_args()
    torch.manual_seed(0)
    builders = {'op': op_cases, 'layer': layer_cases}
    tables = []
    context = f'{date.today()}, {platform.processor() or platform.machine()}, ' \
              f'{torch.get_num_threads()} threads, torch {torch.__version__}'
    for part in args.parts:
        rows = []
        for kernel in args.kernels:
            for size in args.sizes:
                x = torch.randn(args.batch, args.channels, *size)
                for regions in args.regions:
                    cases = builders[part](x, kernel, regions)
                    row = dict(k=kernel, size=size, m=regions)
                    for name, fn in cases.items():
                        row[name] = run_case(fn, x, args.repeat)
                    rows.append(row)
                    print(f'{part} k={kernel} {size} m={regions} done', flush=True)
        tables.append(make_table(part, rows))
    text = f'B={args.batch}, {args.channels} -> {args.channels} channels; {context}\n\n' + \
        '\n\n'.join(tables)
    print(text)
    if args.out:
        with open(args.out, 'w') as f:
            f.write(text + '\n')


if __name__ == '__main__':
    main()
