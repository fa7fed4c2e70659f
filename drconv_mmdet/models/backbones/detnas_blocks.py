"""Searched ShuffleNetV2 block of DetNAS, optionally with DRConv 1x1 convolutions.

DetNAS: `Backbone Search for Object Detection <https://arxiv.org/abs/1903.10979>`_. Every layer is
registered under the name it has in the official code, so official checkpoints load unchanged.
"""
from typing import Optional, Tuple

import torch
import torch.nn as nn
from mmcv.cnn import build_conv_layer, build_norm_layer
from mmdet.utils import ConfigType, OptConfigType, OptMultiConfig
from mmengine.model import BaseModule, ModuleList
from torch import Tensor

from drconv_mmdet.nn import sample_guide

# The index of an op in this tuple is how the official architecture lists encode it.
BLOCK_OPS = ('shufflenet_3x3', 'shufflenet_5x5', 'shufflenet_7x7', 'xception_3x3')


def split_even_odd(x: Tensor) -> Tuple[Tensor, Tensor]:
    """Split a feature map into its even-indexed and odd-indexed channels.

    This is the split of the released DetNAS models (``channel_shuffle2``); the supernet's
    first-half/second-half split loads the same weights but computes different features.

    Args:
        x (Tensor): Feature map of shape (B, C, H, W) with an even C.

    Returns:
        tuple[Tensor, Tensor]: Channels 0, 2, 4, ... and channels 1, 3, 5, ..., each of shape
        (B, C / 2, H, W).
    """
    if x.dim() != 4 or x.size(1) % 2 != 0:
        raise ValueError('split_even_odd expects x of shape (B, C, H, W) with an even C, '
                         f'got shape {tuple(x.shape)}')
    return x[:, 0::2], x[:, 1::2]


