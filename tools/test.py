"""Test (evaluate) a checkpoint with a config of drconv-mmdet (or any mmdet config).

Same arguments as mmdet's tools/test.py. Example::

    python tools/test.py configs/drconv/mask-rcnn_r50_drfpn-8r_180k_coco.py CKPT --out results.pkl
"""
import argparse
import os.path as osp

from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from drconv_mmdet.utils import add_runner_arguments, load_tool_config, shutdown_distributed


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Test (and evaluate) a detector')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--out',
                        type=str,
                        help='dump the predictions to a pickle file (.pkl) for offline eval')
    parser.add_argument('--show', action='store_true', help='show the predictions in a window')
    parser.add_argument('--show-dir',
                        help='save the painted images under this folder of the work dir')
    parser.add_argument('--wait-time',
                        type=float,
                        default=2,
                        help='seconds each image is shown with --show')
    add_runner_arguments(parser, 'the dir to save the evaluation metrics')
    return parser.parse_args()


def enable_visualization(cfg, show: bool, show_dir: str, wait_time: float) -> None:
    hooks = cfg.default_hooks
    if 'visualization' not in hooks:
        raise ValueError('--show and --show-dir need default_hooks.visualization '
                         '(DetVisualizationHook) in the config')
    hooks.visualization.update(draw=True, show=show, wait_time=wait_time)
    if show_dir:
        hooks.visualization.test_out_dir = show_dir


def main() -> None:
    args = parse_args()
    if not osp.isfile(args.checkpoint):
        raise FileNotFoundError(f'checkpoint {args.checkpoint!r} does not exist')
    if args.out is not None and not args.out.endswith(('.pkl', '.pickle')):
        raise ValueError(f'--out must be a .pkl or .pickle file, but got {args.out!r}')
    cfg = load_tool_config(args.config,
                           args.work_dir,
                           args.cfg_options,
                           args.launcher,
                           loaders=('test_dataloader', ))
    cfg.load_from = args.checkpoint
    if args.show or args.show_dir:
        enable_visualization(cfg, args.show, args.show_dir, args.wait_time)

    runner = Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)
    if args.out is not None:
        from mmdet.evaluation import DumpDetResults
        runner.test_evaluator.metrics.append(DumpDetResults(out_file_path=args.out))
    runner.test()
    shutdown_distributed()


if __name__ == '__main__':
    main()
