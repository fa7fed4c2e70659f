"""Draw the guided masks of a model's DRConv layers, each image beside its region map.

Writes ``<image stem>_<layer name>.png`` into ``--out-dir`` for every image and DRConv layer: the
image on the left, its region map on the right (one colour per region, nearest-upsampled to the
image size, the batch padding cut off), as in Fig. 3 of the DRConv paper. Example::

    python tools/analysis_tools/visualize_guided_masks.py \\
        configs/demo/mask-rcnn_r18_drfpn-8r_toy-coco.py work_dirs/demo/iter_300.pth \\
        data/toy_coco/val --out-dir work_dirs/demo/guided_masks
"""
import argparse
import os
import os.path as osp
from typing import List, Optional, Sequence

import mmcv
from mmdet.apis import inference_detector, init_detector
from mmengine.utils import mkdir_or_exist

from drconv_mmdet.nn import DRConv2d
from drconv_mmdet.utils import add_cfg_options_argument, allow_mmengine_checkpoints
from drconv_mmdet.visualization import crop_to_image, draw_guided_mask

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parses ``argv`` (the command line when None)."""
    parser = argparse.ArgumentParser(description='Draw the guided masks of DRConv layers')
    parser.add_argument('config', help='config file of a model with DRConv layers')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('images', nargs='+', help='image files, or folders of images')
    parser.add_argument('--out-dir', required=True, help='folder the pictures are written to')
    parser.add_argument('--device', default='cpu', help='device used for inference')
    add_cfg_options_argument(parser)
    return parser.parse_args(argv)


def find_images(paths: Sequence[str]) -> List[str]:
    """The given image files, then the images directly inside the given folders, sorted."""
    images = []
    for path in paths:
        if osp.isdir(path):
            images += sorted(
                osp.join(path, name) for name in os.listdir(path)
                if name.lower().endswith(IMAGE_SUFFIXES) and osp.isfile(osp.join(path, name)))
        elif osp.isfile(path):
            images.append(path)
        else:
            raise FileNotFoundError(f'image or folder {path!r} does not exist')
    if not images:
        raise ValueError(f'IMAGES {list(paths)} hold no image; expected image files or folders '
                         f'with files ending in {", ".join(IMAGE_SUFFIXES)}')
    return images


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Writes one picture per image and DRConv layer."""
    args = parse_args(argv)
    if not osp.isfile(args.checkpoint):
        raise FileNotFoundError(f'checkpoint {args.checkpoint!r} does not exist')
    images = find_images(args.images)
    allow_mmengine_checkpoints()
    model = init_detector(args.config,
                          args.checkpoint,
                          device=args.device,
                          cfg_options=args.cfg_options)
    layers = {
        name: module
        for name, module in model.named_modules() if isinstance(module, DRConv2d)
    }
    if not layers:
        raise ValueError(f'the model of {args.config} has no DRConv layer to draw; expected a '
                         'model with DRConv2d modules, e.g. a DRFPN neck')
    for layer in layers.values():
        layer.record_mask = True

    mkdir_or_exist(args.out_dir)
    for path in images:
        result = inference_detector(model, path)
        image = mmcv.imread(path, channel_order='rgb')
        stem = osp.splitext(osp.basename(path))[0]
        for name, layer in layers.items():
            mask = crop_to_image(layer.last_mask[0].cpu().numpy(), result.img_shape,
                                 result.batch_input_shape)
            picture = draw_guided_mask(image, mask)
            mmcv.imwrite(mmcv.rgb2bgr(picture), osp.join(args.out_dir, f'{stem}_{name}.png'))
    print(f'Wrote {len(images) * len(layers)} pictures of {len(layers)} DRConv layers to '
          f'{args.out_dir}')


if __name__ == '__main__':
    main()
