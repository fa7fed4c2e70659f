"""Export an mmdet detector of drconv-mmdet (DRConv layers included) to ONNX with standard ops.

The whole two-stage detector (Faster / Mask R-CNN) from the image to boxes, scores, labels (and
masks), or with --features-only its backbone and neck. The file is checked with onnx.checker, any
op outside the default ONNX domain is an error, and ONNX Runtime is compared with PyTorch on a
test input. Examples::

    python tools/deployment/pytorch2onnx.py configs/demo/mask-rcnn_r18_drfpn-8r_toy-coco.py \\
        work_dirs/demo/iter_300.pth --out demo.onnx --shape 256 256
    python tools/deployment/pytorch2onnx.py configs/drconv/mask-rcnn_r50_drfpn-8r_180k_coco.py \\
        CKPT --out drfpn_features.onnx --shape 800 1344 --features-only
"""
import argparse
import os.path as osp
from typing import Sequence

import numpy as np
import torch

from drconv_mmdet.deployment import EXPORTERS, check_standard_ops, default_exporter, export_onnx
from drconv_mmdet.deployment.detector import build_detector, exporter_for
from drconv_mmdet.deployment.onnx_export import DEFAULT_OPSETS
from drconv_mmdet.utils import add_cfg_options_argument


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Export a detector to ONNX')
    parser.add_argument('config', help='config file path')
    parser.add_argument('checkpoint', nargs='?', help='checkpoint file (default: initial weights)')
    parser.add_argument('--out', required=True, help='the .onnx file to write')
    parser.add_argument('--shape',
                        type=int,
                        nargs=2,
                        default=[800, 1344],
                        metavar=('H', 'W'),
                        help='height and width of the example input; the file accepts any size')
    parser.add_argument('--features-only',
                        action='store_true',
                        help='export the backbone and neck only (any batch size)')
    parser.add_argument('--exporter',
                        choices=EXPORTERS,
                        default=default_exporter(),
                        help='torch.onnx.export with dynamo=True or the TorchScript-based one '
                        '(dynamo=False); default: the installed torch\'s default')
    parser.add_argument('--opset',
                        type=int,
                        help='ONNX opset (>= 17). Default: 18 for dynamo, 17 for torchscript')
    parser.add_argument('--seed', type=int, default=0, help='seed of the random test input')
    add_cfg_options_argument(parser)
    return parser.parse_args()


def compare_with_onnxruntime(path: str, wrapper: torch.nn.Module, image: torch.Tensor,
                             names: Sequence[str]) -> float:
    """Runs the file with ONNX Runtime and the wrapper with PyTorch on ``image``; prints and
    returns the largest absolute difference over the outputs."""
    import onnxruntime as ort
    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    actual = session.run(None, {'image': image.numpy()})
    with torch.no_grad():
        expected = [t.numpy() for t in wrapper(image)]
    worst = 0.0
    for name, a, e in zip(names, actual, expected):
        if a.shape != e.shape:
            raise RuntimeError(f'output {name}: ONNX Runtime gives shape {a.shape}, PyTorch '
                               f'{e.shape}')
        diff = float(np.abs(a.astype(np.float64) - e).max()) if a.size else 0.0
        print(f'  {name}: shape {tuple(a.shape)}, max |ONNX Runtime - PyTorch| = {diff:.3g}')
        worst = max(worst, diff)
    return worst


def main() -> None:
    args = parse_args()
    if args.checkpoint is not None and not osp.isfile(args.checkpoint):
        raise FileNotFoundError(f'checkpoint {args.checkpoint!r} does not exist')
    if not osp.isfile(args.config):
        raise FileNotFoundError(f'config file {args.config!r} does not exist')
    if args.opset is not None and args.opset < 17:
        raise ValueError(f'--opset must be >= 17 (RoiAlign with half_pixel needs 16), but got '
                         f'{args.opset}')
    if min(args.shape) < 32:
        raise ValueError(f'--shape must be at least 32 x 32, but got {args.shape}')
    detector = build_detector(args.config, args.checkpoint, args.cfg_options)
    if args.checkpoint is None:
        print('no checkpoint given: exporting the initial (random) weights')
    wrapper, names, dynamic_axes = exporter_for(detector, args.features_only)
    generator = torch.Generator().manual_seed(args.seed)
    image = torch.rand(1, 3, *args.shape, generator=generator) * 255

    export_onnx(wrapper, (image, ),
                args.out, ['image'],
                names,
                dynamic_axes,
                exporter=args.exporter,
                opset_version=args.opset)
    ops = check_standard_ops(args.out)
    opset = args.opset or DEFAULT_OPSETS[args.exporter]
    print(f'wrote {args.out} ({args.exporter} exporter, opset {opset}); onnx.checker: ok; '
          f'{len(ops)} op types, all in the default ONNX domain: {", ".join(ops)}')
    print(f'ONNX Runtime vs PyTorch on a random {args.shape[0]} x {args.shape[1]} image:')
    compare_with_onnxruntime(args.out, wrapper, image, names)


if __name__ == '__main__':
    main()
