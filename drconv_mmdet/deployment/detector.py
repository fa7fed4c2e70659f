"""Export wrappers of mmdet detectors: backbone and neck, or a whole two-stage detector.

The wrappers run mmdet's own modules (data preprocessor settings, backbone, neck, RPN head, RoI
extractors' level mapping, bbox head, bbox coder, mask head) and replace only what does not
export: mmcv's NMS and RoI Align become :func:`~drconv_mmdet.deployment.exportable_ops.nms` and
:func:`~drconv_mmdet.deployment.exportable_ops.roi_align` (ONNX ``NonMaxSuppression`` and
``RoiAlign``), and the per-image Python logic of the heads' ``predict`` becomes tensor code with
dynamic sizes.

Both take the image as the test pipeline yields it, resized but neither normalised nor padded:
``(B, 3, H, W)`` float in the pipeline's channel order, 0-255. Normalisation and padding to the
preprocessor's size divisor happen in the graph, and boxes come out in the coordinates of that
input, clipped to ``H x W`` as mmdet clips them to ``img_shape``.
"""
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .exportable_ops import nms, roi_align

__all__ = ['FeatureExporter', 'TwoStageExporter', 'exporter_for', 'build_detector']


def _preprocess(detector: nn.Module, image: Tensor) -> Tensor:
    """What mmdet's ``DetDataPreprocessor`` does to a batch of same-size test images."""
    preprocessor = detector.data_preprocessor
    if getattr(preprocessor, '_channel_conversion', False):
        image = image[:, [2, 1, 0]]
    if getattr(preprocessor, '_enable_normalize', True):
        image = (image - preprocessor.mean) / preprocessor.std
    divisor = preprocessor.pad_size_divisor
    height, width = image.shape[2:]
    pad_bottom = (divisor - height % divisor) % divisor
    pad_right = (divisor - width % divisor) % divisor
    return F.pad(image, (0, pad_right, 0, pad_bottom), value=float(preprocessor.pad_value))


class FeatureExporter(nn.Module):
    """Image to the neck's feature maps (or the backbone's, without a neck).

    Input ``image``: (B, 3, H, W). Outputs: the feature maps, largest first.
    """

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, image: Tensor) -> Tuple[Tensor, ...]:
        return tuple(self.detector.extract_feat(_preprocess(self.detector, image)))


def _check_roi_layers(extractor: nn.Module) -> None:
    for layer in extractor.roi_layers:
        if (type(layer).__name__ != 'RoIAlign' or not layer.aligned or layer.pool_mode != 'avg'
                or getattr(layer, 'use_torchvision', False)):
            raise NotImplementedError(
                f'export supports mmcv RoIAlign layers with aligned=True and pool_mode="avg", '
                f'but the RoI extractor has {layer!r}')


def _check_nms(cfg, where: str) -> None:
    if cfg.get('type', 'nms') != 'nms':
        raise NotImplementedError(f'export supports plain NMS only, but {where} has {cfg!r}')


def _extract_rois(extractor: nn.Module, features: Sequence[Tensor], rois: Tensor) -> Tensor:
    """mmdet's ``SingleRoIExtractor`` for rois of one image, in the rois' order.

    Each level pools only its rois (mmdet's own level mapping), so the work is one RoI Align
    per roi as in mmdet, then one gather puts the results back in order.
    """
    levels = extractor.map_roi_levels(rois, len(extractor.featmap_strides))
    pooled, order = [], []
    for level, layer in enumerate(extractor.roi_layers):
        index = (levels == level).nonzero()[:, 0]
        pooled.append(
            roi_align(features[level], rois[index], layer.output_size, layer.spatial_scale,
                      layer.sampling_ratio))
        order.append(index)
    return torch.cat(pooled)[torch.cat(order).argsort()]


def _clip(boxes: Tensor, height, width) -> Tensor:
    """Clips ``(..., 4)`` boxes to the image, as mmdet's ``delta2bbox`` with ``max_shape``."""
    x = boxes[..., 0::2].clamp(min=0, max=width)
    y = boxes[..., 1::2].clamp(min=0, max=height)
    return torch.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], dim=-1)


