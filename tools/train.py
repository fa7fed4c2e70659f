"""Train a detector with a config of drconv-mmdet (or any mmdet config).

Same arguments as mmdet's tools/train.py. Examples::

    python tools/train.py configs/drconv/mask-rcnn_r50_drfpn-8r_180k_coco.py
    bash tools/dist_train.sh configs/drconv/mask-rcnn_r50_drfpn-8r_180k_coco.py 8
"""
import argparse
import os

from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from drconv_mmdet.utils import add_runner_arguments, load_tool_config, shutdown_distributed


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Train a detector')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--amp',
                        action='store_true',
                        default=False,
                        help='enable automatic-mixed-precision training')
    parser.add_argument(
        '--auto-scale-lr',
        action='store_true',
        help='scale the learning rate by (GPUs x images per GPU) / auto_scale_lr.base_batch_size')
    parser.add_argument(
        '--resume',
        nargs='?',
        type=str,
        const='auto',
        help='resume from the given checkpoint, or from the latest one in the work dir when no '
        'path is given')
    add_runner_arguments(parser, 'the dir to save logs and models')
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    cfg = load_tool_config(args.config, args.work_dir, args.cfg_options, args.launcher)

    if args.amp:
        if cfg.optim_wrapper.get('type', 'OptimWrapper') == 'AmpOptimWrapper':
            print('AMP is already enabled in the config.')
        else:
            cfg.optim_wrapper.type = 'AmpOptimWrapper'
            cfg.optim_wrapper.loss_scale = 'dynamic'
    if args.auto_scale_lr:
        if 'base_batch_size' not in cfg.get('auto_scale_lr', {}):
            raise ValueError('--auto-scale-lr needs auto_scale_lr.base_batch_size in the config, '
                             f'but {args.config} has auto_scale_lr={cfg.get("auto_scale_lr")}')
        cfg.auto_scale_lr.enable = True
    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        if not os.path.isfile(args.resume):
            raise FileNotFoundError(f'--resume checkpoint {args.resume!r} does not exist')
        cfg.resume = True
        cfg.load_from = args.resume

    runner = Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)
    runner.train()
    shutdown_distributed()


if __name__ == '__main__':
    main()
