"""Speed and peak memory of the DRConv op, layer and backbone, beside nn.Conv2d and the
all-regions way.

Parts:
- ``op``: :func:`drconv_mmdet.ops.dr_conv2d` (one conv of work per pixel) against ``nn.Conv2d``
  of the same shape and :func:`drconv_mmdet.ops.dr_conv2d_reference` (all m region outputs, as
  the public implementations compute them), on the same inputs;
- ``layer``: ``DRConv2d`` (guide conv, filter generator, op) against ``nn.Conv2d`` and the same
  layer running the all-regions op;
- ``backbone``: the DetNAS-300M backbone, plain against 8-region DRConv ('basis' generator), as
  configured in configs/detnas/ (needs mmdet);
- ``detector``: torchvision's Mask R-CNN R50-FPN (random weights, images kept at their size),
  plain against 8-region DRConv in its P2 and P3 output convs through ``convert_to_drconv``; the
  forward pass is inference (eval mode), the training step the sum of its losses on fixed random
  targets (needs torchvision).

Times are medians over ``--repeat`` interleaved rounds: the forward pass (no grad) and a training
step (forward and backward of every input that a layer would train: input, filters, guide). With
``--memory``, each case also runs once more in a subprocess of its own, which reports its peak RSS
(or CUDA memory) above the level before the step, as a user sees it.

Examples::

    python tools/analysis_tools/benchmark_drconv.py --preset shapes --memory --out bench.md
    python tools/analysis_tools/benchmark_drconv.py --batch 2 --channels 256 \\
        --sizes 100x168 --kernels 3 --regions 8
    python tools/analysis_tools/benchmark_drconv.py --parts backbone --batch 32 --sizes 224x224
    python tools/analysis_tools/benchmark_drconv.py --parts detector --batch 2 --sizes 800x1216 \
        --device cuda
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple
from unittest import mock

import torch
from torch import nn

from drconv_mmdet.nn import DRConv2d
from drconv_mmdet.ops import cpu_extension, dr_conv2d, dr_conv2d_reference, use_kernels
from drconv_mmdet.ops.implementations import IMPLEMENTATIONS, kernels_for

DETNAS_CONFIGS = {
    'plain': 'configs/detnas/faster-rcnn_detnas-300m_fpn-4conv1fc_90k_coco.py',
    'drconv-8r': 'configs/detnas/faster-rcnn_detnas-300m-drconv-8r_fpn-4conv1fc_90k_coco.py',
}


class Case(NamedTuple):
    """One shape: batch, input and output channels, map size, kernel size, regions."""
    batch: int
    in_channels: int
    out_channels: int
    size: Tuple[int, int]
    kernel: int
    regions: int

    def label(self) -> str:
        return (f'{self.batch} | {self.in_channels}->{self.out_channels} | '
                f'{self.size[0]}x{self.size[1]} | {self.kernel} | {self.regions}')


# Shapes where the op's overhead over a convolution differs most: many small samples, few
# large ones, 1x1 and 3x3, and the FPN levels of a detector at batch 2.
PRESETS = {
    'shapes': [
        Case(64, 64, 64, (28, 28), 1, 8),
        Case(64, 128, 128, (14, 14), 1, 8),
        Case(64, 64, 64, (28, 28), 3, 8),
        Case(256, 32, 64, (8, 8), 3, 8),
        Case(2, 16, 16, (256, 256), 1, 8),
    ] + [
        Case(2, 256, 256, size, kernel, regions) for regions in (8, 4, 16) for kernel in (1, 3)
        for size in ((50, 84), (100, 168))
    ],
}


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Benchmark the DRConv op, layer and backbone')
    parser.add_argument('--parts',
                        nargs='+',
                        default=['op'],
                        choices=['op', 'layer', 'backbone', 'detector'])
    parser.add_argument('--preset',
                        choices=sorted(PRESETS),
                        help='op/layer shapes of a preset instead of the shape arguments')
    parser.add_argument('--batch', type=int, default=2)
    parser.add_argument('--channels', type=int, default=256, help='input channels')
    parser.add_argument('--out-channels', type=int, help='output channels (default: --channels)')
    parser.add_argument('--sizes', nargs='+', default=['100x168', '50x84'], help='HxW')
    parser.add_argument('--kernels', nargs='+', type=int, default=[1, 3])
    parser.add_argument('--regions', nargs='+', type=int, default=[8])
    parser.add_argument('--repeat', type=int, default=5, help='timed rounds (median)')
    parser.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    parser.add_argument('--amp',
                        choices=sorted(AMP_DTYPES),
                        help='run every case under torch.autocast in this dtype, as training '
                        'with --amp does (default: float32)')
    parser.add_argument('--threads', type=int, help='torch CPU threads (default: torch\'s)')
    parser.add_argument('--implementation',
                        default='auto',
                        choices=('auto', ) + IMPLEMENTATIONS,
                        help='the op\'s kernels (docs/kernels.md): each device\'s default, or '
                        'one implementation for every call')
    parser.add_argument('--timer',
                        default='wall',
                        choices=['wall', 'cpu'],
                        help='wall clock, or the process\'s CPU time: with --threads 1 on a '
                        'machine shared with other jobs, CPU time leaves out the time the process '
                        'waits for a core')
    parser.add_argument('--memory',
                        action='store_true',
                        help='also measure the peak memory of a training step per case')
    parser.add_argument('--profile',
                        action='store_true',
                        help='also print a torch.profiler table of the op\'s (or DRConv '
                        'backbone\'s) forward and training step per case')
    parser.add_argument('--out', help='also write the tables as Markdown to this file')
    parser.add_argument('--memory-case', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name in ('batch', 'channels', 'repeat'):
        if getattr(args, name) < 1:
            raise ValueError(f'--{name} must be >= 1, but got {getattr(args, name)}')
    if args.out_channels is None:
        args.out_channels = args.channels
    try:
        args.sizes = [tuple(int(v) for v in s.lower().split('x')) for s in args.sizes]
    except ValueError:
        raise ValueError(f'--sizes must look like 100x168, but got {args.sizes}') from None
    if args.timer == 'cpu' and args.device != 'cpu':
        raise ValueError(f'--timer cpu times CPU work only, but got --device {args.device}')
    if args.device == 'cuda' and not torch.cuda.is_available():
        raise ValueError('--device cuda needs a CUDA device, but torch.cuda.is_available() is '
                         'False')
    return args


def cases_of(args: argparse.Namespace) -> List[Case]:
    if args.preset:
        return PRESETS[args.preset]
    return [
        Case(args.batch, args.channels, args.out_channels, size, kernel, regions)
        for kernel in args.kernels for size in args.sizes for regions in args.regions
    ]


AMP_DTYPES = {'fp16': torch.float16, 'bf16': torch.bfloat16}


def synchronize(device: str) -> None:
    if device == 'cuda':
        torch.cuda.synchronize()


# Builders: each returns, for one case, the callables to compare ({name: fn(x) -> output}) and
# the tensors that a training step differentiates besides x.
Builder = Callable[[Case, str], Tuple[Dict[str, Callable], List[torch.Tensor]]]


def op_builder(case: Case, device: str) -> Tuple[Dict[str, Callable], List[torch.Tensor]]:
    padding = case.kernel // 2
    # Leaves that need gradients, as the generator's filters and the guide conv's output do in
    # a layer: the training step includes the weight and the m-conv guide gradients.
    weight = (torch.randn(case.batch,
                          case.regions,
                          case.out_channels,
                          case.in_channels,
                          case.kernel,
                          case.kernel,
                          device=device) * 0.05).requires_grad_()
    guide = torch.randn(case.batch, case.regions, *case.size, device=device, requires_grad=True)
    conv = nn.Conv2d(case.in_channels, case.out_channels, case.kernel, padding=padding).to(device)
    return {
        'conv2d': conv,
        'op': lambda x: dr_conv2d(x, weight, guide, padding=padding),
        'reference': lambda x: dr_conv2d_reference(x, weight, guide, padding=padding),
    }, [weight, guide, *conv.parameters()]


def layer_builder(case: Case, device: str) -> Tuple[Dict[str, Callable], List[torch.Tensor]]:
    padding = case.kernel // 2
    conv = nn.Conv2d(case.in_channels, case.out_channels, case.kernel, padding=padding).to(device)
    layer = DRConv2d(case.in_channels,
                     case.out_channels,
                     case.kernel,
                     padding=padding,
                     region_num=case.regions).to(device)

    def reference_layer(x):
        with mock.patch('drconv_mmdet.nn.drconv2d.dr_conv2d', dr_conv2d_reference):
            return layer(x)

    return ({
        'conv2d': conv,
        'op': layer,
        'reference': reference_layer
    }, [*conv.parameters(), *layer.parameters()])


def build_backbone(name: str, device: str) -> nn.Module:
    """The backbone of a DetNAS config, with plain BN (no process group) and random weights."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config

    import drconv_mmdet  # noqa: F401 (registers the backbone)

    register_all_modules()
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    cfg = Config.fromfile(os.path.join(root, DETNAS_CONFIGS[name])).model.backbone
    cfg.norm_cfg = dict(type='BN', requires_grad=True)
    cfg.init_cfg = None
    return MODELS.build(cfg).to(device)


