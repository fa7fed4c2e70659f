"""DetNAS backbone: the searched detection backbones of `DetNAS: Backbone Search for Object
Detection <https://arxiv.org/abs/1903.10979>`_, optionally with DRConv 1x1 convolutions
(`Dynamic Region-Aware Convolution <https://arxiv.org/abs/2003.12243>`_)."""
import logging
from collections import OrderedDict
from functools import partial
from itertools import accumulate
from string import ascii_lowercase
from typing import Any, Dict, List, Sequence, Tuple

import torch.nn as nn
from mmcv.cnn import build_conv_layer, build_norm_layer
from mmdet.registry import MODELS
from mmdet.utils import ConfigType, OptConfigType, OptMultiConfig
from mmengine.logging import print_log
from mmengine.model import BaseModule, Sequential
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

from drconv_mmdet.nn import start_drconvs_from_plain
from drconv_mmdet.torch_compat import register_load_state_dict_pre_hook
from .detnas_blocks import BLOCK_OPS, DetNASBlock, SpatialPointwiseUnit

# The official code searched one op list for the 1.3G and 3.8G nets; they differ in width only.
_LARGE_ARCH_OPS = (0, 0, 3, 1, 2, 1, 0, 2, 0, 3, 1, 2, 3, 3, 2, 0, 2, 1, 1, 3, 2, 0, 2, 2, 2, 1, 3,
                   1, 0, 3, 3, 3, 1, 3, 3, 3, 3, 3, 3, 3)


