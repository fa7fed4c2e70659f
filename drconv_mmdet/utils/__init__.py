from .checkpoint_loading import trust_local_checkpoints
from .complexity import MaddAnalyzer, count_madds
from .cpu_distributed import setup_cpu_distributed
from .dataset_check import check_dataset_files
from .tool_config import load_tool_config

__all__ = [
    'trust_local_checkpoints', 'setup_cpu_distributed', 'check_dataset_files', 'load_tool_config',
    'MaddAnalyzer', 'count_madds'
]
