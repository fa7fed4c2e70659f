"""Every config of the project builds the model it describes; the paper's schedule is what a
Runner builds from it; the metafiles list the configs."""
import copy
from pathlib import Path

import pytest
import torch
import yaml
from helpers import REPO_ROOT, schedule_runner
from mmdet.registry import MODELS
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.runner import IterBasedTrainLoop

from drconv_mmdet.nn import DRConv2d

# configs/mmpretrain needs mmpretrain: tests/test_mmpretrain/test_configs.py builds those.
CONFIGS = sorted(p for p in (REPO_ROOT / 'configs').rglob('*.py')
                 if '_base_' not in p.parts and 'mmpretrain' not in p.parts)
PAPER_CONFIGS = sorted((REPO_ROOT / 'configs/drconv').glob('mask-rcnn_r50_*_180k_coco.py'))


def _no_sync_bn(cfg):
    """SyncBN needs a process group; the same model with BN is what one CPU process builds."""
    if isinstance(cfg, dict):
        if cfg.get('type') == 'SyncBN':
            cfg['type'] = 'BN'
        for value in cfg.values():
            _no_sync_bn(value)
    elif isinstance(cfg, (list, tuple)):
        for value in cfg:
            _no_sync_bn(value)


def _drconv_cfgs(cfg):
    """Every ``drconv_cfg`` set in a (model) config."""
    if isinstance(cfg, dict):
        for key, value in cfg.items():
            if key == 'drconv_cfg' and value is not None:
                yield value
            yield from _drconv_cfgs(value)
    elif isinstance(cfg, (list, tuple)):
        for value in cfg:
            yield from _drconv_cfgs(value)


def _relative(path: Path) -> str:
    return str(path.relative_to(REPO_ROOT))


@pytest.mark.parametrize('path', CONFIGS, ids=_relative)
def test_model_has_drconvs_where_the_config_says(path: Path):
    init_default_scope('mmdet')
    cfg = Config.fromfile(str(path))
    # A config that mmdet's own tools run must import the plugin itself.
    assert 'drconv_mmdet' in cfg.custom_imports['imports']
    model_cfg = copy.deepcopy(cfg.model)
    _no_sync_bn(model_cfg)
    model = MODELS.build(model_cfg)
    drconvs = {name: m for name, m in model.named_modules() if isinstance(m, DRConv2d)}

    drconv_cfgs = list(_drconv_cfgs(cfg.model))
    if not drconv_cfgs:
        assert not drconvs
        return
    assert drconvs
    assert {m.region_num for m in drconvs.values()} == {c.region_num for c in drconv_cfgs}
    if cfg.model.neck.type == 'DRFPN':
        # Each named FPN conv is a DRConv of the shape of the conv it replaced, and no other is.
        layers = cfg.model.neck.drconv_layers
        assert sorted(drconvs) == sorted(f'neck.{layer}.conv' for layer in layers)
        for name, layer in drconvs.items():
            assert layer.kernel_size == ((1, 1) if '.lateral_convs.' in name else (3, 3))


@pytest.fixture(scope='module')
def paper_runner(tmp_path_factory):
    """What a Runner builds from the 8R config, in one process with ``--auto-scale-lr``."""
    cfg = Config.fromfile(str(REPO_ROOT / 'configs/drconv/mask-rcnn_r50_drfpn-8r_180k_coco.py'))
    return schedule_runner(cfg, str(tmp_path_factory.mktemp('paper_schedule')), scale_lr=True)


def _lr_at(runner, iterations):
    """The learning rate the Runner's schedulers give at each of ``iterations`` (ascending).

    They are stepped through the paper's 500 warm-up iterations; after those they are resumed
    (their state as ``Runner.resume`` restores it) one iteration before each later one, which
    skips no change of a schedule whose milestones are among ``iterations``.
    """
    optimizer = runner.optim_wrapper.optimizer
    runner.optim_wrapper.step()  # the schedulers expect an optimizer step before theirs
    lrs, done = {}, 0
    for target in iterations:
        if done >= 500:
            for scheduler in runner.param_schedulers:
                state = scheduler.state_dict()
                # A scheduler counts its own steps between its begin and its end.
                state.update(_global_step=target - 1,
                             last_step=min(target - 1, scheduler.end - 1) - scheduler.begin)
                scheduler.load_state_dict(state)
            done = target - 1
        while done < target:
            for scheduler in runner.param_schedulers:
                scheduler.step()
            done += 1
        lrs[target] = optimizer.param_groups[0]['lr']
    return lrs


def test_paper_schedule_as_a_runner_builds_it(paper_runner):
    """Sec. 4.3: 180k iterations of 16 images, warm-up with factor 0.33 over 500 iterations, lr
    x 0.1 at 120k, 140k and 150k."""
    assert isinstance(paper_runner.train_loop, IterBasedTrainLoop)
    assert paper_runner.max_iters == 180000
    optimizer = paper_runner.optim_wrapper.optimizer
    assert type(optimizer) is torch.optim.SGD
    assert optimizer.defaults['momentum'] == 0.9 and optimizer.defaults['weight_decay'] == 1e-4
    # The config's lr (our reading of the paper's) is for the paper's 16 images per iteration:
    # one process of the config's batch gets it scaled by batch / 16.
    batch = paper_runner.train_dataloader.batch_size
    base_lr = 0.02 * batch / 16
    steps = [120000, 140000, 150000]
    later_milestones = [
        set(s.milestones) for s in paper_runner.param_schedulers if hasattr(s, 'milestones')
    ]
    assert later_milestones == [set(steps)]
    factors = {
        0: 0.33,
        1: None,
        499: 1,
        500: 1,
        119999: 1,
        120000: 0.1,
        139999: 0.1,
        140000: 0.01,
        149999: 0.01,
        150000: 0.001,
        179999: 0.001
    }
    lrs = _lr_at(paper_runner, sorted(factors))
    for iteration, factor in factors.items():
        if factor is not None:
            assert lrs[iteration] == pytest.approx(base_lr * factor), iteration
    # mmengine's LinearLR reaches the full lr at its last iteration, end - 1, linearly.
    assert lrs[1] - lrs[0] == pytest.approx((lrs[499] - lrs[0]) / 499)


@pytest.mark.parametrize('path', PAPER_CONFIGS, ids=_relative)
def test_paper_configs_sample_512_rois(path: Path):
    init_default_scope('mmdet')
    cfg = Config.fromfile(str(path))
    roi_head = MODELS.build(dict(cfg.model.roi_head, train_cfg=cfg.model.train_cfg.rcnn))
    assert roi_head.bbox_sampler.num == 512


def test_metafiles_name_their_configs():
    index = yaml.safe_load((REPO_ROOT / 'model-index.yml').read_text())
    listed = []
    for metafile in index['Import']:
        meta = yaml.safe_load((REPO_ROOT / metafile).read_text())
        collections = {collection['Name'] for collection in meta['Collections']}
        for model in meta['Models']:
            config = REPO_ROOT / model['Config']
            assert config.is_file() and config.stem == model['Name']
            assert model['In Collection'] in collections
            # Results are this model's measured numbers: none until weights of ours exist.
            assert 'Results' not in model and 'Weights' not in model
            listed.append(config)
    assert listed and len(set(listed)) == len(listed)
