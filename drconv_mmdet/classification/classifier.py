"""A backbone, global average pooling and a linear head: mmpretrain's ImageClassifier in torch."""
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from .checks import check_positive_int

__all__ = ['ImageClassifier', 'GlobalAveragePooling', 'LinearClsHead']


class GlobalAveragePooling(nn.Module):
    """The mean of each channel: ``(B, C, H, W)`` to ``(B, C)``, as mmpretrain's neck."""

    def __init__(self) -> None:
        super().__init__()
        self.gap = nn.AdaptiveAvgPool2d((1, 1))

    def forward(self, x: Tensor) -> Tensor:
        # flatten rather than mmpretrain's view(B, -1), which fails on an empty batch.
        return torch.flatten(self.gap(x), 1)


class LinearClsHead(nn.Module):
    """A fully connected layer to class scores (logits), as mmpretrain's ``LinearClsHead``.

    Args:
        num_classes (int): number of classes.
        in_channels (int): channels of the pooled feature.
    """

    def __init__(self, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.num_classes = check_positive_int('num_classes', num_classes)
        self.in_channels = check_positive_int('in_channels', in_channels)
        self.fc = nn.Linear(in_channels, num_classes)
        self.init_weights()

    def init_weights(self) -> None:
        """mmpretrain's init of the head: normal weights of std 0.01, zero bias."""
        nn.init.normal_(self.fc.weight, 0, 0.01)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x)


class ImageClassifier(nn.Module):
    """A backbone's last output, globally average-pooled and classified by a linear layer.

    The modules and their names (``backbone``, ``neck``, ``head.fc``) are those of mmpretrain's
    ``ImageClassifier`` with a ``GlobalAveragePooling`` neck and a ``LinearClsHead``, so its
    checkpoints (``checkpoint['state_dict']``) load with ``strict=True`` and give the same
    outputs as ``model(x, mode='tensor')`` there. The input is the normalised image; mmpretrain
    normalises in its data preprocessor, outside the model.

    Args:
        backbone (nn.Module): returns a tuple of feature maps, as the backbones of
            :mod:`drconv_mmdet.classification` do; the last one is classified.
        num_classes (int): number of classes. Default: 1000.
        in_channels (int, optional): channels of the backbone's last output. Default: None,
            ``backbone.out_channels[-1]``.
    """

    def __init__(self,
                 backbone: nn.Module,
                 num_classes: int = 1000,
                 in_channels: Optional[int] = None) -> None:
        super().__init__()
        if not isinstance(backbone, nn.Module):
            raise ValueError(f'backbone must be an nn.Module, but got {type(backbone).__name__}')
        if in_channels is None:
            out_channels = getattr(backbone, 'out_channels', None)
            if not isinstance(out_channels, Sequence) or not out_channels:
                raise ValueError(f'in_channels=None takes the channels from '
                                 f'backbone.out_channels, which this {type(backbone).__name__} '
                                 f'does not have; expected in_channels, a positive int')
            in_channels = out_channels[-1]
        self.backbone = backbone
        self.neck = GlobalAveragePooling()
        self.head = LinearClsHead(num_classes, in_channels)

    @property
    def num_classes(self) -> int:
        return self.head.num_classes

    def forward(self, x: Tensor) -> Tensor:
        """Class scores.

        Args:
            x (Tensor[B, 3, H, W]): normalised images.

        Returns:
            Tensor[B, num_classes]: logits.
        """
        return self.head(self.neck(self.backbone(x)[-1]))