def backbone_builder(case: Case, device: str) -> Tuple[Dict[str, Callable], List[torch.Tensor]]:
    models = {name: build_backbone(name, device) for name in DETNAS_CONFIGS}

    def run(model):
        return lambda x: sum(out.float().mean() for out in model(x))

    return ({
        name: run(model)
        for name, model in models.items()
    }, [p for model in models.values() for p in model.parameters()])


# The FPN output convs of P2 and P3 in torchvision's Mask R-CNN R50-FPN.
DETECTOR_DRCONV_LAYERS = ['backbone.fpn.layer_blocks.0.0', 'backbone.fpn.layer_blocks.1.0']


def detector_builder(case: Case, device: str) -> Tuple[Dict[str, Callable], List[torch.Tensor]]:
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    from drconv_mmdet.nn import convert_to_drconv

    height, width = case.size
    models = {}
    for name in ('plain', 'drconv-8r'):
        torch.manual_seed(0)
        model = maskrcnn_resnet50_fpn(weights=None,
                                      weights_backbone=None,
                                      min_size=min(height, width),
                                      max_size=max(height, width))
        if name != 'plain':
            convert_to_drconv(model, DETECTOR_DRCONV_LAYERS, region_num=8)
        models[name] = model.to(device)
    gen = torch.Generator().manual_seed(0)
    targets = []
    for _ in range(case.batch):
        corners = torch.rand(4, 2, 2, generator=gen) * torch.tensor([width, height])
        boxes = torch.cat([corners.min(dim=1).values, corners.max(dim=1).values + 8], dim=1)
        masks = torch.zeros(4, height, width, dtype=torch.uint8)
        for mask, (x0, y0, x1, y1) in zip(masks, boxes.long().tolist()):
            mask[y0:y1, x0:x1] = 1
        targets.append(
            dict(boxes=boxes.to(device),
                 masks=masks.to(device),
                 labels=torch.randint(1, 91, (4, ), generator=gen).to(device)))

    def run(model):

        def step(x):
            # make_steps runs the forward pass without grad: inference in eval mode then.
            if not torch.is_grad_enabled():
                model.eval()
                return model(list(x))
            model.train()
            return sum(model(list(x), targets).values())

        return step

    return ({
        name: run(model)
        for name, model in models.items()
    }, [p for model in models.values() for p in model.parameters()])


