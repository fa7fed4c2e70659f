"""What tools/train.py and tools/test.py do alike before they build a Runner."""
import os.path as osp
from typing import Optional, Sequence

from mmengine.config import Config

from .checkpoint_loading import trust_local_checkpoints
from .cpu_distributed import setup_cpu_distributed
from .dataset_check import check_dataset_files

__all__ = ['load_tool_config']


def load_tool_config(config: str,
                     work_dir: Optional[str],
                     cfg_options: Optional[dict],
                     launcher: str,
                     loaders: Sequence[str] = ('train_dataloader', 'val_dataloader',
                                               'test_dataloader')) -> Config:
    """Loads a config as mmdet's tools do, plus what this stack needs.

    ``--cfg-options`` are merged, ``launcher`` set, ``work_dir`` resolved (command line, then the
    config, then ``./work_dirs/<config name>``), mmengine checkpoints made loadable on torch >= 2.6,
    a gloo process group started for torchrun on CPU, and the dataset files of ``loaders`` checked.
    """
    if not osp.isfile(config):
        raise FileNotFoundError(f'config file {config!r} does not exist')
    cfg = Config.fromfile(config)
    if cfg_options is not None:
        cfg.merge_from_dict(cfg_options)
    cfg.launcher = launcher
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(config))[0])
    trust_local_checkpoints()
    setup_cpu_distributed(cfg, launcher)
    check_dataset_files(cfg, tuple(loaders))
    return cfg
