"""Turn a checkpoint of a plain detector into a checkpoint of its DRConv config.

The DRConv model is built from the config; every weight of the plain checkpoint loads into it as
it is, and each DRConv starts from the plain conv at its position (``DRConv2d.init_from_conv``):
every region's filter is the plain weight and the bias is copied, so the new checkpoint computes
what the plain one computes. Fine-tuning then teaches the regions to differ. Example::

    python tools/model_converters/plain_to_drconv.py \\
        checkpoints/mask_rcnn_r50_fpn_2x_coco.pth \\
        configs/drconv/mask-rcnn_r50_drfpn-8r_finetune-12k_coco.py \\
        checkpoints/mask-rcnn_r50_drfpn-8r_from-plain.pth
    python tools/train.py configs/drconv/mask-rcnn_r50_drfpn-8r_finetune-12k_coco.py \\
        --cfg-options load_from=checkpoints/mask-rcnn_r50_drfpn-8r_from-plain.pth

The plain checkpoint may also be an http(s) URL. The tool refuses, naming the layer, a plain
checkpoint without a conv at a DRConv position or with one of another shape, a ``'paper'``
generator on a ``k > 1`` conv without ``static_kernel=True``, and any other missing or
unexpected key (the two configs must differ only in their DRConvs).
"""
import argparse
import os.path as osp
import sys
from typing import Dict, List

import torch
from mmdet.registry import MODELS
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.runner import CheckpointLoader
from mmengine.utils import mkdir_or_exist
from torch import Tensor, nn

from drconv_mmdet.nn import DRConv2d
from drconv_mmdet.utils import add_cfg_options_argument, allow_mmengine_checkpoints


def parse_args() -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        description='Write a checkpoint of a DRConv config whose DRConvs start as the convs of '
        'a plain checkpoint')
    parser.add_argument('plain_checkpoint', help='checkpoint of the plain detector (path or URL)')
    parser.add_argument('config', help='config of the DRConv detector')
    parser.add_argument('out', help='path of the checkpoint to write')
    add_cfg_options_argument(
        parser,
        help='override settings of the config, as tools/train.py does (pass the same ones '
        'when training from the output)')
    return parser.parse_args()


def _abridge(keys: List[str]) -> str:
    return f'{len(keys)} ({", ".join(keys[:4])}{", ..." if len(keys) > 4 else ""})'


def start_from_plain(model: nn.Module, plain: Dict[str, Tensor]) -> List[str]:
    """Loads a plain state dict into ``model``, starting each DRConv from its plain conv.

    Args:
        model (nn.Module): the DRConv model.
        plain (dict[str, Tensor]): state dict of the plain model, same key names.

    Returns:
        list[str]: names of the DRConv layers started from plain convs.

    Raises:
        ValueError: a DRConv position without a plain conv weight or with one of another shape,
            a DRConv that cannot start from its conv, or any other missing or unexpected key.
    """
    drconvs = {name: m for name, m in model.named_modules() if isinstance(m, DRConv2d)}
    for name, layer in drconvs.items():
        key = f'{name}.weight'
        expected = (layer.out_channels, layer.in_channels, *layer.kernel_size)
        if key not in plain:
            raise ValueError(f'the plain checkpoint has no {key}: no conv at the DRConv '
                             f'position {name}')
        if tuple(plain[key].shape) != expected:
            raise ValueError(f'{key} has shape {tuple(plain[key].shape)}, but the DRConv at '
                             f'{name} needs a conv weight of shape {expected}')
    # Backbones that start their DRConvs themselves (DetNAS) take their plain weights here.
    result = model.load_state_dict(plain, strict=False)
    started = []
    for name, layer in drconvs.items():
        if f'{name}.weight' not in result.unexpected_keys:
            continue
        try:
            layer.init_from_conv(plain[f'{name}.weight'], plain.get(f'{name}.bias'))
        except ValueError as e:
            raise ValueError(f'the DRConv at {name} cannot start from the plain conv: {e}') from e
        started.append(name)
    prefixes = tuple(f'{name}.' for name in started)
    missing = [key for key in result.missing_keys if not key.startswith(prefixes)]
    unexpected = [
        key for key in result.unexpected_keys
        if key not in {f'{name}.{param}'
                       for name in started
                       for param in ('weight', 'bias')}
    ]
    if missing or unexpected:
        raise ValueError('the plain checkpoint does not fit the DRConv config apart from its '
                         f'DRConvs: missing keys {_abridge(missing)}, unexpected keys '
                         f'{_abridge(unexpected)}')
    return sorted(drconvs)


def main() -> None:
    """Convert the plain checkpoint into ``out``."""
    args = parse_args()
    cfg = Config.fromfile(args.config)
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    model = MODELS.build(cfg.model)
    allow_mmengine_checkpoints()
    checkpoint = CheckpointLoader.load_checkpoint(args.plain_checkpoint, map_location='cpu')
    plain = checkpoint.get('state_dict', checkpoint)
    # DataParallel prefixes every key; a partial match would be a real key name.
    if plain and all(key.startswith('module.') for key in plain):
        plain = {key[len('module.'):]: value for key, value in plain.items()}
    try:
        started = start_from_plain(model, plain)
    except ValueError as e:
        sys.exit(f'error: {e}')
    mkdir_or_exist(osp.dirname(osp.abspath(args.out)))
    meta = dict(plain_checkpoint=osp.basename(args.plain_checkpoint),
                config=osp.basename(args.config),
                drconv_layers=started)
    torch.save(dict(state_dict=model.state_dict(), meta=meta), args.out)
    print(f'Wrote {args.out}: {len(started)} DRConv layers start from the plain convs '
          f'({", ".join(started)})')


if __name__ == '__main__':
    main()
