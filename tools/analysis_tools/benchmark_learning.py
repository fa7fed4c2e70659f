"""Does DRConv learn, and with which schedule? The DRConv paper's Table 1 in miniature.

Trains small CNNs on scikit-learn's handwritten digits (1,797 real 8x8 grey images that ship with
the wheel, so nothing is downloaded), each network once with ``nn.Conv2d`` and once per DRConv
generator at the convs the paper replaces, and gives every variant its own schedule: every
(optimizer, learning rate) of the sweep is trained over several seeds, the one with the best mean
validation accuracy is the variant's schedule, and the test accuracy of those runs is reported
(mean and std over seeds, the difference to the conv network at its own best schedule, Welch's
t-test). The test split decides nothing. Also reported: training accuracy, parameters, CPU time per
epoch and how the guided masks use the regions (the share of an image's pixels in its largest
region, and the number of regions an image uses, over the test set and the DRConv layers).

Networks of width ``w`` (every conv without bias, followed by BatchNorm, and ReLU where the
original network has one); every map stays 8x8:

- ``k1``: a 3x3 stem conv 1 -> w, two blocks of a depthwise 3x3 conv and a 1x1 conv w -> w;
  the two 1x1 convs change.
- ``k3``: the stem, two 3x3 convs w -> w (the kind of the FPN output convs); they change.
- ``shufflenet``: ShuffleNetV2 in miniature. The stem, a unit with two branches that doubles the
  channels (w -> 2w; the downsampling unit without its stride), two basic units (channel split,
  1x1 - depthwise 3x3 - 1x1 on one half, concat, channel shuffle) and a last 1x1 conv 2w -> 4w.
  Every 1x1 conv changes, as in DRConv-ShuffleNetV2 (``DRShuffleNetV2``).
- ``mobilenet``: MobileNetV2 in miniature. The stem, an inverted residual of expansion 1 (w -> w),
  one of expansion 4 (w -> 2w) and one with its residual (2w -> 2w), and a last 1x1 conv
  2w -> 4w. Every 1x1 conv changes, as in ``DRMobileNetV2``.

All end in global average pooling and a linear classifier to 10 classes.

Data: the stratified 70 % / 30 % train / test split of ``DigitsDataset`` (``random_state=0``),
then 20 % of the training images held out, stratified, for validation: 1,005 train, 252
validation, 540 test images. Pixels scaled to [0, 1], standardised with the training mean and std.
Augmentation: each training image shifted by -1, 0 or +1 pixel in each direction (zero fill).
Schedule: batch 32, the learning rate decayed linearly to 0 over all iterations (the shape of the
paper's ImageNet schedule); SGD with momentum 0.9 and weight decay 1e-4, or AdamW with weight
decay 0.05. A seed fixes the initialisation, the batch order and the shifts.

Example::

    python tools/analysis_tools/benchmark_learning.py --jobs 2 --out learning.json learning.md
    python tools/analysis_tools/benchmark_learning.py --quick
"""
import argparse
import inspect
import json
import os
import platform
import statistics
import subprocess
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from datetime import datetime, timezone
from multiprocessing import get_context
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from scipy.stats import ttest_ind
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import Tensor, nn

from drconv_mmdet.nn import DRConv2d

NETWORKS = ('k1', 'k3', 'shufflenet', 'mobilenet')
GENERATORS = ('conv', 'paper', 'basis', 'paper-static')
OPTIMIZERS = ('sgd', 'adamw')
NUM_CLASSES = 10
BATCH_SIZE = 32
MOMENTUM = 0.9
WEIGHT_DECAY = dict(sgd=1e-4, adamw=0.05)
QUICK = dict(seeds=[0],
             epochs=1,
             networks=['k1'],
             regions=4,
             sgd_lrs=[0.2],
             adamw_lrs=[3e-3],
             generators=['conv', 'paper', 'basis'])

