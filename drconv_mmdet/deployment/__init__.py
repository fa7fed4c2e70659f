"""ONNX export of DRConv models: exporter front end, NMS and RoI Align ops with standard ONNX
forms, and the detector wrappers (:mod:`drconv_mmdet.deployment.detector`, needs mmdet)."""
from .onnx_export import EXPORTERS, check_standard_ops, default_exporter, export_onnx, onnx_op_types

__all__ = ['EXPORTERS', 'default_exporter', 'export_onnx', 'onnx_op_types', 'check_standard_ops']
