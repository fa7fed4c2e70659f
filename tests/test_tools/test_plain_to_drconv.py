"""tools/model_converters/plain_to_drconv.py: a plain detector's checkpoint into its DRConv config.

On the toy set: the converted DRFPN demo detector predicts what the plain demo detector predicts,
gets the same COCO metrics from tools/test.py, and trains on from the converted checkpoint.
"""
import glob
import importlib.util
import json
import pickle
import sys

import pytest
import torch
from helpers import DEMO_CONFIG, DEMO_DRFPN_CONFIG, REPO_ROOT, run_tool, tiny_run_options
from mmdet.registry import MODELS
from mmengine.config import Config
from mmengine.registry import init_default_scope

from drconv_mmdet.models.backbones import DetNAS

PY = sys.executable
TOOL = 'tools/model_converters/plain_to_drconv.py'
# The paper's generator in the demo DRFPN's 3x3 convs, which it cannot start from alone.
PAPER_GENERATOR = 'model.neck.drconv_cfg.generator=paper'


def _assert_ok(result):
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]


def _load_tool():
    spec = importlib.util.spec_from_file_location('plain_to_drconv', REPO_ROOT / TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def plain_checkpoint(toy_coco_root, tmp_path_factory):
    """The plain demo detector after 2 training iterations."""
    work_dir = tmp_path_factory.mktemp('plain')
    result = run_tool(PY, 'tools/train.py', DEMO_CONFIG, '--work-dir', str(work_dir),
                      *tiny_run_options(toy_coco_root, max_iters=2))
    _assert_ok(result)
    return str(work_dir / 'iter_2.pth')


def _test(config, checkpoint, data_root, work_dir, *options):
    """COCO metrics and predictions of tools/test.py."""
    out = str(work_dir / 'predictions.pkl')
    result = run_tool(PY, 'tools/test.py', config, checkpoint, '--work-dir', str(work_dir), '--out',
                      out, *tiny_run_options(data_root), *options)
    _assert_ok(result)
    (metrics_file, ) = glob.glob(str(work_dir / '*' / '*.json'))
    with open(metrics_file) as f:
        metrics = json.load(f)
    with open(out, 'rb') as f:
        return metrics, pickle.load(f)


@pytest.mark.slow
def test_converted_detector_predicts_as_the_plain_one_and_trains_on(plain_checkpoint, toy_coco_root,
                                                                    tmp_path):
    converted = str(tmp_path / 'drfpn_from_plain.pth')
    result = run_tool(PY, TOOL, plain_checkpoint, DEMO_DRFPN_CONFIG, converted)
    _assert_ok(result)
    assert '2 DRConv layers start from the plain convs (neck.fpn_convs.0.conv, ' \
           'neck.fpn_convs.1.conv)' in result.stdout

    (tmp_path / 'plain').mkdir()
    (tmp_path / 'drconv').mkdir()
    plain_metrics, plain_predictions = _test(DEMO_CONFIG, plain_checkpoint, toy_coco_root,
                                             tmp_path / 'plain')
    drconv_metrics, drconv_predictions = _test(DEMO_DRFPN_CONFIG, converted, toy_coco_root,
                                               tmp_path / 'drconv')
    for metric in ('coco/bbox_mAP', 'coco/segm_mAP'):
        assert drconv_metrics[metric] == plain_metrics[metric]
    assert len(drconv_predictions) == len(plain_predictions) == 4
    assert sum(len(p['pred_instances']['scores']) for p in plain_predictions) > 0
    for drconv, plain in zip(drconv_predictions, plain_predictions):
        for key in ('bboxes', 'scores', 'labels'):
            torch.testing.assert_close(drconv['pred_instances'][key],
                                       plain['pred_instances'][key],
                                       rtol=1e-4,
                                       atol=1e-3)

    work_dir = tmp_path / 'finetune'
    options = tiny_run_options(toy_coco_root, max_iters=1)
    result = run_tool(PY, 'tools/train.py', DEMO_DRFPN_CONFIG, '--work-dir', str(work_dir),
                      *options, f'load_from={converted}')
    _assert_ok(result)
    log = result.stdout + result.stderr
    assert f'Load checkpoint from {converted}' in log
    assert 'do not match exactly' not in log
    assert (work_dir / 'iter_1.pth').is_file()


@pytest.mark.slow
def test_cli_refuses_the_paper_generator_on_3x3_convs_without_static_kernel(
        plain_checkpoint, tmp_path):
    out = tmp_path / 'out.pth'
    result = run_tool(PY, TOOL, plain_checkpoint, DEMO_DRFPN_CONFIG, str(out), '--cfg-options',
                      PAPER_GENERATOR)
    assert result.returncode == 1
    assert ("error: the DRConv at neck.fpn_convs.0.conv cannot start from the plain conv: the "
            "paper generator cannot start from a (3, 3) kernel: its expand bias is shared by "
            "the taps. Use generator='basis' or static_kernel=True") in result.stderr
    assert not out.exists()


@pytest.fixture(scope='module')
def models():
    """The plain demo detector's state dict and a builder of the DRFPN demo detector."""
    init_default_scope('mmdet')
    plain = MODELS.build(Config.fromfile(str(REPO_ROOT / DEMO_CONFIG)).model).state_dict()
    drconv_cfg = Config.fromfile(str(REPO_ROOT / DEMO_DRFPN_CONFIG)).model
    return plain, lambda: MODELS.build(drconv_cfg)


@pytest.mark.parametrize('edit, message', [
    ('reshape', r'neck\.fpn_convs\.0\.conv\.weight has shape \(64, 32, 3, 3\), but the DRConv '
     r'at neck\.fpn_convs\.0\.conv needs a conv weight of shape \(64, 64, 3, 3\)'),
    ('drop_drconv', r'the plain checkpoint has no neck\.fpn_convs\.1\.conv\.weight: no conv at '
     r'the DRConv position neck\.fpn_convs\.1\.conv'),
    ('drop_other', r'does not fit the DRConv config apart from its DRConvs: missing keys 1 '
     r'\(backbone\.conv1\.weight\), unexpected keys 0 \(\)'),
    ('add', r'missing keys 0 \(\), unexpected keys 1 \(neck\.extra\.weight\)'),
])
def test_refusals(models, edit, message):
    plain, build = models
    plain = dict(plain)
    if edit == 'reshape':
        plain['neck.fpn_convs.0.conv.weight'] = torch.rand(64, 32, 3, 3)
    elif edit == 'drop_drconv':
        del plain['neck.fpn_convs.1.conv.weight']
    elif edit == 'drop_other':
        del plain['backbone.conv1.weight']
    else:
        plain['neck.extra.weight'] = torch.rand(1)
    with pytest.raises(ValueError, match=message):
        _load_tool().start_from_plain(build(), plain)


def test_start_from_plain_keeps_every_plain_weight(models):
    plain, build = models
    model = build()
    assert _load_tool().start_from_plain(
        model, plain) == ['neck.fpn_convs.0.conv', 'neck.fpn_convs.1.conv']
    state = model.state_dict()
    assert all(torch.equal(state[key], value) for key, value in plain.items() if key in state)
    for name in ('neck.fpn_convs.0.conv', 'neck.fpn_convs.1.conv'):
        torch.testing.assert_close(state[f'{name}.generator.bases'].mean(dim=0),
                                   plain[f'{name}.weight'])


def test_start_from_plain_lets_detnas_start_its_own_drconvs():
    """DetNAS starts its DRConvs (and keeps its shared guide convs) while loading."""
    plain = {f'backbone.{key}': value for key, value in DetNAS().state_dict().items()}
    model = torch.nn.Module()
    model.backbone = DetNAS(drconv_cfg=dict(type='DRConv',
                                            region_num=2,
                                            generator='basis',
                                            num_bases=2),
                            shared_guide=True)
    started = _load_tool().start_from_plain(model, plain)
    assert started == sorted(f'backbone.{name}' for name in model.backbone.drconv_names)
    assert len(started) == 46
