"""ShuffleNetV2 and DRConv-ShuffleNetV2 (the DRConv paper's Table 1) in torch alone."""
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from drconv_mmdet.nn import DRConv2d
from .checks import check_out_indices, is_real
from .classifier import ImageClassifier
from .conv_norm_act import ConvNormAct
from .pointwise import drconv_options, pointwise_to_drconv

__all__ = [
    'ShuffleNetV2', 'ShuffleNetV2Block', 'channel_shuffle', 'plain_pointwise_std', 'shufflenet_v2',
    'drconv_shufflenet_v2'
]

# Output channels of the three stages and of the last conv, per width (mmpretrain's).
STAGE_CHANNELS: Dict[float, Tuple[int, int, int, int]] = {
    0.5: (48, 96, 192, 1024),
    1.0: (116, 232, 464, 1024),
    1.5: (176, 352, 704, 1024),
    2.0: (244, 488, 976, 2048),
}
STAGE_BLOCKS = (4, 8, 4)
STEM_CHANNELS = 24


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """Interleaves the channels of ``groups`` equal groups: ``(g, C/g)`` read as ``(C/g, g)``."""
    batch, channels, height, width = x.shape
    x = x.view(batch, groups, channels // groups, height, width)
    return x.transpose(1, 2).contiguous().view(batch, channels, height, width)


def plain_pointwise_std(in_channels: int, out_channels: int) -> float:
    """mmpretrain's ShuffleNetV2 init std of a 1x1 conv weight: one over the fan-in.

    The DRConvs of the DRConv network start their filters at this size, as the convs they replace.
    """
    return 1.0 / in_channels


class ShuffleNetV2Block(nn.Module):
    """The ShuffleNetV2 unit (mmpretrain's ``InvertedResidual`` of ShuffleNetV2).

    Stride 1: the input's second half of channels goes through ``branch2`` (1x1, depthwise 3x3,
    1x1) and the first half is kept. Stride 2: ``branch1`` (depthwise 3x3 stride 2, 1x1) and
    ``branch2`` (stride in its depthwise conv) both take the whole input. The halves are
    concatenated and shuffled.

    Args:
        in_channels (int): input channels; ``out_channels`` when ``stride`` is 1.
        out_channels (int): output channels, even.
        stride (int): 1 or 2.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f'stride must be 1 or 2, but got {stride!r}')
        if out_channels % 2:
            raise ValueError(f'out_channels must be even, but got {out_channels!r}')
        branch = out_channels // 2
        if stride == 1 and in_channels != out_channels:
            raise ValueError(f'a stride-1 block keeps its channels: in_channels must equal '
                             f'out_channels={out_channels}, but got {in_channels!r}')
        self.stride = stride
        if stride > 1:
            self.branch1 = nn.Sequential(
                ConvNormAct(in_channels,
                            in_channels,
                            3,
                            stride,
                            1,
                            groups=in_channels,
                            activation=None),
                ConvNormAct(in_channels, branch, 1),
            )
        self.branch2 = nn.Sequential(
            ConvNormAct(in_channels if stride > 1 else branch, branch, 1),
            ConvNormAct(branch, branch, 3, stride, 1, groups=branch, activation=None),
            ConvNormAct(branch, branch, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        if self.stride > 1:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        else:
            # mmpretrain's split (the larger half first for odd widths), for equal outputs.
            channels = x.shape[1]
            kept = channels // 2 + channels % 2
            out = torch.cat((x[:, :kept], self.branch2(x[:, kept:])), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    """ShuffleNetV2 backbone, plain or with every 1x1 conv a DRConv (Table 1 of the DRConv paper).

    mmpretrain's ``ShuffleNetV2`` (and, with ``region_num``, ``DRShuffleNetV2``) without
    OpenMMLab: same modules, same names and state-dict keys (``conv1.conv.weight``,
    ``layers.0.0.branch2.0.conv.guide.weight``, ...), same outputs in eval mode. With
    ``region_num`` every 1x1 conv (both of each block's main branch, the one of each stride-2
    block's ``branch1`` and the last conv) is a :class:`~drconv_mmdet.nn.DRConv2d`; the 3x3 stem
    and the depthwise convs stay plain. Loading a plain state dict of the same width into the
    DRConv network starts every DRConv from the 1x1 weight at its place (every region's filter
    is that weight), so it computes what the plain network computes.

    Args:
        widen_factor (float): 0.5, 1.0, 1.5 or 2.0. Default: 1.0.
        out_indices (Sequence[int]): outputs to return, in layer order: 0-2 the stages, 3 the
            last conv. Default: ``(3,)``.
        region_num (int, optional): regions of every DRConv; None builds the plain network.
            Default: None.
        generator (str): filter generator of every DRConv, ``'basis'`` or ``'paper'`` (see
            :class:`~drconv_mmdet.nn.DRConv2d`). Default: ``'basis'``.
        drconv_cfg (dict, optional): further DRConv2d arguments (``num_bases``,
            ``hidden_channels``, ...). Default: None.
        shared_guide (bool): the two DRConvs of each block's ``branch2`` share one guide,
            computed by the first and sampled through the depthwise conv for the second, as in the
            official DRConv ShuffleNetV2. Default: False, a guide conv per DRConv.

    Attributes:
        out_channels (Tuple[int, ...]): channels of each output.
        drconv_names (List[str]): names of the DRConvs, empty for the plain network.

    Raises:
        ValueError: a bad argument, naming it, its value and what was expected.
    """

    def __init__(self,
                 widen_factor: float = 1.0,
                 out_indices: Sequence[int] = (3, ),
                 region_num: Optional[int] = None,
                 generator: str = 'basis',
                 drconv_cfg: Optional[dict] = None,
                 shared_guide: bool = False) -> None:
        super().__init__()
        if not is_real(widen_factor) or widen_factor not in STAGE_CHANNELS:
            raise ValueError(f'widen_factor must be one of {tuple(STAGE_CHANNELS)} for '
                             f'ShuffleNetV2, but got {widen_factor!r}')
        self.out_indices = check_out_indices(out_indices, len(STAGE_BLOCKS) + 1)
        kwargs = drconv_options(region_num, generator, drconv_cfg, shared_guide)
        self.widen_factor = widen_factor
        self.region_num = region_num
        self.shared_guide = shared_guide
        channels = STAGE_CHANNELS[widen_factor]
        self.out_channels = tuple(channels[i] for i in self.out_indices)

        self.conv1 = ConvNormAct(3, STEM_CHANNELS, 3, stride=2, padding=1)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layers = nn.ModuleList()
        in_channels = STEM_CHANNELS
        for out_channels, num_blocks in zip(channels, STAGE_BLOCKS):
            blocks = [
                ShuffleNetV2Block(in_channels if i == 0 else out_channels, out_channels,
                                  2 if i == 0 else 1) for i in range(num_blocks)
            ]
            self.layers.append(nn.Sequential(*blocks))
            in_channels = out_channels
        self.layers.append(ConvNormAct(in_channels, channels[-1], 1))
        self.drconv_names: List[str] = pointwise_to_drconv(self, kwargs, shared_guide)
        self.init_weights()

    def init_weights(self) -> None:
        """mmpretrain's init: normal conv weights, std 0.01 in the stem and 1/fan-in elsewhere.

        mmpretrain's norm init passes the norms' weights where it wants the norms and changes
        nothing, so the norms keep torch's init (weight 1, bias 0), as they do here. Every DRConv's
        filters start at the size of the 1x1 conv it replaces (:func:`plain_pointwise_std`).
        """
        for name, module in self.named_modules():
            if isinstance(module, nn.Conv2d):
                std = 0.01 if name.startswith('conv1.') else 1.0 / module.weight.shape[1]
                nn.init.normal_(module.weight, 0, std)
            elif isinstance(module, nn.BatchNorm2d):
                module.reset_parameters()
            elif isinstance(module, DRConv2d):
                module.init_weights(plain_pointwise_std(module.in_channels, module.out_channels))

    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        """The feature maps of ``out_indices``.

        Args:
            x (Tensor[B, 3, H, W]): normalised images.

        Returns:
            Tuple[Tensor, ...]: one ``(B, C, H / 2^k, W / 2^k)`` map per index of
            ``out_indices``, stride 8 for stage 0 to stride 32 for the last conv.
        """
        x = self.maxpool(self.conv1(x))
        outs = []
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i in self.out_indices:
                outs.append(x)
        return tuple(outs)


def shufflenet_v2(widen_factor: float = 1.0,
                  num_classes: int = 1000,
                  *,
                  region_num: Optional[int] = None,
                  generator: str = 'basis',
                  drconv_cfg: Optional[dict] = None,
                  shared_guide: bool = False) -> ImageClassifier:
    """A ShuffleNetV2 classifier, plain by default (:class:`ShuffleNetV2` with a linear head).

    The state dict is that of mmpretrain's ``ImageClassifier`` with a ``ShuffleNetV2`` (or
    ``DRShuffleNetV2``) backbone and a ``LinearClsHead``. Arguments as :class:`ShuffleNetV2` and
    :class:`ImageClassifier`.
    """
    return ImageClassifier(
        ShuffleNetV2(widen_factor,
                     region_num=region_num,
                     generator=generator,
                     drconv_cfg=drconv_cfg,
                     shared_guide=shared_guide), num_classes)


def drconv_shufflenet_v2(widen_factor: float = 1.0,
                         num_classes: int = 1000,
                         *,
                         region_num: int = 8,
                         generator: str = 'basis',
                         drconv_cfg: Optional[dict] = None,
                         shared_guide: bool = False) -> ImageClassifier:
    """A DRConv-ShuffleNetV2 classifier: :func:`shufflenet_v2` with 8 regions by default, the
    paper's."""
    if region_num is None:
        raise ValueError('region_num must be a positive int for a DRConv network, but got None; '
                         'shufflenet_v2() builds the plain network')
    return shufflenet_v2(widen_factor,
                         num_classes,
                         region_num=region_num,
                         generator=generator,
                         drconv_cfg=drconv_cfg,
                         shared_guide=shared_guide)