def _batched_nms(boxes: Tensor, scores: Tensor, groups: Tensor, iou_threshold: float,
                 max_num: int) -> Tensor:
    """mmcv's ``batched_nms``: NMS within each group, by moving the groups' boxes apart; the
    indices kept, highest score first, at most ``max_num`` (all if ``max_num < 0``).

    mmcv loops over the groups when there are 10000 boxes or more; the offsets give the same
    boxes up to float rounding of the shifted coordinates.
    """
    # The boxes are clipped to >= 0, so a zero keeps the maximum of an empty set defined.
    max_coordinate = torch.cat([boxes.flatten(), boxes.new_zeros(1)]).max()
    offsets = groups.to(boxes.dtype) * (max_coordinate + 1)
    keep = nms(boxes + offsets[:, None], scores, iou_threshold)
    keep = keep[scores[keep].argsort(descending=True)]
    return keep if max_num < 0 else keep[:max_num]


class TwoStageExporter(nn.Module):
    """Image to detections of an mmdet two-stage detector (Faster / Mask R-CNN), one image.

    Input ``image``: (1, 3, H, W). Outputs: ``boxes`` (N, 4) as ``(x1, y1, x2, y2)`` in input
    pixels, ``scores`` (N,), ``labels`` (N,) int64, highest score first, N <= the test config's
    ``max_per_img``; with a mask head also ``masks`` (N, Hm, Wm), the probability map of each
    detection's class in its box (mmdet's mask head output before pasting).
    """

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        roi_head = detector.roi_head
        if roi_head.bbox_head.custom_cls_channels:
            raise NotImplementedError('export supports softmax classification heads only')
        _check_roi_layers(roi_head.bbox_roi_extractor)
        self.with_mask = getattr(roi_head, 'with_mask', False)
        if self.with_mask:
            _check_roi_layers(roi_head.mask_roi_extractor)
            if roi_head.mask_head.class_agnostic:
                raise NotImplementedError('export supports class-wise mask heads only')
        _check_nms(detector.test_cfg.rpn.nms, 'test_cfg.rpn.nms')
        _check_nms(detector.test_cfg.rcnn.nms, 'test_cfg.rcnn.nms')
        self.detector = detector
        self.output_names = ['boxes', 'scores', 'labels'] + (['masks'] if self.with_mask else [])

    def forward(self, image: Tensor) -> Tuple[Tensor, ...]:
        height, width = image.shape[2:]
        features = self.detector.extract_feat(_preprocess(self.detector, image))
        proposals = self._proposals(features, height, width)
        boxes, scores, labels = self._detections(features, proposals, height, width)
        if not self.with_mask:
            return boxes, scores, labels
        return boxes, scores, labels, self._masks(features, boxes, labels)

    def _proposals(self, features: List[Tensor], height, width) -> Tensor:
        """mmdet's ``RPNHead.predict_by_feat`` for one image: (K, 4) proposals."""
        rpn_head = self.detector.rpn_head
        cfg = self.detector.test_cfg.rpn
        cls_scores, bbox_preds = rpn_head(features)
        priors = rpn_head.prior_generator.grid_priors([s.shape[-2:] for s in cls_scores],
                                                      dtype=cls_scores[0].dtype,
                                                      device=cls_scores[0].device)
        level_boxes, level_scores, level_ids = [], [], []
        for level, (cls_score, bbox_pred, anchors) in enumerate(zip(cls_scores, bbox_preds,
                                                                    priors)):
            scores = cls_score[0].permute(1, 2, 0).reshape(-1, rpn_head.cls_out_channels)
            scores = scores.sigmoid() if rpn_head.use_sigmoid_cls else scores.softmax(-1)[:, :-1]
            scores = scores.reshape(-1)
            deltas = bbox_pred[0].permute(1, 2, 0).reshape(-1, rpn_head.bbox_coder.encode_size)
            # The nms_pre best (slicing past the end keeps all, as mmdet does then).
            scores, index = scores.sort(descending=True)
            if cfg.get('nms_pre', -1) > 0:
                scores, index = scores[:cfg.nms_pre], index[:cfg.nms_pre]
            level_boxes.append(rpn_head.bbox_coder.decode(anchors[index], deltas[index]))
            level_scores.append(scores)
            level_ids.append(torch.full_like(index, level))
        boxes = _clip(torch.cat(level_boxes), height, width)
        scores, level_ids = torch.cat(level_scores), torch.cat(level_ids)
        if cfg.get('min_bbox_size', -1) >= 0:
            size = cfg.min_bbox_size
            valid = ((boxes[:, 2] - boxes[:, 0] > size) &
                     (boxes[:, 3] - boxes[:, 1] > size)).nonzero()[:, 0]
            boxes, scores, level_ids = boxes[valid], scores[valid], level_ids[valid]
        keep = _batched_nms(boxes, scores, level_ids, cfg.nms.iou_threshold, cfg.max_per_img)
        return boxes[keep]

    def _detections(self, features: List[Tensor], proposals: Tensor, height,
                    width) -> Tuple[Tensor, Tensor, Tensor]:
        """mmdet's ``StandardRoIHead.predict_bbox`` (with ``multiclass_nms``) for one image."""
        roi_head = self.detector.roi_head
        bbox_head = roi_head.bbox_head
        cfg = self.detector.test_cfg.rcnn
        rois = torch.cat([proposals.new_zeros((proposals.shape[0], 1)), proposals], dim=1)
        extractor = roi_head.bbox_roi_extractor
        roi_features = _extract_rois(extractor, features[:extractor.num_inputs], rois)
        cls_score, bbox_pred = bbox_head(roi_features)
        scores = F.softmax(cls_score, dim=-1)[:, :-1]
        num_classes = scores.shape[1]
        regressed = 1 if bbox_head.reg_class_agnostic else num_classes
        deltas = bbox_pred.reshape(-1, bbox_head.bbox_coder.encode_size)
        boxes = bbox_head.bbox_coder.decode(proposals.repeat_interleave(regressed, dim=0), deltas)
        boxes = _clip(boxes, height, width).reshape(-1, regressed, 4)
        boxes = boxes.expand(-1, num_classes, -1).reshape(-1, 4)
        labels = torch.arange(num_classes, device=scores.device).expand_as(scores).reshape(-1)
        scores = scores.reshape(-1)
        valid = (scores > cfg.score_thr).nonzero()[:, 0]
        boxes, scores, labels = boxes[valid], scores[valid], labels[valid]
        groups = torch.zeros_like(labels) if cfg.nms.get('class_agnostic', False) else labels
        keep = _batched_nms(boxes, scores, groups, cfg.nms.iou_threshold, cfg.max_per_img)
        return boxes[keep], scores[keep], labels[keep]

    def _masks(self, features: List[Tensor], boxes: Tensor, labels: Tensor) -> Tensor:
        """mmdet's mask head on the detections: each one's class channel, after the sigmoid."""
        roi_head = self.detector.roi_head
        rois = torch.cat([boxes.new_zeros((boxes.shape[0], 1)), boxes], dim=1)
        extractor = roi_head.mask_roi_extractor
        mask_logits = roi_head.mask_head(
            _extract_rois(extractor, features[:extractor.num_inputs], rois))
        index = labels.view(-1, 1, 1, 1).expand(-1, 1, *mask_logits.shape[2:])
        return mask_logits.gather(1, index).squeeze(1).sigmoid()