@MODELS.register_module()
class DetNAS(BaseModule):
    """DetNAS backbone.

    The searched networks of the official code (``ShuffleNetV2DetNAS``) without the ImageNet
    classifier: a 3x3 stride-2 conv stem with bias (no max-pool) and four stages of
    :class:`DetNASBlock`, each starting with a stride-2 block, so the stage outputs are at strides
    4, 8, 16 and 32. Module and parameter names are the official ones (``first_conv.conv.weight``,
    ``features.0.conv.0.interstellar1a_shufflenet_7x7_branch2a.weight``, ...), so the official
    ImageNet weights load without renaming once the classifier is dropped (see
    :func:`~drconv_mmdet.models.backbones.convert_detnas_checkpoint`).

    With ``drconv_cfg`` the 1x1 convs of the searched branches become DRConv. A plain
    checkpoint (e.g. the ImageNet weights through ``init_cfg=dict(type='Pretrained', ...)``, or a
    plain detector through ``load_from``) loads into it: each DRConv starts from the plain 1x1
    weight at its position, every region's filter being that weight, as
    :meth:`~drconv_mmdet.nn.DRConv2d.from_conv` does, so the backbone starts as the pretrained
    plain one. The guide convs keep their initialisation.

    Args:
        arch (str): Searched architecture, a key of :attr:`arch_settings`.
            Defaults to ``'COCO-FPN-300M'``.
        out_indices (Sequence[int]): Stages whose outputs are returned, in 0..3.
            Defaults to (0, 1, 2, 3).
        frozen_stages (int): Stages kept in eval mode with frozen parameters: -1 for none, 0 for
            the stem, i > 0 for the stem and stages 1..i. Defaults to -1.
        norm_cfg (ConfigType): Config of the norm layers. Defaults to
            ``dict(type='BN', requires_grad=True)``.
        norm_eval (bool): Whether to keep the norm layers in eval mode during training
            (freezing their running statistics). Defaults to False.
        drconv_cfg (OptConfigType): Config of the DRConv that replaces the 1x1 convs of the
            searched branches (``branch2a``, ``branch2b``, ``branch2c``), e.g.
            ``dict(type='DRConv', region_num=8)``; None keeps plain convs. Defaults to None.
        drconv_proj (bool): Whether DRConv also replaces the 1x1 conv of the stride-2 blocks'
            projection branch; the official DRConv ShuffleNetV2 keeps it plain.
            Defaults to False.
        shared_guide (bool): Whether each block's DRConvs share one guide conv (official DRConv
            ShuffleNetV2) instead of owning one each (paper). Defaults to False.
        init_cfg (OptMultiConfig): Initialization config. Defaults to None.

    Example:
        >>> import torch
        >>> from drconv_mmdet.models.backbones import DetNAS
        >>> self = DetNAS(arch='COCO-FPN-300M').eval()
        >>> outputs = self(torch.rand(1, 3, 64, 64))
        >>> for out in outputs:
        ...     print(tuple(out.shape))
        (1, 64, 16, 16)
        (1, 160, 8, 8)
        (1, 320, 4, 4)
        (1, 640, 2, 2)
    """

    # ops: one index into BLOCK_OPS per block, as in the official code; channels: stem, stages.
    arch_settings = {
        'COCO-FPN-300M':
        dict(ops=(2, 1, 2, 0, 2, 1, 1, 2, 3, 3, 1, 3, 0, 0, 3, 1, 3, 1, 3, 2),
             stage_blocks=(4, 4, 8, 4),
             channels=(16, 64, 160, 320, 640)),
        'COCO-RetinaNet-300M':
        dict(ops=(2, 3, 1, 1, 3, 2, 1, 3, 3, 1, 1, 1, 3, 3, 2, 0, 3, 3, 3, 3),
             stage_blocks=(4, 4, 8, 4),
             channels=(16, 64, 160, 320, 640)),
        'COCO-FPN-1.3G':
        dict(ops=_LARGE_ARCH_OPS, stage_blocks=(8, 8, 16, 8), channels=(48, 96, 240, 480, 960)),
        'COCO-FPN-3.8G':
        dict(ops=_LARGE_ARCH_OPS, stage_blocks=(8, 8, 16, 8), channels=(72, 172, 432, 864, 1728)),
    }

    def __init__(self,
                 arch: str = 'COCO-FPN-300M',
                 out_indices: Sequence[int] = (0, 1, 2, 3),
                 frozen_stages: int = -1,
                 norm_cfg: ConfigType = dict(type='BN', requires_grad=True),
                 norm_eval: bool = False,
                 drconv_cfg: OptConfigType = None,
                 drconv_proj: bool = False,
                 shared_guide: bool = False,
                 init_cfg: OptMultiConfig = None) -> None:
        super().__init__(init_cfg=init_cfg)
        if arch not in self.arch_settings:
            raise ValueError(f'arch must be one of {tuple(self.arch_settings)}, got {arch!r}')
        setting = self.arch_settings[arch]
        num_stages = len(setting['stage_blocks'])
        if len(out_indices) == 0 or any(i not in range(num_stages) for i in out_indices):
            raise ValueError(f'out_indices must be a non-empty sequence of stage indices in '
                             f'0..{num_stages - 1}, got {out_indices}')
        if frozen_stages not in range(-1, num_stages + 1):
            raise ValueError(f'frozen_stages must be in -1..{num_stages}, got {frozen_stages}')
        self.arch = arch
        self.out_indices = tuple(out_indices)
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.drconv_cfg = drconv_cfg

        stem_channels, *stage_channels = setting['channels']
        self.first_conv = Sequential(
            OrderedDict(conv=build_conv_layer(None,
                                              3,
                                              stem_channels,
                                              3,
                                              stride=2,
                                              padding=1,
                                              bias=True),
                        bn=build_norm_layer(norm_cfg, stem_channels)[1],
                        relu=nn.ReLU(inplace=True)))
        blocks = []
        in_channels = stem_channels
        ops = iter(setting['ops'])
        for stage, (num_blocks, out_channels) in enumerate(
                zip(setting['stage_blocks'], stage_channels),
                start=1,
        ):
            for index in range(num_blocks):
                blocks.append(
                    DetNASBlock(f'{stage}{ascii_lowercase[index]}',
                                BLOCK_OPS[next(ops)],
                                in_channels,
                                out_channels,
                                stride=2 if index == 0 else 1,
                                norm_cfg=norm_cfg,
                                drconv_cfg=drconv_cfg,
                                drconv_proj=drconv_proj,
                                shared_guide=shared_guide))
                in_channels = out_channels
        self.features = Sequential(*blocks)
        self.stage_ends = tuple(end - 1 for end in accumulate(setting['stage_blocks']))

        if drconv_cfg is not None:
            register_load_state_dict_pre_hook(self, self._start_drconvs_from_plain_weights)
        self._freeze_stages()

    @property
    def drconv_names(self) -> List[str]:
        """list[str]: Names of the 1x1 convs that are DRConv layers, relative to the backbone."""
        return [
            f'{name}.{unit.pointwise_name}' for name, unit in self.named_modules()
            if isinstance(unit, SpatialPointwiseUnit) and unit.with_drconv
        ]

    def _start_drconvs_from_plain_weights(self, module: nn.Module, state_dict: Dict[str, Any],
                                          prefix: str, *args: Any) -> None:
        """Load-state-dict pre-hook: plain 1x1 weights at DRConv positions start the DRConvs.

        :func:`~drconv_mmdet.nn.start_drconvs_from_plain` for this backbone's DRConvs; the
        shared guide convs, which plain checkpoints lack, keep their initialisation too.
        """
        log = partial(print_log, logger='current', level=logging.INFO)
        if start_drconvs_from_plain(self, state_dict, prefix, names=self.drconv_names, log=log):
            for key, value in self.state_dict(prefix=prefix).items():
                if '.guide_conv.' in key:
                    state_dict.setdefault(key, value)

    def _freeze_stages(self) -> None:
        """Put the stem and the first ``frozen_stages`` stages in eval mode, without grads."""
        if self.frozen_stages < 0:
            return
        num_blocks = self.stage_ends[self.frozen_stages - 1] + 1 if self.frozen_stages else 0
        for module in [self.first_conv, *list(self.features)[:num_blocks]]:
            module.eval()
            for param in module.parameters():
                param.requires_grad = False

    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        """Forward function.

        Args:
            x (Tensor): Images of shape (B, 3, H, W).

        Returns:
            tuple[Tensor]: The outputs of the stages in ``out_indices``; stage i has shape
            (B, C_i, H / 2^(i + 2), W / 2^(i + 2)) with C_i its channels, e.g.
            (64, 160, 320, 640) for COCO-FPN-300M (rounded up for odd sizes).
        """
        x = self.first_conv(x)
        outs = []
        for index, block in enumerate(self.features):
            x = block(x)
            if index in self.stage_ends and self.stage_ends.index(index) in self.out_indices:
                outs.append(x)
        return tuple(outs)

    def train(self, mode: bool = True) -> 'DetNAS':
        """Set the training mode, keeping frozen stages and (with ``norm_eval``) norms in eval.

        Args:
            mode (bool): Whether to set training mode. Defaults to True.

        Returns:
            DetNAS: This module.
        """
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for module in self.modules():
                if isinstance(module, _BatchNorm):
                    module.eval()
        return self
