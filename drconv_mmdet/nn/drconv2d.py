"""DRConv2d: the Dynamic Region-Aware Convolution layer (arXiv 2003.12243)."""
import math
from typing import Any, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from drconv_mmdet.ops import conv_output_size, dr_conv2d
from drconv_mmdet.ops.geometry import as_pair
from .filter_generators import BasisFilterGenerator, PaperFilterGenerator, WeightAndBias
from .guide_sampling import sample_guide

__all__ = ['DRConv2d']

GENERATORS = ('paper', 'basis')
# What DRConv2d.from_conv takes from the conv.
CONV_ARGS = ('in_channels', 'out_channels', 'kernel_size', 'stride', 'padding', 'dilation',
             'groups')


class DRConv2d(nn.Module):
    """Dynamic Region-Aware Convolution.

    A ``k x k`` conv produces the guided feature (``region_num`` channels, Eq. 4); its argmax over
    channels splits the output into regions. A filter generator predicts one filter per sample
    and region, and every output pixel is convolved with its region's filter only (see
    :func:`drconv_mmdet.ops.dr_conv2d`), so the layer has the FLOPs of one convolution plus the
    guide and the generator.

    Takes the arguments of ``nn.Conv2d`` so that ``build_conv_layer`` and ``ConvModule`` build it
    from ``conv_cfg=dict(type='DRConv', region_num=8)``, and exposes the attributes they read.
    :meth:`from_conv` makes one that starts as a given (e.g. pretrained) ``nn.Conv2d``.

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
        generator (str): ``'basis'``, the official code's mixture of ``num_bases`` shared kernels,
            or ``'paper'``, the paper's two-layer generator (Fig. 2b). Default: ``'basis'``, for
            every kernel size: trained from scratch on real images, each variant at its best
            schedule, it matched a plain conv in every network where the paper's generator fell
            behind in three of four, and at k = 1 it has a ninth of that generator's parameters
            (docs/learning.md).
        hidden_channels (int, optional): hidden width of the ``'paper'`` generator, a multiple of
            ``region_num``. Default: ``region_num ** 2``, as the public implementations use.
        num_bases (int): number of shared kernels of the ``'basis'`` generator. Default: 8.
        static_kernel (bool): ``'paper'`` generator only: add a learned static ``k x k`` kernel,
            shared by samples and regions, to the generated filters. It lets a ``k > 1`` layer
            start from a pretrained conv (:meth:`from_conv`). Default: False, the paper's
            generator.
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
                 generator: str = 'basis',
                 hidden_channels: Optional[int] = None,
                 num_bases: int = 8,
                 static_kernel: bool = False,
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
        if static_kernel and generator != 'paper':
            raise ValueError(f'static_kernel=True needs the \'paper\' generator, but got '
                             f'generator={generator!r}')
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

        # The guide conv applied functionally from a plain holder: see filter_generators.py.
        self.guide = (WeightAndBias(
            (region_num, in_channels, *self.kernel_size)) if with_guide_conv else None)
        if generator == 'paper':
            self.generator = PaperFilterGenerator(in_channels, out_channels, self.kernel_size,
                                                  region_num, hidden_channels, static_kernel)
        else:
            self.generator = BasisFilterGenerator(in_channels, out_channels, self.kernel_size,
                                                  region_num, num_bases)
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.init_weights()

    @property
    def with_guide_conv(self) -> bool:
        return self.guide is not None

    def init_weights(self, filter_std: Optional[float] = None) -> None:
        """Initialises the guide conv, the generator and the bias.

        ``ConvModule`` leaves a conv that has ``init_weights`` alone, so this is the init that
        holds inside mmdet models.

        Args:
            filter_std (float, optional): std of the generated filters at the start. A network
                that initialises its plain convs at another size passes that size here, so that
                its DRConvs start like the convs they replace: behind a norm layer the size of a
                weight sets how fast its direction learns, the smaller the faster. Default: None,
                a variance-preserving size, ``1 / sqrt(in_channels * kh * kw)``.

        Raises:
            ValueError: ``filter_std`` is not a positive finite number.
        """
        if filter_std is not None and not _is_positive_finite(filter_std):
            raise ValueError(f'filter_std must be a positive finite number or None, but got '
                             f'{filter_std!r}')
        if self.with_guide_conv:
            nn.init.kaiming_uniform_(self.guide.weight, a=math.sqrt(5))
            nn.init.zeros_(self.guide.bias)
        self.generator.reset_parameters(filter_std)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, **drconv_kwargs: Any) -> 'DRConv2d':
        """A DRConv2d that computes what ``conv`` computes until it is trained.

        The layer takes the conv's channels and geometry, its filter generator is set up so that
        every region's filter is the conv's weight for every input (:meth:`init_from_conv`) and
        the bias is copied, so ``layer(x)`` equals ``conv(x)`` at construction. The guide conv
        keeps its usual initialisation. On the same device and dtype as ``conv``.

        Every added parameter learns: all get a gradient in the first backward pass except the
        guide conv's. Its straight-through gradient is made of the differences between the
        regions' responses (Eq. 7-8), all equal at the start; the first step makes the regions'
        filters differ (each region's generator coefficients get the gradient of its own
        pixels), and the guide gets gradients from the second step on.

        Args:
            conv (nn.Conv2d): a 2-D convolution with ``groups=1`` and zero padding.
            **drconv_kwargs: the other arguments of :class:`DRConv2d` (``region_num``,
                ``generator``, ...). ``bias=True`` gives a zero bias to a conv without one.
                The ``'paper'`` generator needs ``static_kernel=True`` for a ``k > 1`` conv.

        Returns:
            DRConv2d: the new layer.

        Raises:
            ValueError: ``conv`` is not an ``nn.Conv2d``, ``drconv_kwargs`` holds an argument
                taken from the conv or ``bias=False`` for a conv with a bias, or the generator
                cannot start from the conv's kernel.
            NotImplementedError: a transposed or grouped conv, or a padding mode other than
                ``'zeros'``.
        """
        if getattr(conv, 'transposed', False):
            raise NotImplementedError(
                f'DRConv2d.from_conv does not support transposed convolutions, but got '
                f'{type(conv).__name__}')
        if not isinstance(conv, nn.Conv2d):
            raise ValueError(f'conv must be an nn.Conv2d, but got {type(conv).__name__}')
        if conv.groups != 1:
            raise NotImplementedError(
                f'DRConv2d supports groups=1 only, but the conv has groups={conv.groups}')
        if conv.padding_mode != 'zeros':
            raise NotImplementedError(f"DRConv2d pads with zeros only, but the conv has "
                                      f"padding_mode={conv.padding_mode!r}")
        taken = sorted(set(drconv_kwargs) & set(CONV_ARGS))
        if taken:
            raise ValueError(f'from_conv takes {", ".join(taken)} from the conv; expected them '
                             'out of drconv_kwargs')
        bias = drconv_kwargs.pop('bias', conv.bias is not None)
        if not bias and conv.bias is not None:
            raise ValueError('bias=False would drop the bias of the conv, and the layer would not '
                             'compute what the conv computes')
        layer = cls(conv.in_channels,
                    conv.out_channels,
                    conv.kernel_size,
                    conv.stride,
                    _explicit_padding(conv),
                    conv.dilation,
                    bias=bias,
                    **drconv_kwargs)
        layer.to(device=conv.weight.device, dtype=conv.weight.dtype)
        layer.init_from_conv(conv.weight, conv.bias)
        return layer

    @torch.no_grad()
    def init_from_conv(self, weight: Tensor, bias: Optional[Tensor] = None) -> None:
        """Makes the layer compute ``F.conv2d(x, weight, bias)`` (with its own geometry).

        Every region's generated filter becomes ``weight`` whatever the input (see the
        generators' ``start_from``) and the bias becomes ``bias`` (zero when None). The guide
        conv is left as it is. See :meth:`from_conv`.

        Args:
            weight (Tensor[O, C, kh, kw]): the plain conv's weight.
            bias (Tensor[O], optional): the plain conv's bias. Default: None.

        Raises:
            ValueError: ``bias`` of another shape or given to a layer without bias, or a
                ``weight`` that the generator cannot start from.
        """
        if bias is not None:
            if self.bias is None:
                raise ValueError('bias was given, but this DRConv2d was built with bias=False')
            if tuple(bias.shape) != (self.out_channels, ):
                raise ValueError(f'bias must have shape ({self.out_channels},), but got '
                                 f'{tuple(bias.shape)}')
        self.generator.start_from(weight)
        if self.bias is not None:
            if bias is None:
                self.bias.zero_()
            else:
                self.bias.copy_(bias)

    def forward(self, x: Tensor, guide: Optional[Tensor] = None) -> Tensor:
        """Applies the DRConv.

        Args:
            x (Tensor[B, C, H, W]): input features.
            guide (Tensor[B, m, H', W'], optional): an external guided feature (logits), for
                layers that share one guide, at the output size ``(Ho, Wo)`` or at the input
                size ``(H, W)``. At the input size, output pixel ``p`` takes the guide at the
                centre of its window (:func:`sample_guide`), e.g. rows 0, 2, 4, 6 for
                ``H = 7``, ``k = 3``, stride 2 and padding 1. Default: None, the layer's own
                guide conv.

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
            guide = self.guide_logits(x)
        else:
            guide = self._fit_guide(x, guide)
        if self.record_mask:
            self.last_mask = guide.detach().argmax(dim=1)
        return dr_conv2d(x, self.generator(x), guide, self.bias, self.stride, self.padding,
                         self.dilation)

    def guide_logits(self, x: Tensor) -> Tensor:
        """The guided feature of the layer's own guide conv (Eq. 4), for layers that share it.

        Args:
            x (Tensor[B, C, H, W]): input features.

        Returns:
            Tensor[B, m, Ho, Wo]: guide logits at the output size; their argmax is the region.
        """
        if not self.with_guide_conv:
            raise ValueError('this DRConv2d was built with with_guide_conv=False and has no '
                             'guide conv')
        return F.conv2d(x, self.guide.weight, self.guide.bias, self.stride, self.padding,
                        self.dilation)

    def _fit_guide(self, x: Tensor, guide: Tensor) -> Tensor:
        if guide.dim() != 4 or guide.shape[:2] != (x.shape[0], self.region_num):
            raise ValueError(f'guide must have shape (B={x.shape[0]}, region_num='
                             f'{self.region_num}, H, W), but got {tuple(guide.shape)}')
        in_size = tuple(x.shape[-2:])
        out_size = conv_output_size(in_size, self.kernel_size, self.stride, self.padding,
                                    self.dilation)
        guide_size = tuple(guide.shape[-2:])
        if guide_size == out_size:
            return guide
        if guide_size == in_size:
            return sample_guide(guide, self.kernel_size, self.stride, self.padding, self.dilation)
        raise ValueError(f'guide must have the output size {out_size} or the input size '
                         f'{in_size} of this layer, but got size {guide_size}')

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
        if self.generator_type == 'paper' and self.generator.static_kernel:
            s += ', static_kernel=True'
        if not self.with_guide_conv:
            s += ', with_guide_conv=False'
        return s


def _is_positive_finite(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and 0 < value < math.inf)


def _explicit_padding(conv: nn.Conv2d) -> Tuple[int, int]:
    """The conv's padding as a pair of ints (``'valid'`` and ``'same'`` resolved)."""
    if not isinstance(conv.padding, str):
        return conv.padding
    if conv.padding == 'valid':
        return (0, 0)
    extents = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size)]
    if any(extent % 2 for extent in extents):
        raise NotImplementedError(
            "padding='same' pads one side more for an even dilation * (kernel_size - 1); "
            f'DRConv2d pads both sides alike, but the conv has kernel_size={conv.kernel_size} '
            f'and dilation={conv.dilation}')
    return tuple(extent // 2 for extent in extents)
