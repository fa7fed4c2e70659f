"""Evaluate an exported detector (tools/deployment/pytorch2onnx.py) with ONNX Runtime.

Runs the config's test set through the ONNX file and mmdet's CocoMetric, as tools/test.py does
for the PyTorch model: the config's test pipeline resizes the images, ONNX Runtime does the rest
up to the detections, and mmdet's mask head pastes the masks into the original image. Example::

    python tools/deployment/test_onnx.py configs/demo/mask-rcnn_r18_drfpn-8r_toy-coco.py demo.onnx
"""
import argparse
import json
import os
import os.path as osp

import torch
from mmengine.evaluator import Evaluator
from mmengine.registry import init_default_scope
from mmengine.runner import Runner
from mmengine.structures import InstanceData

from drconv_mmdet.utils import add_cfg_options_argument, load_tool_config


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Evaluate an ONNX detector with ONNX Runtime')
    parser.add_argument('config', help='the config the model was exported from')
    parser.add_argument('model', help='the .onnx file')
    parser.add_argument('--threads',
                        type=int,
                        default=0,
                        help='ONNX Runtime intra-op threads (default 0: its own choice)')
    parser.add_argument('--work-dir', help='where the metrics are written')
    add_cfg_options_argument(parser)
    return parser.parse_args()


class OnnxDetector:
    """The ONNX file and what turns its outputs into mmdet's predictions of one image."""

    def __init__(self, path: str, cfg, threads: int) -> None:
        import onnxruntime as ort
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])
        self.outputs = [output.name for output in self.session.get_outputs()]
        if self.outputs[:3] != ['boxes', 'scores', 'labels']:
            raise ValueError(f'{path} is not a whole-detector export (outputs boxes, scores, '
                             f'labels[, masks]), its outputs are {self.outputs}')
        self.rcnn_cfg = cfg.model.test_cfg.rcnn
        self.mask_head = None
        if 'masks' in self.outputs:
            from mmdet.registry import MODELS
            self.mask_head = MODELS.build(cfg.model.roi_head.mask_head)

    def predict(self, image: torch.Tensor, meta: dict) -> InstanceData:
        """``image``: (3, H, W) as the test pipeline packs it; predictions in the original
        image, as mmdet's ``predict(..., rescale=True)`` gives them."""
        outputs = self.session.run(None, {'image': image.float()[None].numpy()})
        boxes, scores, labels = (torch.from_numpy(o) for o in outputs[:3])
        results = InstanceData(scores=scores, labels=labels)
        scale = boxes.new_tensor(meta['scale_factor']).repeat(2)
        if self.mask_head is None:
            results.bboxes = boxes / scale
            return results
        # The masks are already each detection's class channel: select channel 0 of each.
        # The mask head rescales the boxes in place, as in mmdet's own predict.
        results.masks = self.mask_head._predict_by_feat_single(mask_preds=outputs[3][:, None],
                                                               bboxes=boxes,
                                                               labels=torch.zeros_like(labels),
                                                               img_meta=meta,
                                                               rcnn_test_cfg=self.rcnn_cfg,
                                                               rescale=True,
                                                               activate_map=True)
        results.bboxes = boxes
        return results


def main() -> None:
    args = parse_args()
    if not osp.isfile(args.model):
        raise FileNotFoundError(f'ONNX file {args.model!r} does not exist')
    cfg = load_tool_config(args.config,
                           args.work_dir,
                           args.cfg_options,
                           'none',
                           loaders=('test_dataloader', ))
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    detector = OnnxDetector(args.model, cfg, args.threads)
    dataloader = Runner.build_dataloader(cfg.test_dataloader)
    evaluator = Evaluator(cfg.test_evaluator)
    evaluator.dataset_meta = dataloader.dataset.metainfo
    for data in dataloader:
        for image, sample in zip(data['inputs'], data['data_samples']):
            sample.pred_instances = detector.predict(image, sample.metainfo)
        evaluator.process(data_samples=data['data_samples'], data_batch=data)
    metrics = evaluator.evaluate(len(dataloader.dataset))
    for name, value in metrics.items():
        print(f'{name}: {value}')
    os.makedirs(cfg.work_dir, exist_ok=True)
    out = osp.join(cfg.work_dir, 'onnx_metrics.json')
    with open(out, 'w') as f:
        json.dump(metrics, f, indent=1)
    print(f'metrics written to {out}')


if __name__ == '__main__':
    main()
