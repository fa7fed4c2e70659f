from .dr_conv2d import (JIT_NODE_KIND, DRConv2dFunction, conv_output_size, dr_conv2d,
                        dr_conv2d_reference)
from .implementations import IMPLEMENTATIONS, use_kernels

__all__ = [
    'dr_conv2d', 'dr_conv2d_reference', 'DRConv2dFunction', 'conv_output_size', 'JIT_NODE_KIND',
    'IMPLEMENTATIONS', 'use_kernels'
]
