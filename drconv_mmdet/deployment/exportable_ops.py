"""NMS and RoI Align as torch ops that export as ONNX ``NonMaxSuppression`` and ``RoiAlign``.

Each is a ``torch.library`` op of the ``drconv_mmdet`` namespace that runs mmcv's kernel in
PyTorch, with a symbolic for the TorchScript exporter and an onnxscript translation for the
dynamo exporter, both emitting the standard ONNX op. NMS returns as many indices as it keeps, a
size known only at run time (an unbacked size under ``torch.export``).
"""
from typing import Callable, Dict

import torch
from torch import Tensor

__all__ = ['nms', 'roi_align', 'custom_translation_table', 'register_torchscript_symbolics']

_LIB = torch.library.Library('drconv_mmdet', 'DEF')
_LIB.define('nms(Tensor boxes, Tensor scores, float iou_threshold) -> Tensor')
_LIB.define('roi_align(Tensor input, Tensor rois, int output_height, int output_width, '
            'float spatial_scale, int sampling_ratio) -> Tensor')
# ONNX NonMaxSuppression keeps at most this many boxes per class: no limit in practice.
_MAX_OUTPUT_BOXES = 1 << 31


def _nms_kernel(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    from mmcv.ops import nms as mmcv_nms
    return mmcv_nms(boxes, scores, iou_threshold)[1]


def _roi_align_kernel(input: Tensor, rois: Tensor, output_height: int, output_width: int,
                      spatial_scale: float, sampling_ratio: int) -> Tensor:
    from mmcv.ops import roi_align as mmcv_roi_align
    return mmcv_roi_align(input, rois, (output_height, output_width), spatial_scale, sampling_ratio,
                          'avg', True)


_LIB.impl('nms', _nms_kernel, 'CompositeExplicitAutograd')
_LIB.impl('roi_align', _roi_align_kernel, 'CompositeExplicitAutograd')

if hasattr(torch.library, 'register_fake'):  # torch >= 2.4; the dynamo exporter needs 2.5

    @torch.library.register_fake('drconv_mmdet::nms')
    def _nms_fake(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
        kept = torch.library.get_ctx().new_dynamic_size()
        return boxes.new_empty((kept, ), dtype=torch.long)

    @torch.library.register_fake('drconv_mmdet::roi_align')
    def _roi_align_fake(input: Tensor, rois: Tensor, output_height: int, output_width: int,
                        spatial_scale: float, sampling_ratio: int) -> Tensor:
        return input.new_empty((rois.shape[0], input.shape[1], output_height, output_width))


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS: indices of the kept boxes, highest score first.

    Args:
        boxes (Tensor[N, 4]): ``(x1, y1, x2, y2)`` boxes.
        scores (Tensor[N]): their scores.
        iou_threshold (float): a box is dropped when its IoU with a kept box exceeds this.

    Returns:
        Tensor[K]: int64 indices of the kept boxes.
    """
    return torch.ops.drconv_mmdet.nms(boxes, scores, float(iou_threshold))


def roi_align(input: Tensor, rois: Tensor, output_size: tuple, spatial_scale: float,
              sampling_ratio: int) -> Tensor:
    """RoI Align with pixel-centre alignment (mmcv's ``aligned=True``), average pooling.

    Args:
        input (Tensor[B, C, H, W]): feature map.
        rois (Tensor[K, 5]): ``(batch index, x1, y1, x2, y2)`` in input image coordinates.
        output_size (Tuple[int, int]): ``(height, width)`` of each pooled RoI.
        spatial_scale (float): feature map size over image size.
        sampling_ratio (int): samples per bin side; 0 picks ``ceil(roi size / output size)``.

    Returns:
        Tensor[K, C, output_height, output_width]: the pooled features.
    """
    return torch.ops.drconv_mmdet.roi_align(input, rois, int(output_size[0]), int(output_size[1]),
                                            float(spatial_scale), int(sampling_ratio))


def custom_translation_table() -> Dict[Callable, Callable]:
    """The ops' ONNX translations for ``torch.onnx.export(..., dynamo=True)``."""
    from onnxscript import opset18 as op

    def nms_onnx(boxes, scores, iou_threshold: float):
        selected = op.NonMaxSuppression(op.Unsqueeze(boxes, [0]), op.Unsqueeze(scores, [0, 1]),
                                        op.Constant(value_int=_MAX_OUTPUT_BOXES),
                                        op.Constant(value_float=iou_threshold))
        # (K, 3) rows of (batch, class, box): the box index.
        return op.Squeeze(op.Slice(selected, [2], [3], [1]), [1])

    def roi_align_onnx(input, rois, output_height: int, output_width: int, spatial_scale: float,
                       sampling_ratio: int):
        batch_index = op.Cast(op.Squeeze(op.Slice(rois, [0], [1], [1]), [1]), to=7)  # int64
        return op.RoiAlign(input,
                           op.Slice(rois, [1], [5], [1]),
                           batch_index,
                           coordinate_transformation_mode='half_pixel',
                           mode='avg',
                           output_height=output_height,
                           output_width=output_width,
                           sampling_ratio=sampling_ratio,
                           spatial_scale=spatial_scale)

    return {
        torch.ops.drconv_mmdet.nms.default: nms_onnx,
        torch.ops.drconv_mmdet.roi_align.default: roi_align_onnx,
    }


def register_torchscript_symbolics(opset_version: int) -> None:
    """Registers the ops' symbolics with ``torch.onnx.export(..., dynamo=False)``."""
    from torch.onnx import symbolic_helper

    @symbolic_helper.parse_args('v', 'v', 'f')
    def nms_symbolic(g, boxes, scores, iou_threshold):
        selected = g.op('NonMaxSuppression',
                        g.op('Unsqueeze', boxes, g.op('Constant', value_t=torch.tensor([0]))),
                        g.op('Unsqueeze', scores, g.op('Constant', value_t=torch.tensor([0, 1]))),
                        g.op('Constant', value_t=torch.tensor(_MAX_OUTPUT_BOXES)),
                        g.op('Constant', value_t=torch.tensor(iou_threshold, dtype=torch.float)))
        box_index = g.op('Gather', selected, g.op('Constant', value_t=torch.tensor(2)), axis_i=1)
        return box_index

    @symbolic_helper.parse_args('v', 'v', 'i', 'i', 'f', 'i')
    def roi_align_symbolic(g, input, rois, output_height, output_width, spatial_scale,
                           sampling_ratio):
        batch_index = g.op('Cast',
                           g.op('Gather', rois, g.op('Constant', value_t=torch.tensor(0)),
                                axis_i=1),
                           to_i=7)  # int64
        boxes = g.op('Gather', rois, g.op('Constant', value_t=torch.tensor([1, 2, 3, 4])), axis_i=1)
        return g.op('RoiAlign',
                    input,
                    boxes,
                    batch_index,
                    coordinate_transformation_mode_s='half_pixel',
                    mode_s='avg',
                    output_height_i=output_height,
                    output_width_i=output_width,
                    sampling_ratio_i=sampling_ratio,
                    spatial_scale_f=spatial_scale)

    torch.onnx.register_custom_op_symbolic('drconv_mmdet::nms', nms_symbolic, opset_version)
    torch.onnx.register_custom_op_symbolic('drconv_mmdet::roi_align', roi_align_symbolic,
                                           opset_version)
