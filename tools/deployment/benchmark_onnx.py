"""ONNX Runtime CPU latency of exported models, or of one DRConv layer against the plain conv.

Runs are interleaved (one run of each model in turn, repeated) so that a shared machine's load
hits every model alike; medians are reported. Examples::

    python tools/deployment/benchmark_onnx.py plain.onnx drfpn.onnx --shape 800 1344 --threads 2
    python tools/deployment/benchmark_onnx.py --layer 256 256 3 200 336 --regions 8 --threads 2
"""
import argparse
import os.path as osp
import statistics
import sys
import tempfile
import time
from typing import Dict, List

import numpy as np
import torch

from drconv_mmdet.deployment import export_onnx
from drconv_mmdet.nn import DRConv2d


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='ONNX Runtime latency, interleaved runs')
    parser.add_argument('models', nargs='*', help='.onnx files with one input named image')
    parser.add_argument('--shape',
                        type=int,
                        nargs=2,
                        default=[800, 1344],
                        metavar=('H', 'W'),
                        help='image height and width for the model files')
    parser.add_argument('--layer',
                        type=int,
                        nargs=5,
                        metavar=('C', 'O', 'K', 'H', 'W'),
                        help='instead of files: a DRConv layer (C -> O channels, K x K, input '
                        'H x W, padding K // 2) against nn.Conv2d of the same shape')
    parser.add_argument('--regions', type=int, default=8, help='regions of the --layer DRConv')
    parser.add_argument('--threads', type=int, default=2, help='ONNX Runtime intra-op threads')
    parser.add_argument('--repeats', type=int, default=10, help='timed runs of each model')
    parser.add_argument('--warmup', type=int, default=2, help='untimed runs of each model first')
    return parser.parse_args()


def layer_files(args: argparse.Namespace, folder: str) -> Dict[str, str]:
    channels, out_channels, kernel, height, width = args.layer
    layers = {
        'conv':
        torch.nn.Conv2d(channels, out_channels, kernel, padding=kernel // 2),
        f'drconv-{args.regions}r':
        DRConv2d(channels, out_channels, kernel, padding=kernel // 2, region_num=args.regions),
    }
    files = {}
    for name, layer in layers.items():
        files[name] = osp.join(folder, f'{name}.onnx')
        export_onnx(layer, (torch.randn(1, channels, height, width), ), files[name], ['image'],
                    ['output'], {'image': {
                        2: 'height',
                        3: 'width'
                    }})
    return files


def benchmark(files: Dict[str, str], inputs: Dict[str, np.ndarray], threads: int, repeats: int,
              warmup: int) -> Dict[str, List[float]]:
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    sessions = {
        name: ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])
        for name, path in files.items()
    }
    times = {name: [] for name in files}
    for step in range(warmup + repeats):
        for name, session in sessions.items():
            start = time.perf_counter()
            session.run(None, {'image': inputs[name]})
            if step >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def main() -> None:
    args = parse_args()
    if bool(args.models) == bool(args.layer):
        sys.exit('give either ONNX files or --layer')
    with tempfile.TemporaryDirectory() as folder:
        if args.layer:
            files = layer_files(args, folder)
            shape = (1, args.layer[0], *args.layer[3:])
        else:
            files = {osp.basename(path): path for path in args.models}
            shape = (1, 3, *args.shape)
        generator = np.random.default_rng(0)
        image = generator.uniform(0, 255 if not args.layer else 1, shape).astype(np.float32)
        times = benchmark(files, {name: image
                                  for name in files}, args.threads, args.repeats, args.warmup)
    first = statistics.median(next(iter(times.values())))
    print(f'ONNX Runtime, {args.threads} threads, input {shape}, median of {args.repeats} '
          f'interleaved runs:')
    for name, runs in times.items():
        median = statistics.median(runs)
        print(f'  {name}: {median * 1e3:.1f} ms (min {min(runs) * 1e3:.1f} ms), '
              f'{median / first:.2f}x the first')


if __name__ == '__main__':
    main()
