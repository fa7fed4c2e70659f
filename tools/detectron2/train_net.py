"""Train or evaluate a detectron2 model with DRConvs (configs/detectron2/), as detectron2's own
tools/train_net.py does: same arguments (``--config-file``, ``--eval-only``, ``--resume``,
``--num-gpus``, ``KEY VALUE`` overrides), DefaultTrainer, COCOEvaluator.

On top of detectron2's script: the ``MODEL.DRCONV`` keys and the ``build_resnet_drfpn_backbone``
backbone, checkpoints loaded with ``DRConvCheckpointer`` (a plain detectron2 checkpoint starts
every DRConv as the conv at its place), and the toy COCO set, registered as ``toy_coco_train`` and
``toy_coco_val`` and generated (as ``make data`` does) when a config uses it and it is missing.
Examples::

    CONFIG=configs/detectron2/mask_rcnn_R_18_DRFPN_8R_toy.yaml
    python tools/detectron2/train_net.py --config-file $CONFIG
    python tools/detectron2/train_net.py --config-file $CONFIG --eval-only \\
        MODEL.WEIGHTS work_dirs/detectron2/mask_rcnn_R_18_DRFPN_8R_toy/model_final.pth
"""
import argparse
import os
import sys
import weakref
from typing import Any, Optional, Sequence

import detectron2.utils.comm as comm
from detectron2.config import CfgNode, get_cfg
from detectron2.engine import DefaultTrainer, default_argument_parser, default_setup, hooks, launch
from detectron2.evaluation import COCOEvaluator, verify_results

try:
    from drconv_mmdet.datasets import ensure_toy_coco
    from drconv_mmdet.datasets.toy_coco import MANIFEST_NAME
    from drconv_mmdet.detectron2 import DRConvCheckpointer, add_drconv_config, register_toy_coco
    from drconv_mmdet.detectron2.datasets import TOY_COCO_SPLITS
except ImportError as e:
    sys.exit(f'drconv_mmdet cannot be imported ({e}); install it with `make setup-core` or '
             '`pip install -e .` from the repository root.')


class Trainer(DefaultTrainer):
    """detectron2's DefaultTrainer with the DRConv checkpointer and a COCO evaluator."""

    def __init__(self, cfg: CfgNode) -> None:
        super().__init__(cfg)
        self.checkpointer = DRConvCheckpointer(self._trainer.model,
                                               cfg.OUTPUT_DIR,
                                               trainer=weakref.proxy(self))
        # The periodic checkpointing hook was built with detectron2's checkpointer.
        for hook in self._hooks:
            if isinstance(hook, hooks.PeriodicCheckpointer):
                hook.checkpointer = self.checkpointer

    @classmethod
    def build_evaluator(cls,
                        cfg: CfgNode,
                        dataset_name: str,
                        output_folder: Optional[str] = None) -> COCOEvaluator:
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, 'inference')
        return COCOEvaluator(dataset_name, output_dir=output_folder)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """detectron2's arguments and the toy set's folder."""
    parser = default_argument_parser()
    parser.add_argument('--toy-coco-root',
                        default='data/toy_coco',
                        help='folder of the toy COCO set (toy_coco_train, toy_coco_val)')
    return parser.parse_args(argv)


def setup(args: argparse.Namespace) -> CfgNode:
    """The config with the DRConv keys, the file and the overrides; detectron2's default setup."""
    cfg = get_cfg()
    add_drconv_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    register_toy_coco(args.toy_coco_root)
    datasets = (*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST)
    uses_toy_coco = any(name in TOY_COCO_SPLITS for name in datasets)
    # A set made with other arguments (tools/misc/make_toy_coco.py --num-train ...) is kept. One
    # process writes the set; the others wait for it.
    if uses_toy_coco and not os.path.isfile(os.path.join(args.toy_coco_root, MANIFEST_NAME)):
        if comm.is_main_process():
            ensure_toy_coco(args.toy_coco_root)
        comm.synchronize()
    return cfg


def main(args: argparse.Namespace) -> Any:
    """Evaluate (``--eval-only``) or train, as detectron2's train_net.py does."""
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        checkpointer = DRConvCheckpointer(model, save_dir=cfg.OUTPUT_DIR)
        checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        results = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, results)
        return results
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == '__main__':
    args = parse_args()
    print('Command Line Args:', args)
    launch(main,
           args.num_gpus,
           num_machines=args.num_machines,
           machine_rank=args.machine_rank,
           dist_url=args.dist_url,
           args=(args, ))
