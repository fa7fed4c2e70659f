"""Configs and models shared by the detectron2 tests."""
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO_ROOT / 'configs' / 'detectron2'
TOY_CONFIG = CONFIG_DIR / 'mask_rcnn_R_18_DRFPN_8R_toy.yaml'


def drconv_cfg(config: Path = TOY_CONFIG, *opts):
    """A detectron2 config with the DRConv keys, merged from ``config`` and ``opts``."""
    from detectron2.config import get_cfg

    from drconv_mmdet.detectron2 import add_drconv_config

    cfg = get_cfg()
    add_drconv_config(cfg)
    cfg.merge_from_file(str(config))
    cfg.merge_from_list(list(opts))
    return cfg
