"""configs/detectron2 against configs/drconv: the same schedule and the same DRConv places."""
import runpy

import pytest

pytest.importorskip('detectron2',
                    reason='detectron2 is not installed; `make setup-core` builds it '
                    'from its source tarball into .venv-core')

from d2_helpers import CONFIG_DIR, REPO_ROOT, drconv_cfg  # noqa: E402

MMDET_DIR = REPO_ROOT / 'configs' / 'drconv'
# The mmdet configs give the batch per GPU; the paper trains on 8 GPUs.
GPUS = 8


def mmdet_settings(name):
    """The assignments of an mmdet config file itself (its _base_ is not merged)."""
    return runpy.run_path(str(MMDET_DIR / name))


@pytest.mark.parametrize('d2_name, mmdet_name', [
    ('mask_rcnn_R_50_FPN_180k.yaml', 'mask-rcnn_r50_fpn_180k_coco.py'),
    ('mask_rcnn_R_50_DRFPN_8R_finetune_20k.yaml', 'mask-rcnn_r50_drfpn-8r_finetune-20k_coco.py'),
])
def test_schedule_equals_the_mmdet_config(d2_name, mmdet_name):
    cfg = drconv_cfg(CONFIG_DIR / d2_name)
    mmdet = mmdet_settings(mmdet_name)
    warmup, steps = mmdet['param_scheduler']
    assert cfg.SOLVER.MAX_ITER == mmdet['max_iters']
    assert list(cfg.SOLVER.STEPS) == steps['milestones'] and cfg.SOLVER.GAMMA == steps['gamma']
    assert cfg.SOLVER.BASE_LR == mmdet['optim_wrapper']['optimizer']['lr']
    assert (cfg.SOLVER.WARMUP_FACTOR, cfg.SOLVER.WARMUP_ITERS) == (warmup['start_factor'],
                                                                   warmup['end'])
    assert cfg.SOLVER.CHECKPOINT_PERIOD == mmdet['interval'] == cfg.TEST.EVAL_PERIOD
    baseline = mmdet_settings('mask-rcnn_r50_fpn_180k_coco.py')
    assert cfg.SOLVER.IMS_PER_BATCH == GPUS * baseline['train_dataloader']['batch_size']
    assert cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE == 512 and cfg.MODEL.MASK_ON
    assert cfg.MODEL.RESNETS.DEPTH == 50


@pytest.mark.parametrize('regions', [4, 8, 16])
def test_drconv_configs_equal_the_mmdet_ones(regions):
    cfg = drconv_cfg(CONFIG_DIR / f'mask_rcnn_R_50_DRFPN_{regions}R_180k.yaml')
    neck = mmdet_settings(f'mask-rcnn_r50_drfpn-{regions}r_180k_coco.py')['model']['neck']
    if 'drconv_layers' not in neck:
        neck = {**mmdet_settings('mask-rcnn_r50_drfpn-8r_180k_coco.py')['model']['neck'], **neck}
    # mmdet's fpn_convs.i is detectron2's output conv of level p(i + 2).
    levels = [f'p{int(name.split(".")[1]) + 2}' for name in neck['drconv_layers']]
    assert all(name.startswith('fpn_convs.') for name in neck['drconv_layers'])
    node = cfg.MODEL.DRCONV
    assert (node.REGION_NUM, node.GENERATOR, node.LEVELS,
            node.CONVS) == (neck['drconv_cfg']['region_num'],
                            neck['drconv_cfg'].get('generator', 'basis'), levels, ['output'])
    assert cfg.MODEL.BACKBONE.NAME == 'build_resnet_drfpn_backbone'
    assert cfg.SOLVER.MAX_ITER == 180000
