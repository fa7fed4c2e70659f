"""MobileNetV2 and DRConv-MobileNetV2 (the DRConv paper's Table 1) in torch alone."""
import math
from typing import List, Optional, Sequence, Tuple

from torch import Tensor, nn

from drconv_mmdet.nn import DRConv2d
from .checks import check_out_indices, is_real
from .classifier import ImageClassifier
from .conv_norm_act import RELU6, ConvNormAct
from .pointwise import drconv_options, pointwise_to_drconv

__all__ = [
    'MobileNetV2', 'InvertedResidual', 'make_divisible', 'plain_pointwise_std', 'mobilenet_v2',
    'drconv_mobilenet_v2'
]

# (expand_ratio, channels, num_blocks, stride) of the seven stages, at width 1 (mmpretrain's).
ARCH_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                 (6, 160, 3, 2), (6, 320, 1, 1))
STEM_CHANNELS = 32
LAST_CHANNELS = 1280


def make_divisible(value: float,
                   divisor: int,
                   min_value: Optional[int] = None,
                   min_ratio: float = 0.9) -> int:
    """``value`` rounded to the nearest multiple of ``divisor``, at least ``min_value`` (default
    ``divisor``) and at least ``min_ratio`` of ``value`` (mmpretrain's rule for channel counts).
    """
    if min_value is None:
        min_value = divisor
    new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new_value < min_ratio * value:
        new_value += divisor
    return new_value


def plain_pointwise_std(in_channels: int, out_channels: int) -> float:
    """mmpretrain's MobileNetV2 init std of a 1x1 conv weight: Kaiming normal, fan-out, ReLU gain.

    The DRConvs of the DRConv network start their filters at this size, as the convs they replace.
    """
    return math.sqrt(2.0 / out_channels)


