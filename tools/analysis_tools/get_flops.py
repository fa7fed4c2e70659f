"""Multiply-adds (MADDs) and parameters of a model, with the cost of its DRConv layers.

Builds the model of a config and traces one forward pass on a random image (no dataset needed):
the tensor mode of a detector (backbone, neck, RPN with its proposals, RoI heads), or the
backbone alone. Counts MADDs as the DRConv paper does: convolutions and matrix products, one
fused multiply-add counting once; a DRConv costs its guide conv, its filter generator and one
convolution per output pixel. Examples::

    python tools/analysis_tools/get_flops.py configs/drconv/mask-rcnn_r50_drfpn-8r_180k_coco.py
    python tools/analysis_tools/get_flops.py CONFIG --shape 224 224 --backbone-only
"""
import argparse
from functools import partial
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from mmdet.registry import MODELS
from mmdet.structures import DetDataSample
from mmengine.analysis import parameter_count
from mmengine.config import Config
from mmengine.registry import init_default_scope
from terminaltables import AsciiTable
from torch import nn

from drconv_mmdet.analysis import DRCONV_OP_NAME, MaddAnalyzer
from drconv_mmdet.nn import DRConv2d
from drconv_mmdet.utils import add_cfg_options_argument, load_tool_config


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parses ``argv`` (the command line when None)."""
    parser = argparse.ArgumentParser(description='Count the MADDs and parameters of a model')
    parser.add_argument('config', help='config file path')
    parser.add_argument(
        '--shape',
        type=int,
        nargs='+',
        default=[800, 1333],
        help='input image size H W, or S for S x S; padded as the model\'s data preprocessor '
        'pads (800 1333 becomes 800 x 1344)')
    parser.add_argument('--backbone-only',
                        action='store_true',
                        help='count the backbone of the model only')
    add_cfg_options_argument(parser)
    return parser.parse_args(argv)


def image_size(shape: Sequence[int]) -> Tuple[int, int]:
    """``(H, W)`` from the ``--shape`` values."""
    if len(shape) not in (1, 2) or min(shape) < 1:
        raise ValueError(f'--shape must be one or two positive ints (S or H W), but got {shape}')
    return (shape[0], shape[0]) if len(shape) == 1 else (shape[0], shape[1])


def build_inputs(model: nn.Module, size: Tuple[int, int]) -> dict:
    """A random uint8 image through the model's data preprocessor, as one test batch.

    The preprocessor normalises and pads it and fills the metainfo (``batch_input_shape``,
    ``pad_shape``) that the heads read.
    """
    height, width = size
    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8)
    sample = DetDataSample(
        metainfo=dict(img_shape=size, ori_shape=size, pad_shape=size, scale_factor=(1.0, 1.0)))
    return model.data_preprocessor(dict(inputs=[image], data_samples=[sample]), False)


def analysis_target(model: nn.Module, data_samples: list, backbone_only: bool) -> nn.Module:
    """The module to trace: the backbone, or the detector in tensor mode."""
    if backbone_only:
        if not isinstance(getattr(model, 'backbone', None), nn.Module):
            raise ValueError(f'--backbone-only needs a model with a backbone, but '
                             f'{type(model).__name__} has none')
        return model.backbone
    # Tensor mode traces the whole network, RPN proposals and RoI heads included, with no
    # loss and no post-processing of the final detections.
    model.forward = partial(model.forward, data_samples=data_samples, mode='tensor')
    return model


def part_rows(target: nn.Module, madds: Dict[str, int], params: Dict[str, int]) -> List[list]:
    """One row per top-level part that has parameters or MADDs, then the rest and the total."""
    total = madds['']
    rows, counted = [], 0
    for name, _ in target.named_children():
        if madds.get(name, 0) or params.get(name, 0):
            rows.append([
                name,
                _millions(params.get(name, 0)),
                _giga(madds[name]),
                _percent(madds[name], total)
            ])
            counted += madds[name]
    if total != counted:
        rows.append(
            ['(outside any part)', '',
             _giga(total - counted),
             _percent(total - counted, total)])
    rows.append(['total', _millions(params['']), _giga(total), _percent(total, total)])
    return rows


def drconv_rows(target: nn.Module, analyzer: MaddAnalyzer, madds: Dict[str, int],
                params: Dict[str, int]) -> List[list]:
    """One row per DRConv layer and one for all of them; empty without DRConv layers.

    Columns: params, MADDs, and the MADDs of the guide conv, of the filter generator, of the
    region-wise conv (one conv per output pixel, the cost of the plain conv of the same shape)
    and ``all m``: the layer's MADDs if every pixel were convolved with all ``m`` filters, as
    implementations that compute every region's output and then select one do.
    """
    rows, sums = [], [0] * 6
    by_operator = analyzer.by_module_and_operator()
    for name, module in target.named_modules():
        if not isinstance(module, DRConv2d):
            continue
        conv = by_operator[name][DRCONV_OP_NAME]
        generator = madds[f'{name}.generator']
        guide = madds[name] - conv - generator
        all_regions = madds[name] + (module.region_num - 1) * conv
        values = (params[name], madds[name], guide, generator, conv, all_regions)
        rows.append(
            [f'{name} ({module.region_num}R)',
             _millions(values[0]), *map(_giga, values[1:])])
        sums = [total + value for total, value in zip(sums, values)]
    if rows:
        rows.append([
            f'all {len(rows)} DRConv layers ({_percent(sums[1], madds[""])} of MADDs)',
            _millions(sums[0]), *map(_giga, sums[1:])
        ])
    return rows


def _giga(value: float) -> str:
    return f'{value / 1e9:.3f}'


def _millions(value: float) -> str:
    return f'{value / 1e6:.3f}'


def _percent(part: float, total: float) -> str:
    return f'{100.0 * part / total:.1f}%' if total else '-'


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Prints the MADDs and parameter tables of a config's model."""
    args = parse_args(argv)
    size = image_size(args.shape)
    cfg: Config = load_tool_config(args.config, None, args.cfg_options, 'none', loaders=())
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    torch.manual_seed(0)
    model = MODELS.build(cfg.model).eval()
    data = build_inputs(model, size)
    target = analysis_target(model, data['data_samples'], args.backbone_only)
    analyzer = MaddAnalyzer(target, data['inputs'])
    with torch.no_grad():
        madds = analyzer.by_module()
    params = parameter_count(target)
    rows = drconv_rows(target, analyzer, madds, params)

    scope = 'the backbone' if args.backbone_only else 'the model in tensor mode'
    print(f'Config: {args.config}\n'
          f'Input: {tuple(data["inputs"].shape)}, a {size[0]} x {size[1]} image padded by the '
          f'data preprocessor, through {scope}\n'
          'MADDs: multiply-adds of convolutions and matrix products')
    print(
        AsciiTable([['part', 'params (M)', 'MADDs (G)', 'share'],
                    *part_rows(target, madds, params)]).table)
    if rows:
        print(
            AsciiTable([[
                'DRConv layer', 'params (M)', 'MADDs (G)', 'guide (G)', 'generator (G)', 'conv (G)',
                'all m (G)'
            ], *rows]).table)
        print('conv: the one conv per output pixel, the MADDs of the plain conv it replaces; '
              'all m: the layer\'s MADDs if it computed all m region outputs')
    unsupported = analyzer.unsupported_ops()
    if unsupported:
        print('Not counted, no MADD handle: ' + ', '.join(f'{op} x{n}'
                                                          for op, n in unsupported.most_common()))


if __name__ == '__main__':
    main()
