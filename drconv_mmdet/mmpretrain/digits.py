"""scikit-learn's handwritten digits as an mmpretrain dataset: real images, nothing to download."""
from typing import List

import numpy as np
from mmpretrain.datasets import BaseDataset
from mmpretrain.registry import DATASETS

__all__ = ['DigitsDataset']

SPLITS = ('train', 'test')
# The digits' grey levels run from 0 to 16.
MAX_LEVEL = 16


@DATASETS.register_module()
class DigitsDataset(BaseDataset):
    """The 1,797 8x8 handwritten digits that ship with scikit-learn, ten classes.

    A fixed stratified split, the one of ``tools/analysis_tools/benchmark_learning.py``: 70 %
    train (1,257 images) and 30 % test (540), ``random_state=0``. Each image is an 8 x 8 x 3
    ``uint8`` array (the grey level scaled to 0-255, repeated in three channels) with its label
    in ``gt_label``; a pipeline resizes it to the network's input size (e.g. mmcv's ``Resize``).

    Args:
        split (str): ``'train'`` or ``'test'``. Default: ``'train'``.
        **kwargs: the other arguments of :class:`mmpretrain.datasets.BaseDataset`
            (``pipeline``, ``test_mode``, ``indices``, ...), without ``ann_file``.
    """

    METAINFO = dict(classes=tuple(str(digit) for digit in range(10)))

    def __init__(self, split: str = 'train', **kwargs) -> None:
        if split not in SPLITS:
            raise ValueError(f'split must be one of {SPLITS}, but got {split!r}')
        if 'ann_file' in kwargs:
            raise ValueError('DigitsDataset reads the digits from scikit-learn and takes no '
                             f'ann_file, but got ann_file={kwargs["ann_file"]!r}')
        self.split = split
        super().__init__(ann_file='', **kwargs)

    def load_data_list(self) -> List[dict]:
        try:
            from sklearn.datasets import load_digits
            from sklearn.model_selection import train_test_split
        except ImportError as error:
            raise ImportError('DigitsDataset needs scikit-learn: pip install scikit-learn') \
                from error
        digits = load_digits()
        train, test = train_test_split(np.arange(len(digits.target)),
                                       test_size=0.3,
                                       random_state=0,
                                       stratify=digits.target)
        images = np.round(digits.images * (255 / MAX_LEVEL)).astype(np.uint8)
        return [
            dict(img=np.repeat(images[index][:, :, None], 3, axis=2),
                 gt_label=int(digits.target[index]))
            for index in (train if self.split == 'train' else test)
        ]
