"""Does DRConv learn? The DRConv paper's Table 1 in miniature, on real images.

Trains small CNNs on scikit-learn's handwritten digits (1,797 real 8x8 grey images that ship with
the wheel, so nothing is downloaded) whose inner convs are either ``nn.Conv2d`` or
:class:`drconv_mmdet.nn.DRConv2d`, with the same widths, data and schedule, over several seeds.
It reports the test accuracy (mean and std over seeds, and the difference to the plain conv of the
same shape with Welch's t-test), the training accuracy, the parameters, the training time per
epoch (wall and CPU) and how the guided masks use the regions (the share of an image's pixels
that fall in its largest region, and the number of regions an image uses, averaged over the test
set and the DRConv layers).

Network of width ``w`` (every conv without bias, followed by BatchNorm and ReLU):
a 3x3 stem conv 1 -> w, two inner blocks, global average pooling and a linear classifier w -> 10;
every map is 8x8. An inner block is
- ``k = 1``: a depthwise 3x3 conv, then the inner 1x1 conv w -> w (the pointwise convs of
  ShuffleNetV2 / MobileNet that the paper's Table 1 replaces);
- ``k = 3``: the inner 3x3 conv w -> w (the kind of the FPN output convs).
Only the two inner convs change between variants.

Data: a fixed stratified split (70 % train, 30 % test, ``random_state=0``); pixels scaled to [0, 1]
and standardised with the training mean and std. Augmentation: each training image is shifted by
a random -1, 0 or +1 pixels in each direction (zero fill); nothing else.
Schedule: SGD, momentum 0.9, weight decay 1e-4, batch 32, learning rate 0.2 decayed linearly to 0
over all iterations (the shape of the paper's ImageNet schedule). The test accuracy is the one
after the last epoch. A seed fixes the initialisation, the batch order and the augmentation.

Example::

    python tools/analysis_tools/benchmark_learning.py --out learning.json learning.md
    python tools/analysis_tools/benchmark_learning.py --quick
"""
import argparse
import inspect
import json
import os
import platform
import statistics
import time
from datetime import datetime, timezone
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from scipy.stats import ttest_ind
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import Tensor, nn

from drconv_mmdet.nn import DRConv2d