class SpatialPointwiseUnit(BaseModule):
    """Optional depthwise conv + BN, then a 1x1 conv + BN and an optional ReLU.

    The layers are named as in the official ``create_spatial_conv2d_group_bn_relu``: for
    ``name='1a_proj'`` they are ``interstellar1a_proj_s``, ``interstellar1a_proj_s_bn``,
    ``interstellar1a_proj`` and ``bn1a_proj``.

    Args:
        name (str): Layer name in official checkpoints, e.g. ``'1a_shufflenet_7x7_branch2a'``.
        in_channels (int): Number of input channels.
        out_channels (int): Number of output channels of the 1x1 conv.
        kernel_size (int, optional): Kernel size of the depthwise conv; None for a unit without
            one. Defaults to None.
        stride (int): Stride of the depthwise conv. Defaults to 1.
        with_relu (bool): Whether a ReLU ends the unit. Defaults to True.
        norm_cfg (ConfigType): Config of the norm layers. Defaults to ``dict(type='BN')``.
        drconv_cfg (OptConfigType): Config of the DRConv that replaces the 1x1 conv, built with
            ``build_conv_layer``; None keeps a plain conv. Defaults to None.
        init_cfg (OptMultiConfig): Initialization config. Defaults to None.
    """

    def __init__(self,
                 name: str,
                 in_channels: int,
                 out_channels: int,
                 kernel_size: Optional[int] = None,
                 stride: int = 1,
                 with_relu: bool = True,
                 norm_cfg: ConfigType = dict(type='BN'),
                 drconv_cfg: OptConfigType = None,
                 init_cfg: OptMultiConfig = None) -> None:
        super().__init__(init_cfg=init_cfg)
        if kernel_size is None and stride != 1:
            raise ValueError(f'stride must be 1 when kernel_size is None (no depthwise conv '
                             f'to carry it), got stride={stride}')
        self.with_drconv = drconv_cfg is not None
        self.depthwise_name = None
        if kernel_size is not None:
            self.depthwise_name = f'interstellar{name}_s'
            self.add_module(
                self.depthwise_name,
                build_conv_layer(None,
                                 in_channels,
                                 in_channels,
                                 kernel_size,
                                 stride=stride,
                                 padding=kernel_size // 2,
                                 groups=in_channels,
                                 bias=False))
            self.add_module(f'{self.depthwise_name}_bn', build_norm_layer(norm_cfg, in_channels)[1])
        self.pointwise_name = f'interstellar{name}'
        self.add_module(self.pointwise_name,
                        build_conv_layer(drconv_cfg, in_channels, out_channels, 1, bias=False))
        self.norm_name = f'bn{name}'
        self.add_module(self.norm_name, build_norm_layer(norm_cfg, out_channels)[1])
        self.activation = nn.ReLU(inplace=True) if with_relu else nn.Identity()

    @property
    def depthwise(self) -> Optional[nn.Module]:
        """nn.Module | None: The depthwise conv, if the unit has one."""
        return None if self.depthwise_name is None else getattr(self, self.depthwise_name)

    @property
    def depthwise_norm(self) -> Optional[nn.Module]:
        """nn.Module | None: The norm layer after the depthwise conv, if the unit has one."""
        return None if self.depthwise_name is None else getattr(self, f'{self.depthwise_name}_bn')

    @property
    def pointwise(self) -> nn.Module:
        """nn.Module: The 1x1 conv, plain or DRConv."""
        return getattr(self, self.pointwise_name)

    @property
    def norm(self) -> nn.Module:
        """nn.Module: The norm layer after the 1x1 conv."""
        return getattr(self, self.norm_name)

    def pointwise_guide(self, guide: Optional[Tensor]) -> Optional[Tensor]:
        """The guide at the 1x1 conv's resolution, from the guide at the unit's input.

        Each output pixel of the depthwise conv takes the guide at the centre of its window, so
        the 1x1 conv sees the region map where the stride samples its input.

        Args:
            guide (Tensor, optional): Guide logits of shape (B, region_num, H, W).

        Returns:
            Tensor | None: Guide logits of shape (B, region_num, H / stride, W / stride), or
            None for no guide.
        """
        depthwise = self.depthwise
        if guide is None or depthwise is None:
            return guide
        return sample_guide(guide, depthwise.kernel_size, depthwise.stride, depthwise.padding,
                            depthwise.dilation)

    def forward(self, x: Tensor, guide: Optional[Tensor] = None) -> Tensor:
        """Forward function.

        Args:
            x (Tensor): Input of shape (B, C_in, H, W).
            guide (Tensor, optional): Guide logits of shape (B, region_num, H, W), at the unit's
                input resolution, for a DRConv built without its own guide conv; ignored by a
                plain 1x1 conv. Defaults to None.

        Returns:
            Tensor: Output of shape (B, C_out, H / stride, W / stride).
        """
        if self.depthwise_name is not None:
            x = self.depthwise_norm(self.depthwise(x))
        if self.with_drconv:
            x = self.pointwise(x, self.pointwise_guide(guide))
        else:
            x = self.pointwise(x)
        return self.activation(self.norm(x))