Data = Dict[str, Tuple[Tensor, Tensor]]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parses ``argv`` (the command line when None)."""
    parser = argparse.ArgumentParser(
        description='Train small CNNs with nn.Conv2d or DRConv2d layers on the sklearn digits, '
        'each variant at its best schedule on a validation split, and compare their test accuracy')
    parser.add_argument('--networks',
                        nargs='+',
                        default=list(NETWORKS),
                        help=f'networks among {NETWORKS} (see the module docstring)')
    parser.add_argument('--generators',
                        nargs='+',
                        default=list(GENERATORS),
                        help=f'variants among {GENERATORS}; conv is the nn.Conv2d network, '
                        'paper-static the paper generator with static_kernel=True')
    parser.add_argument('--width',
                        type=int,
                        default=8,
                        help='channels of the stem; 8 starves the networks')
    parser.add_argument('--regions', type=int, default=8, help='regions m of every DRConv')
    parser.add_argument('--sgd-lrs',
                        nargs='*',
                        type=float,
                        default=[0.02, 0.06, 0.2, 0.6, 2.0],
                        help='peak learning rates of SGD in the sweep (none: no SGD)')
    parser.add_argument('--adamw-lrs',
                        nargs='*',
                        type=float,
                        default=[1e-3, 3e-3, 1e-2, 3e-2, 0.1],
                        help='peak learning rates of AdamW in the sweep (none: no AdamW)')
    parser.add_argument('--seeds', nargs='+', type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument('--epochs', type=int, default=12)
    parser.add_argument('--jobs',
                        type=int,
                        default=1,
                        help='training runs at once, one torch thread each')
    parser.add_argument('--threads',
                        type=int,
                        default=None,
                        help='torch threads with --jobs 1 (default: the CPUs this process may '
                        'use)')
    parser.add_argument('--out',
                        nargs='+',
                        default=[],
                        help='files to write: *.json gets every run, anything else the Markdown '
                        'tables; rewritten after every network')
    parser.add_argument('--quick',
                        action='store_true',
                        help='smoke test: one seed, one epoch, k1, m=4, conv/paper/basis, one '
                        'learning rate per optimizer')
    args = parser.parse_args(argv)
    if args.quick:
        for name, value in QUICK.items():
            setattr(args, name, value)
    for name in ('epochs', 'width', 'regions', 'jobs', 'threads'):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f'--{name} must be >= 1, but got {value}')
    for name, known in (('networks', NETWORKS), ('generators', GENERATORS)):
        bad = [v for v in getattr(args, name) if v not in known]
        if bad:
            raise ValueError(f'--{name} must be among {known}, but got {bad}')
    for optimizer in OPTIMIZERS:
        bad = [lr for lr in getattr(args, f'{optimizer}_lrs') if lr <= 0]
        if bad:
            raise ValueError(f'--{optimizer}-lrs must be positive, but got {bad}')
    if not args.sgd_lrs and not args.adamw_lrs:
        raise ValueError('--sgd-lrs and --adamw-lrs are both empty: nothing to train')
    return args


def load_data() -> Data:
    """The digits as {split: (images (N, 1, 8, 8), labels)} for 'train', 'val' and 'test'."""
    digits = load_digits()
    images = torch.from_numpy(digits.images).float().unsqueeze(1) / 16
    labels = torch.from_numpy(digits.target).long()
    # The test split is DigitsDataset's: the same call on the same indices.
    train_idx, test_idx = train_test_split(torch.arange(len(labels)).numpy(),
                                           test_size=0.3,
                                           random_state=0,
                                           stratify=labels.numpy())
    train_idx, val_idx = train_test_split(train_idx,
                                          test_size=0.2,
                                          random_state=0,
                                          stratify=labels.numpy()[train_idx])
    mean, std = images[train_idx].mean(), images[train_idx].std()
    return {
        split: ((images[idx] - mean) / std, labels[idx])
        for split, idx in (('train', train_idx), ('val', val_idx), ('test', test_idx))
    }


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


def swapped_conv(in_channels: int, out_channels: int, kernel: int, generator: str,
                 regions: int) -> nn.Module:
    """The conv that the variants swap: ``nn.Conv2d`` or a DRConv2d with this generator."""
    padding = kernel // 2
    if generator == 'conv':
        return nn.Conv2d(in_channels, out_channels, kernel, padding=padding, bias=False)
    extra = dict(static_kernel=True) if generator == 'paper-static' else {}
    return DRConv2d(in_channels,
                    out_channels,
                    kernel,
                    padding=padding,
                    bias=False,
                    region_num=regions,
                    generator=generator.split('-')[0],
                    **extra)


def conv_bn(conv: nn.Module, channels: int, relu: bool = True) -> nn.Sequential:
    return nn.Sequential(conv, nn.BatchNorm2d(channels), *([nn.ReLU(inplace=True)] if relu else []))


def depthwise(channels: int) -> nn.Sequential:
    """A depthwise 3x3 conv and its BatchNorm, without ReLU (as in ShuffleNetV2 and MobileNetV2)."""
    return conv_bn(nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False),
                   channels,
                   relu=False)


class ShuffleUnit(nn.Module):
    """A ShuffleNetV2 unit at stride 1: with ``split``, half the channels pass and the other half
    goes through 1x1 - depthwise 3x3 - 1x1; without, both branches see the whole input (the
    downsampling unit's two branches, which double the channels). Then concat and shuffle."""

    def __init__(self, in_channels: int, out_channels: int, split: bool, pointwise) -> None:
        super().__init__()
        self.split = split
        branch = out_channels // 2
        branch_in = in_channels // 2 if split else in_channels
        self.left = None if split else nn.Sequential(depthwise(in_channels),
                                                     pointwise(in_channels, branch))
        self.right = nn.Sequential(pointwise(branch_in, branch), depthwise(branch),
                                   pointwise(branch, branch))

    def forward(self, x: Tensor) -> Tensor:
        if self.split:
            left, right = x.chunk(2, dim=1)
        else:
            left, right = self.left(x), x
        out = torch.cat((left, self.right(right)), dim=1)
        batch, channels, height, width = out.shape
        return out.view(batch, 2, channels // 2, height, width).transpose(1, 2).reshape_as(out)


class InvertedResidual(nn.Module):
    """A MobileNetV2 block at stride 1: 1x1 expansion (none at expansion 1), depthwise 3x3, linear
    1x1 projection, and the residual where the channels stay."""

    def __init__(self, in_channels: int, out_channels: int, expansion: int, pointwise) -> None:
        super().__init__()
        hidden = in_channels * expansion
        layers = [pointwise(in_channels, hidden)] if expansion > 1 else []
        self.layers = nn.Sequential(*layers, depthwise(hidden),
                                    pointwise(hidden, out_channels, relu=False))
        self.residual = in_channels == out_channels and expansion > 1

    def forward(self, x: Tensor) -> Tensor:
        out = self.layers(x)
        return x + out if self.residual else out


def build_model(network: str, width: int, generator: str, regions: int) -> nn.Sequential:
    """The network of the module docstring, with its swapped convs of this generator."""

    def swapped(in_channels: int,
                out_channels: int,
                kernel: int = 1,
                relu: bool = True) -> nn.Sequential:
        return conv_bn(swapped_conv(in_channels, out_channels, kernel, generator, regions),
                       out_channels, relu)

    stem = conv_bn(nn.Conv2d(1, width, 3, padding=1, bias=False), width)
    if network == 'k1':
        body = [depthwise(width), swapped(width, width), depthwise(width), swapped(width, width)]
        channels = width
    elif network == 'k3':
        body = [swapped(width, width, 3), swapped(width, width, 3)]
        channels = width
    elif network == 'shufflenet':
        body = [
            ShuffleUnit(width, 2 * width, False, swapped),
            ShuffleUnit(2 * width, 2 * width, True, swapped),
            ShuffleUnit(2 * width, 2 * width, True, swapped),
            swapped(2 * width, 4 * width)
        ]
        channels = 4 * width
    else:
        body = [
            InvertedResidual(width, width, 1, swapped),
            InvertedResidual(width, 2 * width, 4, swapped),
            InvertedResidual(2 * width, 2 * width, 4, swapped),
            swapped(2 * width, 4 * width)
        ]
        channels = 4 * width
    return nn.Sequential(stem, *body, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(channels, NUM_CLASSES))


def make_optimizer(model: nn.Module, optimizer: str, lr: float) -> torch.optim.Optimizer:
    if optimizer == 'sgd':
        return torch.optim.SGD(model.parameters(),
                               lr=lr,
                               momentum=MOMENTUM,
                               weight_decay=WEIGHT_DECAY['sgd'])
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=WEIGHT_DECAY['adamw'])


def train_epoch(model: nn.Module, optimizer: torch.optim.Optimizer,
                scheduler: torch.optim.lr_scheduler.LambdaLR, images: Tensor, labels: Tensor,
                generator: torch.Generator) -> float:
    """One epoch over shuffled, shifted batches; returns its CPU time in seconds.

    The CPU time of the process does not grow with other work on the machine, as the wall time
    does (with one thread it is what the epoch takes on an idle core).
    """
    model.train()
    start = time.process_time()
    order = torch.randperm(len(labels), generator=generator)
    for begin in range(0, len(labels), BATCH_SIZE):
        idx = order[begin:begin + BATCH_SIZE]
        loss = F.cross_entropy(model(random_shift(images[idx], generator)), labels[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
    return time.process_time() - start


@torch.no_grad()
def evaluate(model: nn.Module, images: Tensor, labels: Tensor) -> Dict[str, object]:
    """Accuracy, and per DRConv layer the mean share of pixels in an image's largest region and
    the mean number of regions an image uses."""
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


def run(data: Data,
        network: str,
        width: int,
        generator: str,
        regions: int,
        optimizer: str,
        lr: float,
        seed: int,
        epochs: int,
        threads: Optional[int] = None) -> Dict[str, object]:
    """Trains one variant with one schedule and one seed, and evaluates it on every split."""
    if threads is not None:
        torch.set_num_threads(threads)
    images, labels = data['train']
    torch.manual_seed(seed)
    model = build_model(network, width, generator, regions)
    optim = make_optimizer(model, optimizer, lr)
    total_iters = epochs * -(-len(labels) // BATCH_SIZE)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optim, lambda it: 1 - it / total_iters)
    batches = torch.Generator().manual_seed(seed)
    cpu = [train_epoch(model, optim, scheduler, images, labels, batches) for _ in range(epochs)]
    result = evaluate(model, *data['test'])
    result.update(
        val_accuracy=evaluate(model, *data['val'])['accuracy'],
        # On the unshifted training images: tells overfitting from underfitting.
        train_accuracy=evaluate(model, *data['train'])['accuracy'],
        params=sum(p.numel() for p in model.parameters()),
        epoch_cpu_s=statistics.median(cpu),
        optimizer=optimizer,
        lr=lr,
        seed=seed)
    return result


def schedules(args: argparse.Namespace) -> List[Tuple[str, float]]:
    return [(optimizer, lr) for optimizer in OPTIMIZERS for lr in getattr(args, f'{optimizer}_lrs')]


def variant_grid(args: argparse.Namespace) -> List[Dict[str, object]]:
    """Every (network, generator) to train; the conv network first in each network."""
    generators = [g for g in GENERATORS if g in args.generators]
    if 'paper-static' in generators and not supports_static_kernel():
        print(
            'note: this DRConv2d has no static_kernel argument; the paper-static variants are '
            'skipped',
            flush=True)
        generators.remove('paper-static')
    return [
        dict(network=network, generator=generator) for network in args.networks
        for generator in generators
    ]


def mean_of(runs: List[Dict[str, object]], key: str) -> float:
    return statistics.mean(r[key] for r in runs)


def summarise(variant: Dict[str, object], runs: List[Dict[str, object]],
              baseline: Optional[Dict[str, object]]) -> Dict[str, object]:
    """The variant at its best schedule by mean validation accuracy (the first of equals): test
    accuracy over seeds, its difference to the baseline's with Welch's p, and the sweep."""
    sweep = {}
    for run_ in runs:
        sweep.setdefault((run_['optimizer'], run_['lr']), []).append(run_)
    (optimizer, lr), best = max(sweep.items(), key=lambda item: mean_of(item[1], 'val_accuracy'))
    acc = [r['accuracy'] for r in best]
    row = dict(variant,
               optimizer=optimizer,
               lr=lr,
               seeds=len(best),
               acc_mean=statistics.mean(acc),
               acc_std=statistics.stdev(acc) if len(acc) > 1 else 0.0,
               val_acc_mean=mean_of(best, 'val_accuracy'),
               train_acc_mean=mean_of(best, 'train_accuracy'),
               params=best[0]['params'],
               epoch_cpu_s=statistics.median(r['epoch_cpu_s'] for r in best),
               sweep=[
                   dict(optimizer=o,
                        lr=l,
                        val_acc_mean=mean_of(rs, 'val_accuracy'),
                        acc_mean=mean_of(rs, 'accuracy')) for (o, l), rs in sweep.items()
               ],
               runs=runs)
    if best[0]['largest_region_share']:
        row['largest_region_share'] = statistics.mean(
            statistics.mean(r['largest_region_share']) for r in best)
        row['regions_used'] = statistics.mean(statistics.mean(r['regions_used']) for r in best)
    if baseline is not None and variant['generator'] != 'conv':
        row['delta'] = row['acc_mean'] - baseline['acc_mean']
        base_acc = [r['accuracy'] for r in baseline['best_runs']]
        spread = len(acc) > 1 and len(base_acc) > 1 and (statistics.variance(acc) +
                                                         statistics.variance(base_acc)) > 0
        if spread:
            row['p_value'] = float(ttest_ind(acc, base_acc, equal_var=False).pvalue)
    row['best_runs'] = best
    return row


def format_schedule(optimizer: str, lr: float) -> str:
    return f'{"SGD" if optimizer == "sgd" else "AdamW"} {lr:g}'


def make_tables(rows: List[Dict[str, object]]) -> str:
    """The variants at their best schedules, then every schedule's mean validation accuracy."""
    lines = [
        '| network | layer | params | best schedule (val acc %) | test acc % (mean +- std) | '
        'vs conv | Welch p | train acc % | largest region share | regions used | '
        'CPU s / epoch |',
        '|---|---|---|---|---|---|---|---|---|---|---|',
    ]
    for r in rows:
        delta = f"{r['delta']:+.2f}" if 'delta' in r else ''
        p_value = f"{r['p_value']:.3f}" if 'p_value' in r else ''
        share = f"{r['largest_region_share']:.2f}" if 'largest_region_share' in r else ''
        used = f"{r['regions_used']:.1f}" if 'regions_used' in r else ''
        lines.append(f"| {r['network']} | {r['generator']} | {r['params']:,} | "
                     f"{format_schedule(r['optimizer'], r['lr'])} ({r['val_acc_mean']:.1f}) | "
                     f"{r['acc_mean']:.2f} +- {r['acc_std']:.2f} | {delta} | {p_value} | "
                     f"{r['train_acc_mean']:.2f} | {share} | {used} | {r['epoch_cpu_s']:.2f} |")
    columns = [(s['optimizer'], s['lr']) for s in rows[0]['sweep']] if rows else []
    lines += [
        '', 'Mean validation accuracy (%) of every schedule:', '',
        '| network | layer | ' + ' | '.join(format_schedule(*c) for c in columns) + ' |',
        '|---|---|' + '---|' * len(columns)
    ]
    for r in rows:
        by_schedule = {(s['optimizer'], s['lr']): s['val_acc_mean'] for s in r['sweep']}
        cells = [f'{by_schedule[c]:.1f}' if c in by_schedule else '' for c in columns]
        lines.append(f"| {r['network']} | {r['generator']} | " + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def write_outputs(paths: Sequence[str], header: str, rows: List[Dict[str, object]],
                  meta: Dict[str, object]) -> None:
    for path in paths:
        with open(path, 'w') as f:
            if path.endswith('.json'):
                variants = [{k: v for k, v in row.items() if k != 'best_runs'} for row in rows]
                json.dump(dict(meta, variants=variants), f, indent=1)
            else:
                f.write(header + '\n\n' + make_tables(rows) + '\n')


def commit() -> str:
    """The commit of this tree, with '+changes' when it differs; 'unknown' outside git."""
    root = os.path.dirname(os.path.abspath(__file__))
    try:
        head = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'],
                              cwd=root,
                              check=True,
                              capture_output=True,
                              text=True).stdout.strip()
        dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'],
                               cwd=root,
                               check=True,
                               capture_output=True,
                               text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return 'unknown'
    return head + ('+changes' if dirty.strip() else '')


def main(argv: Optional[Sequence[str]] = None) -> List[Dict[str, object]]:
    args = parse_args(argv)
    # The CPUs this process may use where the OS says (Linux), else all of them.
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
    threads = 1 if args.jobs > 1 else (args.threads or cpus)
    torch.set_num_threads(threads)
    grid = variant_grid(args)
    data = load_data()
    meta = dict(date=datetime.now(timezone.utc).strftime('%Y-%m-%d'),
                commit=commit(),
                machine=f'{platform.machine()}, {args.jobs} runs at once, {threads} torch '
                f'thread(s) each',
                torch=torch.__version__,
                seeds=args.seeds,
                epochs=args.epochs,
                width=args.width,
                regions=args.regions,
                **{
                    split: len(labels)
                    for split, (_, labels) in data.items()
                })
    header = (f"sklearn digits, {meta['train']} train / {meta['val']} validation / "
              f"{meta['test']} test images; width {args.width}, m = {args.regions}, "
              f"{args.epochs} epochs, seeds {args.seeds}; commit {meta['commit']}, "
              f"{meta['machine']}, torch {meta['torch']}")
    runs_per_variant = len(schedules(args)) * len(args.seeds)
    jobs = [
        dict(variant,
             optimizer=optimizer,
             lr=lr,
             seed=seed,
             width=args.width,
             regions=args.regions,
             epochs=args.epochs) for variant in grid for optimizer, lr in schedules(args)
        for seed in args.seeds
    ]
    rows: List[Dict[str, object]] = []
    baselines: Dict[str, Dict[str, object]] = {}
    runs: List[Dict[str, object]] = []
    pool = ProcessPoolExecutor(args.jobs, mp_context=get_context('fork')) if args.jobs > 1 else None
    with pool or nullcontext():
        if pool is None:
            results = (run(data, **job) for job in jobs)
        else:
            futures = [pool.submit(run, data, threads=1, **job) for job in jobs]
            results = (future.result() for future in futures)
        for job, result in zip(jobs, results):
            runs.append(result)
            print(
                f"{job['network']} {job['generator']} "
                f"{format_schedule(job['optimizer'], job['lr'])} seed {job['seed']}: "
                f"val {result['val_accuracy']:.2f} %, test {result['accuracy']:.2f} %, "
                f"{result['epoch_cpu_s']:.2f} CPU s / epoch",
                flush=True)
            if len(runs) < runs_per_variant:
                continue
            variant = dict(network=job['network'], generator=job['generator'])
            row = summarise(variant, runs, baselines.get(variant['network']))
            if variant['generator'] == 'conv':
                baselines[variant['network']] = row
            rows.append(row)
            runs = []
            write_outputs(args.out, header, rows, meta)
    print(header + '\n\n' + make_tables(rows))
    return rows


if __name__ == '__main__':
    main()
