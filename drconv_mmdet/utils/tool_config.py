"""What tools/train.py and tools/test.py do alike before they build a Runner."""
import argparse
import os
import os.path as osp
from typing import Optional, Sequence

from mmengine.config import Config, DictAction

from .checkpoint_loading import allow_mmengine_checkpoints
from .dataset_check import check_dataset_files
from .distributed import setup_cpu_distributed

__all__ = ['add_cfg_options_argument', 'add_runner_arguments', 'load_tool_config']

CFG_OPTIONS_HELP = ('override settings of the config, as key=value pairs (nested keys with dots, '
                    'lists as a=[1,2] or a=1,2)')


class _LocalRankAction(argparse.Action):
    """``torch.distributed.launch`` passes ``--local-rank`` where torchrun sets ``LOCAL_RANK``;
    mmengine reads the variable."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        os.environ['LOCAL_RANK'] = str(values)


def add_cfg_options_argument(parser: argparse.ArgumentParser, help: str = CFG_OPTIONS_HELP) -> None:
    """Adds mmdet's ``--cfg-options key=value ...``, parsed into a dict by mmengine's
    ``DictAction``."""
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, help=help)


def add_runner_arguments(parser: argparse.ArgumentParser, work_dir_help: str) -> None:
    """Adds the arguments train.py and test.py share: --work-dir, --cfg-options, --launcher and
    --local-rank."""
    parser.add_argument('--work-dir', help=work_dir_help)
    add_cfg_options_argument(parser)
    parser.add_argument('--launcher',
                        choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none',
                        help='job launcher')
    parser.add_argument('--local_rank',
                        '--local-rank',
                        type=int,
                        default=0,
                        action=_LocalRankAction)


def load_tool_config(
    config: str,
    work_dir: Optional[str],
    cfg_options: Optional[dict],
    launcher: str,
    loaders: Sequence[str] = ('train_dataloader', 'val_dataloader', 'test_dataloader')
) -> Config:
    """Loads a config as mmdet's tools do, plus what this stack needs.

    ``--cfg-options`` are merged, ``launcher`` set, ``work_dir`` resolved (command line, then the
    config, then ``./work_dirs/<config name>``), mmengine checkpoints made loadable with torch's
    ``weights_only=True`` default (torch >= 2.6), a gloo process group started for torchrun on
    CPU, and the dataset files of ``loaders`` checked.
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
    allow_mmengine_checkpoints()
    setup_cpu_distributed(cfg, launcher)
    check_dataset_files(cfg, tuple(loaders))
    return cfg