GENERATORS = ('conv', 'paper', 'basis', 'paper-static')
NUM_CLASSES = 10
BATCH_SIZE = 32
LR = 0.2
MOMENTUM = 0.9
WEIGHT_DECAY = 1e-4
QUICK = dict(seeds=[0], epochs=1, kernels=[1], widths=[8], regions=[4], sweep_regions=[],
             generators=['conv', 'paper', 'basis'])


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parses ``argv`` (the command line when None)."""
    parser = argparse.ArgumentParser(
        description='Train small CNNs with nn.Conv2d or DRConv2d inner layers on the sklearn '
        'digits and compare their test accuracy')
    parser.add_argument('--seeds', nargs='+', type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument('--epochs', type=int, default=12)
    parser.add_argument('--kernels', nargs='+', type=int, default=[1, 3],
                        help='kernel size of the inner convs')
    parser.add_argument('--widths', nargs='+', type=int, default=[8, 32],
                        help='channels of every conv; 8 starves the network, 32 does not')
    parser.add_argument('--regions', nargs='+', type=int, default=[8],
                        help='region numbers m of every DRConv variant')
    parser.add_argument('--sweep-regions', nargs='*', type=int, default=[4],
                        help='more region numbers for the paper and basis generators, at the '
                        'narrowest width only (where the region number matters most)')
    parser.add_argument('--generators', nargs='+', default=list(GENERATORS),
                        help=f'variants among {GENERATORS}; conv is the nn.Conv2d baseline, '
                        'paper-static the paper generator with static_kernel=True')
    parser.add_argument('--threads', type=int, default=None,
                        help='torch threads (default: the CPUs this process may use)')
    parser.add_argument('--out', nargs='+', default=[],
                        help='files to write: *.json gets every run, anything else the Markdown '
                        'table; rewritten after every variant')
    parser.add_argument('--quick', action='store_true',
                        help='smoke test: one seed, one epoch, k=1, width 8, m=4, conv/paper/basis')
    args = parser.parse_args(argv)
    if args.quick:
        for name, value in QUICK.items():
            setattr(args, name, value)
    if args.epochs < 1:
        raise ValueError(f'--epochs must be >= 1, but got {args.epochs}')
    if args.threads is not None and args.threads < 1:
        raise ValueError(f'--threads must be >= 1, but got {args.threads}')
    for name in ('kernels', 'widths', 'regions', 'sweep_regions'):
        bad = [v for v in getattr(args, name) if v < 1 or (name == 'kernels' and v % 2 == 0)]
        if bad:
            expected = 'odd positive ints' if name == 'kernels' else 'positive ints'
            raise ValueError(f"--{name.replace('_', '-')} must be {expected}, but got {bad}")
    bad = [g for g in args.generators if g not in GENERATORS]
    if bad:
        raise ValueError(f'--generators must be among {GENERATORS}, but got {bad}')
    return args


def load_data() -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """The digits as (train images, train labels, test images, test labels), images (N, 1, 8, 8)."""
    digits = load_digits()
    images = torch.from_numpy(digits.images).float().unsqueeze(1) / 16
    labels = torch.from_numpy(digits.target).long()
    train_idx, test_idx = train_test_split(
        torch.arange(len(labels)).numpy(), test_size=0.3, random_state=0, stratify=labels.numpy())
    train_x, test_x = images[train_idx], images[test_idx]
    mean, std = train_x.mean(), train_x.std()
    return (train_x - mean) / std, labels[train_idx], (test_x - mean) / std, labels[test_idx]


def random_shift(images: Tensor, generator: torch.Generator) -> Tensor:
    """Shifts every image by -1, 0 or +1 pixels in each direction, filling with zeros."""
    batch, _, height, width = images.shape
    padded = F.pad(images, (1, 1, 1, 1))
    dy, dx = torch.randint(0, 3, (2, batch, 1), generator=generator)
    rows = (dy + torch.arange(height))[:, :, None]
    cols = (dx + torch.arange(width))[:, None, :]
    return padded[torch.arange(batch)[:, None, None], 0, rows, cols].unsqueeze(1)


def supports_static_kernel() -> bool:
    return 'static_kernel' in inspect.signature(DRConv2d).parameters


def inner_conv(width: int, kernel: int, generator: str, regions: int) -> nn.Module:
    """The conv that the variants swap: ``nn.Conv2d`` or a DRConv2d with this generator."""
    padding = kernel // 2
    if generator == 'conv':
        return nn.Conv2d(width, width, kernel, padding=padding, bias=False)
    extra = dict(static_kernel=True) if generator == 'paper-static' else {}
    return DRConv2d(width, width, kernel, padding=padding, bias=False, region_num=regions,
                    generator=generator.split('-')[0], **extra)


def conv_bn_relu(conv: nn.Module, channels: int) -> List[nn.Module]:
    return [conv, nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]


def build_model(width: int, kernel: int, generator: str, regions: int) -> nn.Sequential:
    """The network of the module docstring."""

    def block() -> List[nn.Module]:
        layers = []
        if kernel == 1:
            layers += conv_bn_relu(nn.Conv2d(width, width, 3, padding=1, groups=width, bias=False),
                                   width)
        return layers + conv_bn_relu(inner_conv(width, kernel, generator, regions), width)

    return nn.Sequential(*conv_bn_relu(nn.Conv2d(1, width, 3, padding=1, bias=False), width),
                         *block(), *block(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(width, NUM_CLASSES))


def train_epoch(model: nn.Module, optimizer: torch.optim.Optimizer,
                scheduler: torch.optim.lr_scheduler.LRScheduler, images: Tensor, labels: Tensor,
                generator: torch.Generator) -> Tuple[float, float]:
    """One epoch over shuffled, shifted batches; returns its wall and CPU time in seconds.

    On a shared machine the wall time grows with the other work; the CPU time of the process
    does not (with one thread it is what the epoch takes on an idle core).
    """
    model.train()
    start, start_cpu = time.perf_counter(), time.process_time()
    order = torch.randperm(len(labels), generator=generator)
    for begin in range(0, len(labels), BATCH_SIZE):
        idx = order[begin:begin + BATCH_SIZE]
        loss = F.cross_entropy(model(random_shift(images[idx], generator)), labels[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
    return time.perf_counter() - start, time.process_time() - start_cpu


@torch.no_grad()
def evaluate(model: nn.Module, images: Tensor, labels: Tensor) -> Dict[str, object]:
    """Test accuracy, and per DRConv layer the mean share of pixels in an image's largest region
    and the mean number of regions an image uses."""
    model.eval()
    drconvs = [m for m in model.modules() if isinstance(m, DRConv2d)]
    for layer in drconvs:
        layer.record_mask = True
    correct = 0
    largest = [0.0] * len(drconvs)
    used = [0.0] * len(drconvs)
    for begin in range(0, len(labels), 256):
        logits = model(images[begin:begin + 256])
        correct += (logits.argmax(1) == labels[begin:begin + 256]).sum().item()
        for i, layer in enumerate(drconvs):
            mask = layer.last_mask.flatten(1)
            counts = F.one_hot(mask, layer.region_num).sum(1)  # (B, m) pixels per region
            largest[i] += (counts.max(1).values / mask.shape[1]).sum().item()
            used[i] += (counts > 0).sum().item()
    for layer in drconvs:
        layer.record_mask = False
        layer.last_mask = None
    return dict(accuracy=100 * correct / len(labels),
                largest_region_share=[v / len(labels) for v in largest],
                regions_used=[v / len(labels) for v in used])


def run(data: Tuple[Tensor, ...], width: int, kernel: int, generator: str, regions: int,
        seed: int, epochs: int) -> Dict[str, object]:
    """Trains one variant with one seed and evaluates it."""
    train_x, train_y, test_x, test_y = data
    torch.manual_seed(seed)
    model = build_model(width, kernel, generator, regions)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM,
                                weight_decay=WEIGHT_DECAY)
    total_iters = epochs * -(-len(train_y) // BATCH_SIZE)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: 1 - it / total_iters)
    batches = torch.Generator().manual_seed(seed)
    wall, cpu = zip(*(train_epoch(model, optimizer, scheduler, train_x, train_y, batches)
                      for _ in range(epochs)))
    result = evaluate(model, test_x, test_y)
    # Accuracy on the (unshifted) training images tells overfitting from underfitting.
    result.update(train_accuracy=evaluate(model, train_x, train_y)['accuracy'], seed=seed,
                  params=sum(p.numel() for p in model.parameters()),
                  epoch_s=statistics.median(wall), epoch_cpu_s=statistics.median(cpu))
    return result


def variant_grid(args: argparse.Namespace) -> List[Dict[str, object]]:
    """Every (kernel, width, generator, regions) to train; conv once per (kernel, width)."""
    grid = []
    for kernel in args.kernels:
        for width in args.widths:
            # GENERATORS order: the conv baseline comes first, for the differences to it.
            for generator in [g for g in GENERATORS if g in args.generators]:
                if generator == 'conv':
                    region_nums = [None]
                elif generator in ('paper', 'basis') and width == min(args.widths):
                    region_nums = list(dict.fromkeys(args.regions + args.sweep_regions))
                else:
                    region_nums = args.regions
                for regions in region_nums:
                    grid.append(dict(kernel=kernel, width=width, generator=generator,
                                     regions=regions))
    return grid


def summarise(variant: Dict[str, object], runs: List[Dict[str, object]],
              baseline: Optional[Dict[str, object]]) -> Dict[str, object]:
    """Mean and std over seeds, and the difference to the baseline's accuracy with Welch's p."""
    acc = [r['accuracy'] for r in runs]
    row = dict(variant, seeds=len(runs), acc_mean=statistics.mean(acc),
               acc_std=statistics.stdev(acc) if len(acc) > 1 else 0.0,
               train_acc_mean=statistics.mean(r['train_accuracy'] for r in runs),
               params=runs[0]['params'],
               epoch_s=statistics.median(r['epoch_s'] for r in runs),
               epoch_cpu_s=statistics.median(r['epoch_cpu_s'] for r in runs), runs=runs)
    if runs[0]['largest_region_share']:
        row['largest_region_share'] = statistics.mean(
            statistics.mean(r['largest_region_share']) for r in runs)
        row['regions_used'] = statistics.mean(statistics.mean(r['regions_used']) for r in runs)
    if baseline is not None and variant['generator'] != 'conv':
        row['delta'] = row['acc_mean'] - baseline['acc_mean']
        base_acc = [r['accuracy'] for r in baseline['runs']]
        spread = len(acc) > 1 and len(base_acc) > 1 and (
            statistics.variance(acc) + statistics.variance(base_acc)) > 0
        if spread:
            row['p_value'] = float(ttest_ind(acc, base_acc, equal_var=False).pvalue)
    return row


def make_table(rows: List[Dict[str, object]]) -> str:
    lines = [
        '| k | width | inner conv | m | params | test acc % (mean +- std) | vs conv | Welch p | '
        'train acc % | largest region share | regions used | s / epoch | CPU s / epoch |',
        '|---|---|---|---|---|---|---|---|---|---|---|---|---|',
    ]
    for r in rows:
        delta = f"{r['delta']:+.2f}" if 'delta' in r else ''
        p_value = f"{r['p_value']:.3f}" if 'p_value' in r else ''
        share = f"{r['largest_region_share']:.2f}" if 'largest_region_share' in r else ''
        used = f"{r['regions_used']:.1f}" if 'regions_used' in r else ''
        lines.append(
            f"| {r['kernel']} | {r['width']} | {r['generator']} | {r['regions'] or ''} | "
            f"{r['params']:,} | {r['acc_mean']:.2f} +- {r['acc_std']:.2f} | {delta} | {p_value} | "
            f"{r['train_acc_mean']:.2f} | {share} | {used} | {r['epoch_s']:.2f} | "
            f"{r['epoch_cpu_s']:.2f} |")
    return '\n'.join(lines)


def write_outputs(paths: Sequence[str], header: str, rows: List[Dict[str, object]],
                  meta: Dict[str, object]) -> None:
    for path in paths:
        with open(path, 'w') as f:
            if path.endswith('.json'):
                json.dump(dict(meta, variants=rows), f, indent=1)
            else:
                f.write(header + '\n\n' + make_table(rows) + '\n')


def main(argv: Optional[Sequence[str]] = None) -> List[Dict[str, object]]:
    args = parse_args(argv)
    # The CPUs this process may use where the OS says (Linux), else all of them.
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
    torch.set_num_threads(args.threads or cpus)
    grid = variant_grid(args)
    if 'paper-static' in args.generators and not supports_static_kernel():
        print('note: this DRConv2d has no static_kernel argument; the paper-static variants are '
              'skipped', flush=True)
        grid = [v for v in grid if v['generator'] != 'paper-static']
    data = load_data()
    meta = dict(date=datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC'),
                machine=f'{platform.machine()}, {torch.get_num_threads()} torch threads',
                torch=torch.__version__, seeds=args.seeds, epochs=args.epochs,
                train_images=len(data[1]), test_images=len(data[3]))
    header = (f"sklearn digits, {meta['train_images']} train / {meta['test_images']} test "
              f"images; {args.epochs} epochs, seeds {args.seeds}; {meta['date']}, "
              f"{meta['machine']}, torch {meta['torch']}")
    rows: List[Dict[str, object]] = []
    baselines: Dict[Tuple[int, int], Dict[str, object]] = {}
    for variant in grid:
        runs = []
        for seed in args.seeds:
            runs.append(run(data, seed=seed, epochs=args.epochs, **variant))
            print(f"{variant} seed {seed}: {runs[-1]['accuracy']:.2f} %, "
                  f"{runs[-1]['epoch_s']:.2f} s / epoch ({runs[-1]['epoch_cpu_s']:.2f} s CPU)",
                  flush=True)
        key = (variant['kernel'], variant['width'])
        row = summarise(variant, runs, baselines.get(key))
        if variant['generator'] == 'conv':
            baselines[key] = row
        rows.append(row)
        write_outputs(args.out, header, rows, meta)
    print(header + '\n\n' + make_table(rows))
    return rows


if __name__ == '__main__':
    main()