BUILDERS: Dict[str, Builder] = {
    'op': op_builder,
    'layer': layer_builder,
    'backbone': backbone_builder,
    'detector': detector_builder
}


def make_steps(fn: Callable,
               x: torch.Tensor,
               leaves: List[torch.Tensor],
               device: str,
               amp: Optional[str] = None) -> Tuple[Callable[[], None], Callable[[], None]]:
    """The forward pass without grad, and a training step that frees the gradients after; both
    under autocast in ``amp``'s dtype if given."""
    leaf = x.detach().requires_grad_()

    def autocast():
        return torch.autocast(device, dtype=AMP_DTYPES[amp or 'bf16'], enabled=amp is not None)

    def forward():
        with torch.no_grad(), autocast():
            fn(x)
        synchronize(device)

    def train_step():
        with autocast():
            out = fn(leaf)
        out.float().sum().backward()
        synchronize(device)
        for t in (leaf, *leaves):
            t.grad = None

    return forward, train_step


def time_case(fns: Dict[str, Callable],
              x: torch.Tensor,
              leaves: List[torch.Tensor],
              repeat: int,
              device: str,
              timer: Callable[[], float],
              amp: Optional[str] = None) -> Dict[str, Tuple[float, float]]:
    """Median ms of forward and training step per callable, rounds interleaved so that load
    changes on a shared machine affect every callable alike."""
    steps = {name: make_steps(fn, x, leaves, device, amp) for name, fn in fns.items()}
    times: Dict[Tuple[str, int], List[float]] = {}
    for round_ in range(repeat + 1):
        for name, pair in steps.items():
            for which, step in enumerate(pair):
                start = timer()
                step()
                if round_:  # round 0 warms up
                    times.setdefault((name, which), []).append(timer() - start)
    return {
        name: tuple(statistics.median(times[name, which]) * 1e3 for which in (0, 1))
        for name in fns
    }


