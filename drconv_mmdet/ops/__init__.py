from .dr_conv2d import DRConv2dFunction, conv_output_size, dr_conv2d, dr_conv2d_reference

__all__ = ['dr_conv2d', 'dr_conv2d_reference', 'DRConv2dFunction', 'conv_output_size']
