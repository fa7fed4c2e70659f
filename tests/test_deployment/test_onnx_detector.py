"""Detectors exported with tools/deployment/pytorch2onnx.py and run by ONNX Runtime."""
import glob
import json
import os.path as osp
import sys

import numpy as np
import onnxruntime as ort
import pytest
import torch
from helpers import DEMO_DRFPN_CONFIG, NEEDS_DYNAMO_EXPORTER, REPO_ROOT, run_tool, tiny_run_options
from mmdet.structures import DetDataSample

from drconv_mmdet.deployment import check_standard_ops, export_onnx
from drconv_mmdet.deployment.detector import build_detector, exporter_for

PY = sys.executable
DETNAS_DRCONV_CONFIG = 'configs/detnas/faster-rcnn_detnas-300m-drconv-8r_fpn-4conv1fc_90k_coco.py'
# (height, width) of the export example, then another size through the same file; both are
# multiples of 32, so that mmdet's img_shape is the padded shape too.
SIZES = [(128, 160), (160, 96)]


def _image(height, width, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, height, width, generator=generator) * 255


def _session(path):
    return ort.InferenceSession(path, providers=['CPUExecutionProvider'])


def _mmdet_predict(detector, image):
    """mmdet's own test-time path on one image, predictions in input pixels."""
    height, width = image.shape[2:]
    sample = DetDataSample(metainfo=dict(img_shape=(height, width),
                                         ori_shape=(height, width),
                                         pad_shape=(height, width),
                                         scale_factor=(1.0, 1.0),
                                         batch_input_shape=(height, width)))
    data = detector.data_preprocessor({'inputs': [image[0]], 'data_samples': [sample]})
    with torch.no_grad():
        return detector.predict(data['inputs'], data['data_samples'])[0].pred_instances


def _seeded_detector(config, **cfg_options):
    torch.manual_seed(0)
    detector = build_detector(str(REPO_ROOT / config),
                              cfg_options={
                                  'model.backbone.init_cfg': None,
                                  **cfg_options
                              })
    detector.init_weights()
    return detector


@pytest.fixture(scope='module')
def drfpn_detector():
    return _seeded_detector(DEMO_DRFPN_CONFIG)


@pytest.fixture(scope='module')
def detnas_detector():
    # Two regions: each of its many DRConvs unrolls a step per region into the graph.
    return _seeded_detector(DETNAS_DRCONV_CONFIG, **{'model.backbone.drconv_cfg.region_num': 2})


def _export(detector, features_only, path, exporter):
    wrapper, names, axes = exporter_for(detector, features_only)
    export_onnx(wrapper, (_image(*SIZES[0]), ), path, ['image'], names, axes, exporter=exporter)
    ops = check_standard_ops(path)
    return wrapper, ops


@pytest.mark.slow
@pytest.mark.parametrize(
    'name, exporter',
    [pytest.param('drfpn', 'dynamo', marks=NEEDS_DYNAMO_EXPORTER), ('detnas', 'torchscript')])
def test_features_match(request, tmp_path, name, exporter):
    detector = request.getfixturevalue(f'{name}_detector')
    path = str(tmp_path / 'features.onnx')
    wrapper, ops = _export(detector, True, path, exporter)
    assert 'NonZero' in ops and 'MatMul' in ops
    session = _session(path)
    for batch, (height, width) in zip((2, 1), SIZES):
        image = torch.cat([_image(height, width, seed) for seed in range(batch)])
        actual = session.run(None, {'image': image.numpy()})
        with torch.no_grad():
            expected = detector.extract_feat(
                detector.data_preprocessor({
                    'inputs': list(image),
                    'data_samples': None
                })['inputs'])
        assert len(actual) == len(expected)
        for a, e in zip(actual, expected):
            torch.testing.assert_close(torch.from_numpy(a), e, rtol=1e-4, atol=1e-4)


def _assert_same_detections(actual, expected, masks_too):
    boxes, scores, labels = (torch.from_numpy(a) for a in actual[:3])
    assert len(labels) > 0
    assert torch.equal(labels, expected.labels)
    torch.testing.assert_close(boxes, expected.bboxes, rtol=1e-3, atol=1e-2)
    torch.testing.assert_close(scores, expected.scores, rtol=1e-3, atol=1e-4)
    if masks_too:
        assert actual[3].shape[0] == len(labels)


@pytest.mark.slow
# The dynamo exporter takes minutes on these graphs (symbolic shapes of every region's
# pixel count); it is checked on the DRFPN features above.
@pytest.mark.parametrize('name, exporter', [('drfpn', 'torchscript'), ('detnas', 'torchscript')])
def test_detections_match_mmdet(request, tmp_path, name, exporter):
    detector = request.getfixturevalue(f'{name}_detector')
    path = str(tmp_path / 'detector.onnx')
    _, ops = _export(detector, False, path, exporter)
    assert {'NonMaxSuppression', 'RoiAlign', 'NonZero'} <= set(ops)
    session = _session(path)
    for height, width in SIZES:
        image = _image(height, width, seed=1)
        actual = session.run(None, {'image': image.numpy()})
        _assert_same_detections(actual, _mmdet_predict(detector, image), masks_too=name == 'drfpn')


