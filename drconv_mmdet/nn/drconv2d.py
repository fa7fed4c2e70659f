"""DRConv2d: the Dynamic Region-Aware Convolution layer (arXiv 2003.12243)."""
import math
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from drconv_mmdet.ops import conv_output_size, dr_conv2d
from drconv_mmdet.ops.dr_conv2d import as_pair
from .filter_generators import BasisFilterGenerator, PaperFilterGenerator

__all__ = ['DRConv2d']

GENERATORS = ('paper', 'basis')


class DRConv2d(nn.Module):
    """Dynamic Region-Aware Convolution.

    A ``k x k`` conv produces the guided feature (``region_num`` channels, Eq. 4); its argmax over
    channels splits the output into regions. A filter generator predicts one filter per sample
    and region, and every output pixel is convolved with its region's filter only (see
    :func:`drconv_mmdet.ops.dr_conv2d`), so the layer costs one convolution plus the guide and
    the generator.

    Takes the arguments of ``nn.Conv2d`` so that ``build_conv_layer`` and ``ConvModule`` build it
    from ``conv_cfg=dict(type='DRConv', region_num=8)``, and exposes the attributes they read.

    Args:
        in_channels (int): input channels C.
        out_channels (int): output channels O.
        kernel_size (int or Tuple[int, int]): filter size (kh, kw).
        stride (int or Tuple[int, int]): Default: 1.
        padding (int or Tuple[int, int]): zero padding. Default: 0.
        dilation (int or Tuple[int, int]): Default: 1.
        groups (int): only 1 is supported. Default: 1.
        bias (bool): add a learned bias, shared by the regions. Default: True.
        region_num (int): number of regions m. Default: 8.
        generator (str): ``'paper'``, the paper's two-layer generator (Fig. 2b), or ``'basis'``,
            the official code's mixture of ``num_bases`` shared kernels. Default: ``'paper'``.
        hidden_channels (int, optional): hidden width of the ``'paper'`` generator, a multiple of
            ``region_num``. Default: ``region_num ** 2``, as the public implementations use.
        num_bases (int): number of shared kernels of the ``'basis'`` generator. Default: 8.
        with_guide_conv (bool): own the guide conv. ``False`` for layers that share a guide
            computed outside (official ShuffleNet blocks); ``forward`` then needs ``guide``.
            Default: True.
        record_mask (bool): keep the last guided mask in ``last_mask`` (B, Ho, Wo), for pictures.
            Default: False.
    """

    transposed = False

    def __init__(self,
                 in_channels: int,
                 out_channels: int,
                 kernel_size: Union[int, Tuple[int, int]],
                 stride: Union[int, Tuple[int, int]] = 1,
                 padding: Union[int, Tuple[int, int]] = 0,
                 dilation: Union[int, Tuple[int, int]] = 1,
                 groups: int = 1,
                 bias: bool = True,
                 *,
                 region_num: int = 8,
                 generator: str = 'paper',
                 hidden_channels: Optional[int] = None,
                 num_bases: int = 8,
                 with_guide_conv: bool = True,
                 record_mask: bool = False) -> None:
        super().__init__()
        for name, value in (('in_channels', in_channels), ('out_channels', out_channels),
                            ('region_num', region_num), ('num_bases', num_bases)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f'{name} must be a positive int, but got {value!r}')
        if groups != 1:
            raise NotImplementedError(f'DRConv2d supports groups=1 only, but got groups={groups}')
        if generator not in GENERATORS:
            raise ValueError(f'generator must be one of {GENERATORS}, but got {generator!r}')
        if hidden_channels is None:
            hidden_channels = region_num * region_num
        if (not isinstance(hidden_channels, int) or hidden_channels < 1
                or hidden_channels % region_num):
            raise ValueError(f'hidden_channels must be a positive multiple of region_num='
                             f'{region_num}, but got {hidden_channels!r}')
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = as_pair(kernel_size, 'kernel_size', 1)
        self.stride = as_pair(stride, 'stride', 1)
        self.padding = as_pair(padding, 'padding', 0)
        self.dilation = as_pair(dilation, 'dilation', 1)
        self.output_padding = (0, 0)
        self.groups = groups
        self.region_num = region_num
        self.generator_type = generator
        self.record_mask = record_mask
        self.last_mask: Optional[Tensor] = None

        if with_guide_conv:
            self.guide_weight = nn.Parameter(torch.empty(region_num, in_channels,
                                                         *self.kernel_size))
            self.guide_bias = nn.Parameter(torch.empty(region_num))
        else:
            self.register_parameter('guide_weight', None)
            self.register_parameter('guide_bias', None)
        if generator == 'paper':
            self.generator = PaperFilterGenerator(in_channels, out_channels, self.kernel_size,
                                                  region_num, hidden_channels)
        else:
            self.generator = BasisFilterGenerator(in_channels, out_channels, self.kernel_size,
                                                  region_num, num_bases)
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.init_weights()

    @property
    def with_guide_conv(self) -> bool:
        return self.guide_weight is not None

    def init_weights(self) -> None:
        """Initialises the guide conv, the generator and the bias.

        ``ConvModule`` leaves a conv that has ``init_weights`` alone, so this is the init that
        holds inside mmdet models.
        """
        if self.with_guide_conv:
            nn.init.kaiming_uniform_(self.guide_weight, a=math.sqrt(5))
            nn.init.zeros_(self.guide_bias)
        self.generator.reset_parameters()
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: Tensor, guide: Optional[Tensor] = None) -> Tensor:
        """Applies the DRConv.

        Args:
            x (Tensor[B, C, H, W]): input features.
            guide (Tensor[B, m, H', W'], optional): an external guided feature (logits), for
                layers that share one guide. Nearest-resized to the output size when it differs
                (a block's guide at its input resolution serves its stride-2 convs). Default:
                None, the layer's own guide conv.

        Returns:
            Tensor[B, O, Ho, Wo]: output features.
        """
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f'x must have shape (B, {self.in_channels}, H, W), but got '
                             f'{tuple(x.shape)}')
        if guide is None:
            if not self.with_guide_conv:
                raise ValueError('guide is required: this DRConv2d was built with '
                                 'with_guide_conv=False')
            guide = F.conv2d(x, self.guide_weight, self.guide_bias, self.stride, self.padding,
                             self.dilation)
        else:
            guide = self._fit_guide(x, guide)
        if self.record_mask:
            self.last_mask = guide.detach().argmax(dim=1)
        return dr_conv2d(x, self.generator(x), guide, self.bias, self.stride, self.padding,
                         self.dilation)

    def _fit_guide(self, x: Tensor, guide: Tensor) -> Tensor:
        if guide.dim() != 4 or guide.shape[:2] != (x.shape[0], self.region_num):
            raise ValueError(f'guide must have shape (B={x.shape[0]}, region_num='
                             f'{self.region_num}, H, W), but got {tuple(guide.shape)}')
        out_size = conv_output_size(x.shape[-2:], self.kernel_size, self.stride, self.padding,
                                    self.dilation)
        if guide.shape[-2:] != out_size:
            guide = F.interpolate(guide, size=out_size, mode='nearest')
        return guide

    def extra_repr(self) -> str:
        s = (f'{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, '
             f'stride={self.stride}, region_num={self.region_num}, '
             f'generator={self.generator_type!r}')
        if self.padding != (0, 0):
            s += f', padding={self.padding}'
        if self.dilation != (1, 1):
            s += f', dilation={self.dilation}'
        if self.bias is None:
            s += ', bias=False'
        if not self.with_guide_conv:
            s += ', with_guide_conv=False'
        return s

