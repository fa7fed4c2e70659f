"""Convert an official DetNAS ImageNet checkpoint into a checkpoint of the DetNAS backbone.

Example::

    python tools/model_converters/detnas_to_mmdet.py \\
        ImageNet-Pretrain-models/COCO_FPN_300M.pkl checkpoints/detnas-coco-fpn-300m_mmdet.pth
"""
import argparse
import os.path as osp

import torch
from mmengine.utils import mkdir_or_exist

from drconv_mmdet.models.backbones import DetNAS, convert_detnas_checkpoint


def parse_args() -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        description='Convert an official DetNAS ImageNet checkpoint for the DetNAS backbone.')
    parser.add_argument('src', help='official checkpoint, e.g. COCO_FPN_300M.pkl')
    parser.add_argument('dst', help='path of the converted checkpoint')
    parser.add_argument('--arch',
                        default='COCO-FPN-300M',
                        choices=tuple(DetNAS.arch_settings),
                        help='architecture the checkpoint must have')
    return parser.parse_args()


def main() -> None:
    """Convert ``src`` into ``dst``."""
    args = parse_args()
    # The official files hold only tensors in plain containers, so the safe loader reads them.
    checkpoint = torch.load(args.src, map_location='cpu', weights_only=True)
    state_dict = convert_detnas_checkpoint(checkpoint, args.arch)
    mkdir_or_exist(osp.dirname(osp.abspath(args.dst)))
    torch.save(
        dict(state_dict=state_dict, meta=dict(arch=args.arch, source=osp.basename(args.src))),
        args.dst)
    print(f'Wrote {len(state_dict)} tensors of DetNAS {args.arch} to {args.dst}')


if __name__ == '__main__':
    main()