def profile_table(fn: Callable,
                  x: torch.Tensor,
                  leaves: List[torch.Tensor],
                  device: str,
                  amp: Optional[str] = None) -> str:
    """torch.profiler's table of one forward pass and one training step, most time first."""
    from torch.profiler import ProfilerActivity, profile

    forward, train_step = make_steps(fn, x, leaves, device, amp)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == 'cuda' else [])
    tables = []
    for step in (forward, train_step):
        step()
        with profile(activities=activities) as prof:
            step()
        sort_by = 'self_cuda_time_total' if device == 'cuda' else 'self_cpu_time_total'
        tables.append(prof.key_averages().table(sort_by=sort_by, row_limit=12))
    return 'forward\n' + tables[0] + '\ntraining step\n' + tables[1]


def rss_bytes(field: str) -> int:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f'/proc/self/status has no {field}')


def peak_memory_of(part: str, case: Case, name: str, device: str, amp: Optional[str] = None) -> int:
    """Bytes a training step holds at its peak above the level before it (in this process)."""
    fns, leaves = BUILDERS[part](case, device)
    x = torch.randn(case.batch, case.in_channels, *case.size, device=device)
    _, train_step = make_steps(fns[name], x, leaves, device, amp)
    train_step()  # warm-up: one-time allocations of the backends are not the step's
    if device == 'cuda':
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        train_step()
        return torch.cuda.max_memory_allocated() - before
    before = rss_bytes('VmRSS')
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')  # resets the peak RSS (VmHWM) to the current RSS
    train_step()
    return rss_bytes('VmHWM') - before


def measure_memory(part: str, case: Case, name: str, args: argparse.Namespace) -> int:
    """:func:`peak_memory_of` in a fresh subprocess, so that no other case's memory stays held
    by the allocator."""
    spec = json.dumps(dict(part=part, case=case._asdict(), name=name))
    command = [
        sys.executable,
        os.path.abspath(__file__), '--memory-case', spec, '--device', args.device
    ]
    if args.threads:
        command += ['--threads', str(args.threads)]
    command += ['--implementation', args.implementation]
    if args.amp:
        command += ['--amp', args.amp]
    result = subprocess.run(command, check=True, capture_output=True, text=True)
    return int(result.stdout.strip().splitlines()[-1])


