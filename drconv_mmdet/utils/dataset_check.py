"""Early, readable errors for dataset files that are not there."""
import os.path as osp
from typing import Iterator, List

from mmengine.config import Config, ConfigDict

__all__ = ['check_dataset_files']

TOY_COCO_HINT = ('generate the toy COCO set with `make data` or '
                 '`python tools/misc/make_toy_coco.py --out-dir {root}`')
COCO_HINT = ('put COCO 2017 under {root} (annotations/instances_{{train,val}}2017.json, '
             'train2017/, val2017/), or set the path with '
             '--cfg-options {loader}.dataset.data_root=PATH')


def _datasets(cfg: ConfigDict) -> Iterator[ConfigDict]:
    """The leaf dataset configs of a (possibly wrapped) dataset config."""
    if 'dataset' in cfg:
        yield from _datasets(cfg.dataset)
    elif 'datasets' in cfg:
        for child in cfg.datasets:
            yield from _datasets(child)
    else:
        yield cfg


def _missing(dataset: ConfigDict) -> List[str]:
    root = dataset.get('data_root', '') or ''
    paths = []
    if dataset.get('ann_file'):
        paths.append(osp.join(root, dataset.ann_file))
    prefix = dataset.get('data_prefix', {}) or {}
    if prefix.get('img') is not None:
        paths.append(osp.join(root, prefix['img']))
    return [path for path in paths if not osp.exists(path)]


def check_dataset_files(
        cfg: Config,
        loaders: tuple = ('train_dataloader', 'val_dataloader', 'test_dataloader'),
) -> None:
    """Raises ``FileNotFoundError`` naming the missing files and how to get them.

    Without it, a missing COCO folder surfaces deep inside the dataset build as a bare
    ``No such file or directory`` from the annotation loader.
    """
    for loader in loaders:
        if not cfg.get(loader):
            continue
        for dataset in _datasets(cfg[loader].dataset):
            root = dataset.get('data_root', '') or '.'
            missing = _missing(dataset)
            # CocoMetric reads its own copy of the annotations when the Runner is built.
            evaluators = cfg.get(loader.replace('dataloader', 'evaluator')) or []
            for evaluator in evaluators if isinstance(evaluators, list) else [evaluators]:
                ann_file = evaluator.get('ann_file')
                if ann_file and not osp.exists(ann_file):
                    missing.append(ann_file)
            if not missing:
                continue
            is_toy = dataset.get('type') == 'ToyCocoDataset' or 'toy_coco' in root
            hint = (TOY_COCO_HINT if is_toy else COCO_HINT).format(root=root, loader=loader)
            raise FileNotFoundError(f'{loader}: dataset file(s) not found: {", ".join(missing)}. '
                                    f'To fix it, {hint}.')