def exporter_for(detector: nn.Module, features_only: bool) -> Tuple[nn.Module, List[str], dict]:
    """The wrapper to export, its output names and its dynamic axes (input ``image``)."""
    if features_only:
        wrapper = FeatureExporter(detector).eval()
        with torch.no_grad():
            num_outputs = len(wrapper(torch.zeros(1, 3, 64, 64)))
        names = [f'feature{i}' for i in range(num_outputs)]
        axes = {'image': {0: 'batch', 2: 'height', 3: 'width'}}
        axes.update({name: {0: 'batch', 2: f'{name}_height', 3: f'{name}_width'} for name in names})
        return wrapper, names, axes
    if not all(hasattr(detector, name) for name in ('rpn_head', 'roi_head')):
        raise NotImplementedError(f'whole-detector export supports two-stage detectors (an RPN '
                                  f'and a RoI head), but got {type(detector).__name__}; use '
                                  f'--features-only')
    wrapper = TwoStageExporter(detector).eval()
    axes = {'image': {2: 'height', 3: 'width'}}
    axes.update({name: {0: 'detections'} for name in wrapper.output_names})
    return wrapper, wrapper.output_names, axes


def build_detector(config: str, checkpoint: str = None, cfg_options: dict = None) -> nn.Module:
    """An mmdet detector from a config, in eval mode on CPU, SyncBN turned into BN, with the
    checkpoint's weights (else its initial weights, without loading any pretrained file)."""
    from mmengine.config import Config
    from mmengine.model import revert_sync_batchnorm
    from mmengine.registry import init_default_scope
    from mmengine.runner import load_checkpoint

    from drconv_mmdet.utils import allow_mmengine_checkpoints
    cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    from mmdet.registry import MODELS
    detector = MODELS.build(cfg.model)
    if checkpoint is not None:
        allow_mmengine_checkpoints()
        load_checkpoint(detector, checkpoint, map_location='cpu')
    detector.cfg = cfg
    return revert_sync_batchnorm(detector).eval()