def table_header(part: str, names: List[str], memory: bool) -> List[str]:
    base, others = names[0], names[1:]
    header = ['B | C->O | HxW | k | m' if part in ('op', 'layer') else 'B | HxW']
    for name in names:
        header += [f'{name} fwd ms', f'{name} train ms']
    for name in others:
        header += [f'{name} fwd / {base}', f'{name} train / {base}']
    if memory:
        header += [f'{name} peak MB' for name in names]
    columns = header[0].count('|') + len(header)
    return ['| ' + ' | '.join(header) + ' |', '|' + '---|' * columns]


def table_row(row: dict, memory: bool) -> str:
    times = row['times']
    names = list(times)
    base, others = names[0], names[1:]
    cells = [row['label']]
    for name in names:
        cells += [f'{times[name][0]:.1f}', f'{times[name][1]:.1f}']
    for name in others:
        cells += [
            f'{times[name][0] / times[base][0]:.2f}', f'{times[name][1] / times[base][1]:.2f}'
        ]
    if memory:
        cells += [f"{row['memory'][name] / 2**20:.0f}" for name in names]
    return '| ' + ' | '.join(cells) + ' |'


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with use_kernels(None if args.implementation == 'auto' else args.implementation):
        run(args)


def kernels_label(device: str, dtype: torch.dtype) -> str:
    """The implementation the op runs for ``device`` and ``dtype`` in this run."""
    implementation = kernels_for(torch.empty(0, device=device, dtype=dtype))
    if implementation == 'compiled':
        return f'compiled ({cpu_extension.instruction_set()})'
    return {'pytorch': 'PyTorch', 'triton': 'Triton'}[implementation]


def run(args: argparse.Namespace) -> None:
    if args.memory_case:
        spec = json.loads(args.memory_case)
        case = Case(**{**spec['case'], 'size': tuple(spec['case']['size'])})
        print(peak_memory_of(spec['part'], case, spec['name'], args.device, args.amp))
        return
    torch.manual_seed(0)
    tables = []
    for part in args.parts:
        if part in ('backbone', 'detector'):
            cases = [Case(args.batch, 3, 0, size, 0, 0) for size in args.sizes]
        else:
            cases = cases_of(args)
        rows = []
        for case in cases:
            fns, leaves = BUILDERS[part](case, args.device)
            x = torch.randn(case.batch, case.in_channels, *case.size, device=args.device)
            label = (case.label() if part in ('op', 'layer') else
                     f'{case.batch} | {case.size[0]}x{case.size[1]}')
            timer = time.process_time if args.timer == 'cpu' else time.perf_counter
            row = dict(label=label,
                       times=time_case(fns, x, leaves, args.repeat, args.device, timer, args.amp))
            if args.profile:
                print(f'{part} {label}: profile of {list(fns)[1]}\n' +
                      profile_table(list(fns.values())[1], x, leaves, args.device, args.amp))
            del fns, leaves, x
            if args.memory:
                row['memory'] = {
                    name: measure_memory(part, case, name, args)
                    for name in row['times']
                }
            rows.append(row)
            # Each row as it is done: a long run stopped early keeps what it measured.
            print(table_row(row, args.memory), flush=True)
        lines = table_header(part, list(rows[0]['times']), args.memory)
        lines += [table_row(row, args.memory) for row in rows]
        tables.append(f'### {part}\n\n' + '\n'.join(lines))
    kernels = kernels_label(args.device, AMP_DTYPES[args.amp] if args.amp else torch.float32)
    if args.device == 'cuda':
        device = f'{torch.cuda.get_device_name()}, {kernels} kernels'
    else:
        device = (f'{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, '
                  f'{torch.get_num_threads()} threads, {kernels} CPU kernels')
    text = (f'{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {device}, torch '
            f'{torch.__version__}, {args.timer} time, '
            f'{"autocast " + args.amp if args.amp else "float32"}\n\n' + '\n\n'.join(tables))
    print(text)
    if args.out:
        with open(args.out, 'w') as f:
            f.write(text + '\n')


if __name__ == '__main__':
    main()
