"""What the tools share: config loading and arguments, checkpoint loading, dataset checks and
CPU process groups."""
from .checkpoint_loading import allow_mmengine_checkpoints, mmengine_checkpoint_globals
from .dataset_check import check_dataset_files
from .distributed import setup_cpu_distributed, shutdown_distributed
from .tool_config import add_cfg_options_argument, add_runner_arguments, load_tool_config

__all__ = [
    'add_cfg_options_argument', 'add_runner_arguments', 'allow_mmengine_checkpoints',
    'check_dataset_files', 'load_tool_config', 'mmengine_checkpoint_globals',
    'setup_cpu_distributed', 'shutdown_distributed'
]