class DetNASBlock(BaseModule):
    """Searched ShuffleNetV2 block of DetNAS.

    With stride 1 the even input channels pass through unchanged and the odd ones go through the
    searched branch. With stride 2 both a projection branch (depthwise kxk with stride 2 and a
    1x1 conv) and the searched branch see the whole input. The output is
    ``cat([identity or projection, searched branch])``. The searched branch is

    - ``shufflenet_kxk``: 1x1 + BN + ReLU, then depthwise kxk (carrying the stride) + BN, 1x1 + BN;
    - ``xception_3x3``: three times depthwise 3x3 + BN, 1x1 + BN, the first depthwise conv
      carrying the stride and the last unit without ReLU;

    and a ReLU follows it. Its 1x1 convs ``branch2a``, ``branch2b`` (and ``branch2c``) are the
    ones DRConv replaces.

    Args:
        prefix (str): Block name in official checkpoints: stage number and letter, e.g. ``'1a'``.
        op (str): Searched op, one of :data:`BLOCK_OPS`.
        in_channels (int): Number of input channels.
        out_channels (int): Number of output channels.
        stride (int): 1 or 2.
        norm_cfg (ConfigType): Config of the norm layers. Defaults to ``dict(type='BN')``.
        drconv_cfg (OptConfigType): Config of the DRConv that replaces the searched branch's 1x1
            convs; None keeps plain convs. Defaults to None.
        drconv_proj (bool): Whether DRConv also replaces the 1x1 conv of the projection branch
            (stride-2 blocks only). Defaults to False.
        shared_guide (bool): Whether the block's DRConvs share one guide: a bias-free 1x1 conv
            from the searched branch's input to ``region_num`` logits, as in the official
            DRConv ShuffleNetV2. False gives every DRConv its own guide conv. Defaults to False.
        init_cfg (OptMultiConfig): Initialization config. Defaults to None.
    """

    def __init__(self,
                 prefix: str,
                 op: str,
                 in_channels: int,
                 out_channels: int,
                 stride: int,
                 norm_cfg: ConfigType = dict(type='BN'),
                 drconv_cfg: OptConfigType = None,
                 drconv_proj: bool = False,
                 shared_guide: bool = False,
                 init_cfg: OptMultiConfig = None) -> None:
        super().__init__(init_cfg=init_cfg)
        if op not in BLOCK_OPS:
            raise ValueError(f'op must be one of {BLOCK_OPS}, got {op!r}')
        if stride not in (1, 2):
            raise ValueError(f'stride must be 1 or 2, got {stride}')
        if stride == 1 and (in_channels != out_channels or in_channels % 2 != 0):
            raise ValueError('a stride-1 block needs in_channels == out_channels and an even '
                             f'count, got in_channels={in_channels}, out_channels={out_channels}')
        if stride == 2 and out_channels <= in_channels:
            raise ValueError('a stride-2 block needs out_channels > in_channels, got '
                             f'in_channels={in_channels}, out_channels={out_channels}')
        if drconv_cfg is None and (drconv_proj or shared_guide):
            raise ValueError('drconv_proj and shared_guide need a drconv_cfg, got drconv_cfg=None, '
                             f'drconv_proj={drconv_proj}, shared_guide={shared_guide}')
        if shared_guide and 'with_guide_conv' in drconv_cfg:
            raise ValueError('shared_guide decides whether the DRConvs own guide convs; expected '
                             'no with_guide_conv in drconv_cfg, got '
                             f'with_guide_conv={drconv_cfg["with_guide_conv"]}')
        self.stride = stride
        if shared_guide:
            drconv_cfg = dict(drconv_cfg, with_guide_conv=False)

        kernel_size = int(op.rsplit('x', 1)[1])
        main_in = in_channels if stride == 2 else in_channels // 2
        main_out = out_channels - in_channels if stride == 2 else out_channels // 2
        mid = out_channels // 2
        name = f'{prefix}_{op}'
        # (branch, in, out, depthwise kernel, stride, ReLU), in the official layer order
        if op == 'xception_3x3':
            units = [
                ('branch2a', main_in, mid, 3, stride, True),
                ('branch2b', mid, mid, 3, 1, True),
                ('branch2c', mid, main_out, 3, 1, False),
            ]
        else:
            units = [
                ('branch2a', main_in, mid, None, 1, True),
                ('branch2b', mid, main_out, kernel_size, stride, False),
            ]
        self.conv = ModuleList([
            SpatialPointwiseUnit(f'{name}_{branch}', c_in, c_out, k, s, relu, norm_cfg, drconv_cfg)
            for branch, c_in, c_out, k, s, relu in units
        ])
        if stride == 2:
            self.proj_conv = SpatialPointwiseUnit(f'{prefix}_proj', in_channels, in_channels,
                                                  kernel_size, stride, True, norm_cfg,
                                                  drconv_cfg if drconv_proj else None)
        self.guide_conv = None
        if shared_guide:
            self.guide_conv = build_conv_layer(None,
                                               main_in,
                                               self.conv[0].pointwise.region_num,
                                               1,
                                               bias=False)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        """Forward function.

        Args:
            x (Tensor): Input of shape (B, C_in, H, W).

        Returns:
            Tensor: Output of shape (B, C_out, H / stride, W / stride).
        """
        if self.stride == 1:
            shortcut, x = split_even_odd(x)
        guide = None if self.guide_conv is None else self.guide_conv(x)
        if self.stride == 2:
            shortcut = self.proj_conv(x, guide)
        for unit in self.conv:
            x = unit(x, guide)
            guide = unit.pointwise_guide(guide)
        return torch.cat((shortcut, self.relu(x)), dim=1)