class InvertedResidual(nn.Module):
    """The MobileNetV2 block: 1x1 expansion (left out at ratio 1), depthwise 3x3, 1x1 projection.

    The projection has no activation; the input is added back when the block keeps the stride and
    the channels. ``conv`` holds the three (or two) units, as in mmpretrain.

    Args:
        in_channels (int): input channels.
        out_channels (int): output channels.
        stride (int): stride of the depthwise conv, 1 or 2.
        expand_ratio (int): hidden channels over input channels.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f'stride must be 1 or 2, but got {stride!r}')
        self.stride = stride
        self.use_res_connect = stride == 1 and in_channels == out_channels
        hidden = int(round(in_channels * expand_ratio))
        units = [ConvNormAct(in_channels, hidden, 1, activation=RELU6)] if expand_ratio != 1 else []
        units += [
            ConvNormAct(hidden, hidden, 3, stride, 1, groups=hidden, activation=RELU6),
            ConvNormAct(hidden, out_channels, 1, activation=None),
        ]
        self.conv = nn.Sequential(*units)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 backbone, plain or with every 1x1 conv a DRConv (Table 1 of the DRConv paper).

    mmpretrain's ``MobileNetV2`` (and, with ``region_num``, ``DRMobileNetV2``) without
    OpenMMLab: same modules, same names and state-dict keys (``conv1.conv.weight``,
    ``layer2.0.conv.0.conv.guide.weight``, ..., ``conv2.bn.weight``), same outputs in eval mode.
    Channels are ``make_divisible(c * widen_factor, 8)``; the last conv has 1280 channels, or
    ``int(1280 * widen_factor)`` above width 1. With ``region_num`` every 1x1 conv (the expansion
    and projection convs of each block and the last conv) is a
    :class:`~drconv_mmdet.nn.DRConv2d`; the 3x3 stem and the depthwise convs stay plain. Loading
    a plain state dict of the same width into the DRConv network starts every DRConv from the
    1x1 weight at its place, so it computes what the plain network computes.

    Args:
        widen_factor (float): width multiplier, positive; the paper's Fig. 4 uses 0.25, 0.5,
            0.75 and 1. Default: 1.0.
        out_indices (Sequence[int]): outputs to return, in layer order: 0-6 the stages
            ``layer1``-``layer7``, 7 the last conv ``conv2``. Default: ``(7,)``.
        region_num (int, optional): regions of every DRConv; None builds the plain network.
            Default: None.
        generator (str): filter generator of every DRConv, ``'basis'`` or ``'paper'`` (see
            :class:`~drconv_mmdet.nn.DRConv2d`). Default: ``'basis'``.
        drconv_cfg (dict, optional): further DRConv2d arguments (``num_bases``,
            ``hidden_channels``, ...). Default: None.
        shared_guide (bool): the expansion and projection DRConvs of a block share one guide,
            computed by the expansion conv and sampled through the depthwise conv for the
            projection conv. Default: False, a guide conv per DRConv.

    Attributes:
        out_channels (Tuple[int, ...]): channels of each output.
        layer_names (List[str]): the names of the eight layers that ``out_indices`` index.
        drconv_names (List[str]): names of the DRConvs, empty for the plain network.

    Raises:
        ValueError: a bad argument, naming it, its value and what was expected.
    """

    def __init__(self,
                 widen_factor: float = 1.0,
                 out_indices: Sequence[int] = (7, ),
                 region_num: Optional[int] = None,
                 generator: str = 'basis',
                 drconv_cfg: Optional[dict] = None,
                 shared_guide: bool = False) -> None:
        super().__init__()
        if not is_real(widen_factor) or not widen_factor > 0:
            raise ValueError(f'widen_factor must be a positive number for MobileNetV2, but got '
                             f'{widen_factor!r}')
        self.out_indices = check_out_indices(out_indices, len(ARCH_SETTINGS) + 1)
        kwargs = drconv_options(region_num, generator, drconv_cfg, shared_guide)
        self.widen_factor = widen_factor
        self.region_num = region_num
        self.shared_guide = shared_guide

        in_channels = make_divisible(STEM_CHANNELS * widen_factor, 8)
        self.conv1 = ConvNormAct(3, in_channels, 3, stride=2, padding=1, activation=RELU6)
        self.layer_names: List[str] = []
        channels = []
        for i, (expand_ratio, width, num_blocks, stride) in enumerate(ARCH_SETTINGS):
            out_channels = make_divisible(width * widen_factor, 8)
            blocks = [
                InvertedResidual(in_channels if j == 0 else out_channels, out_channels,
                                 stride if j == 0 else 1, expand_ratio) for j in range(num_blocks)
            ]
            self.add_module(f'layer{i + 1}', nn.Sequential(*blocks))
            self.layer_names.append(f'layer{i + 1}')
            channels.append(out_channels)
            in_channels = out_channels
        last = int(LAST_CHANNELS * widen_factor) if widen_factor > 1.0 else LAST_CHANNELS
        self.conv2 = ConvNormAct(in_channels, last, 1, activation=RELU6)
        self.layer_names.append('conv2')
        channels.append(last)
        self.out_channels = tuple(channels[i] for i in self.out_indices)
        self.drconv_names: List[str] = pointwise_to_drconv(self, kwargs, shared_guide)
        self.init_weights()

    def init_weights(self) -> None:
        """mmpretrain's init: Kaiming normal conv weights (fan-out, ReLU gain), norms at weight
        1 and bias 0; every DRConv's filters start at the size of the 1x1 conv it replaces
        (:func:`plain_pointwise_std`).
        """
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode='fan_out', nonlinearity='relu')
            elif isinstance(module, nn.BatchNorm2d):
                module.reset_parameters()
            elif isinstance(module, DRConv2d):
                module.init_weights(plain_pointwise_std(module.in_channels, module.out_channels))

    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        """The feature maps of ``out_indices``.

        Args:
            x (Tensor[B, 3, H, W]): normalised images.

        Returns:
            Tuple[Tensor, ...]: one map per index of ``out_indices``.
        """
        x = self.conv1(x)
        outs = []
        for i, name in enumerate(self.layer_names):
            x = getattr(self, name)(x)
            if i in self.out_indices:
                outs.append(x)
        return tuple(outs)


def mobilenet_v2(widen_factor: float = 1.0,
                 num_classes: int = 1000,
                 *,
                 region_num: Optional[int] = None,
                 generator: str = 'basis',
                 drconv_cfg: Optional[dict] = None,
                 shared_guide: bool = False) -> ImageClassifier:
    """A MobileNetV2 classifier, plain by default (:class:`MobileNetV2` with a linear head).

    The state dict is that of mmpretrain's ``ImageClassifier`` with a ``MobileNetV2`` (or
    ``DRMobileNetV2``) backbone and a ``LinearClsHead``. Arguments as :class:`MobileNetV2` and
    :class:`ImageClassifier`.
    """
    return ImageClassifier(
        MobileNetV2(widen_factor,
                    region_num=region_num,
                    generator=generator,
                    drconv_cfg=drconv_cfg,
                    shared_guide=shared_guide), num_classes)


def drconv_mobilenet_v2(widen_factor: float = 1.0,
                        num_classes: int = 1000,
                        *,
                        region_num: int = 8,
                        generator: str = 'basis',
                        drconv_cfg: Optional[dict] = None,
                        shared_guide: bool = False) -> ImageClassifier:
    """A DRConv-MobileNetV2 classifier: :func:`mobilenet_v2` with 8 regions by default, the
    paper's."""
    if region_num is None:
        raise ValueError('region_num must be a positive int for a DRConv network, but got None; '
                         'mobilenet_v2() builds the plain network')
    return mobilenet_v2(widen_factor,
                        num_classes,
                        region_num=region_num,
                        generator=generator,
                        drconv_cfg=drconv_cfg,
                        shared_guide=shared_guide)
