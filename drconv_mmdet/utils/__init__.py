from .checkpoint_loading import allow_mmengine_checkpoints, mmengine_checkpoint_globals
from .complexity import MaddAnalyzer, count_madds
from .dataset_check import check_dataset_files
from .distributed import setup_cpu_distributed, shutdown_distributed
from .tool_config import add_runner_arguments, load_tool_config

__all__ = [
    'MaddAnalyzer', 'add_runner_arguments', 'allow_mmengine_checkpoints', 'check_dataset_files',
    'count_madds', 'load_tool_config', 'mmengine_checkpoint_globals', 'setup_cpu_distributed',
    'shutdown_distributed'
]