@pytest.fixture(scope='module')
def trained_drfpn(toy_coco_root, tmp_path_factory):
    """The demo DRFPN model after a few iterations on the toy set, and its ONNX export."""
    work_dir = str(tmp_path_factory.mktemp('train_drfpn'))
    options = tiny_run_options(toy_coco_root, max_iters=6, checkpoint_interval=6)
    result = run_tool(PY, 'tools/train.py', DEMO_DRFPN_CONFIG, '--work-dir', work_dir, *options)
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = osp.join(work_dir, 'iter_6.pth')
    onnx_file = osp.join(work_dir, 'demo.onnx')
    result = run_tool(PY, 'tools/deployment/pytorch2onnx.py', DEMO_DRFPN_CONFIG, checkpoint,
                      '--out', onnx_file, '--shape', '128', '128', '--exporter', 'torchscript')
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'all in the default ONNX domain' in result.stdout
    return checkpoint, onnx_file


def _metrics(work_dir, pattern):
    (path, ) = glob.glob(osp.join(work_dir, pattern))
    with open(path) as f:
        return json.load(f)


@pytest.mark.slow
def test_onnx_coco_map_equals_pytorch(trained_drfpn, toy_coco_root, tmp_path):
    checkpoint, onnx_file = trained_drfpn
    # One image per batch: mmdet pads a batch to its largest image, which changes the features.
    options = tiny_run_options(toy_coco_root) + ['test_dataloader.batch_size=1']
    torch_dir, onnx_dir = str(tmp_path / 'torch'), str(tmp_path / 'onnx')
    result = run_tool(PY, 'tools/test.py', DEMO_DRFPN_CONFIG, checkpoint, '--work-dir', torch_dir,
                      *options)
    assert result.returncode == 0, result.stderr[-3000:]
    result = run_tool(PY, 'tools/deployment/test_onnx.py', DEMO_DRFPN_CONFIG, onnx_file,
                      '--work-dir', onnx_dir, *options)
    assert result.returncode == 0, result.stderr[-3000:]
    expected = _metrics(torch_dir, '*/*.json')
    actual = _metrics(onnx_dir, 'onnx_metrics.json')
    for key in ('coco/bbox_mAP', 'coco/segm_mAP', 'coco/bbox_mAP_50', 'coco/segm_mAP_50'):
        assert abs(actual[key] - expected[key]) <= 0.005, (key, actual[key], expected[key])


@pytest.mark.slow
def test_pytorch2onnx_rejects_a_low_opset(tmp_path):
    result = run_tool(PY, 'tools/deployment/pytorch2onnx.py', DEMO_DRFPN_CONFIG, '--out',
                      str(tmp_path / 'a.onnx'), '--opset', '13')
    assert result.returncode != 0
    assert 'ValueError: --opset must be >= 17' in result.stderr


@pytest.mark.slow
def test_test_onnx_rejects_a_features_file(tmp_path, toy_coco_root):
    detector = _seeded_detector(DEMO_DRFPN_CONFIG)
    path = str(tmp_path / 'features.onnx')
    wrapper, names, axes = exporter_for(detector, True)
    export_onnx(wrapper, (_image(64, 64), ), path, ['image'], names, axes, exporter='torchscript')
    result = run_tool(PY, 'tools/deployment/test_onnx.py', DEMO_DRFPN_CONFIG, path,
                      *tiny_run_options(toy_coco_root))
    assert result.returncode != 0
    assert 'is not a whole-detector export' in result.stderr


def test_single_stage_detectors_are_not_supported():
    detector = torch.nn.Module()
    with pytest.raises(NotImplementedError, match='supports two-stage detectors .* Module'):
        exporter_for(detector, False)


def test_masks_paste_like_mmdet(drfpn_detector):
    """Sanity of the masks output: the class channel of mmdet's mask head, after the sigmoid."""
    wrapper, _, _ = exporter_for(drfpn_detector, False)
    image = _image(*SIZES[0], seed=1)
    with torch.no_grad():
        boxes, scores, labels, masks = wrapper(image)
    assert masks.shape[1:] == (28, 28) and masks.shape[0] == len(labels)
    assert float(masks.min()) >= 0 and float(masks.max()) <= 1
    expected = _mmdet_predict(drfpn_detector, image)
    pasted = drfpn_detector.roi_head.mask_head._predict_by_feat_single(
        mask_preds=masks[:, None].numpy(),
        bboxes=boxes.clone(),
        labels=torch.zeros_like(labels),
        img_meta=dict(scale_factor=(1.0, 1.0), ori_shape=image.shape[2:]),
        rcnn_test_cfg=drfpn_detector.test_cfg.rcnn,
        rescale=True,
        activate_map=True)
    agreement = (pasted == expected.masks).float().mean()
    assert agreement > 0.999
    np.testing.assert_array_equal(labels.numpy(), expected.labels.numpy())
