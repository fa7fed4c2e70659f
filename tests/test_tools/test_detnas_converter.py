import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from drconv_mmdet.models.backbones import DetNAS, convert_detnas_checkpoint
from drconv_mmdet.models.backbones.detnas_checkpoint import VOC_ARCH_OPS

REPO_ROOT = Path(__file__).resolve().parents[2]


def _random_state_dict(arch='COCO-FPN-300M'):
    """A DetNAS state dict with random values, so that loading it is observable."""
    state_dict = DetNAS(arch=arch).state_dict()
    for tensor in state_dict.values():
        if tensor.is_floating_point():
            tensor.uniform_()
    return state_dict


def _official_checkpoint(state_dict, wrapped=True, data_parallel=True):
    """The layout of an official ImageNet checkpoint: classifier included, maybe wrapped."""
    checkpoint = dict(state_dict)
    checkpoint.update({
        'last_conv.conv.weight': torch.rand(1024, 640, 1, 1),
        'last_conv.conv.bias': torch.rand(1024),
        'last_conv.bn.running_mean': torch.rand(1024),
        'fc.fc.weight': torch.rand(1000, 1024),
        'fc.fc.bias': torch.rand(1000),
    })
    if data_parallel:
        checkpoint = {f'module.{key}': value for key, value in checkpoint.items()}
    return dict(state_dict=checkpoint) if wrapped else checkpoint


@pytest.mark.parametrize('wrapped', [True, False])
@pytest.mark.parametrize('data_parallel', [True, False])
def test_convert_round_trip(tmp_path, wrapped, data_parallel):
    state_dict = _random_state_dict()
    converted = convert_detnas_checkpoint(_official_checkpoint(state_dict, wrapped, data_parallel))
    assert list(converted) == list(state_dict)

    path = tmp_path / 'detnas.pth'
    torch.save(dict(state_dict=converted, meta=dict(arch='COCO-FPN-300M')), path)
    model = DetNAS(init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    model.init_weights()
    loaded = model.state_dict()
    assert all(torch.equal(loaded[key], value) for key, value in state_dict.items())
    model.load_state_dict(converted, strict=True)


def test_convert_refuses_voc_checkpoint(monkeypatch):
    # DetNAS cannot build VOC-FPN-300M; register it only to produce its checkpoint.
    setting = dict(DetNAS.arch_settings['COCO-FPN-300M'], ops=VOC_ARCH_OPS['VOC-FPN-300M'])
    monkeypatch.setitem(DetNAS.arch_settings, 'VOC-FPN-300M', setting)
    checkpoint = _official_checkpoint(DetNAS(arch='VOC-FPN-300M').state_dict())
    monkeypatch.delitem(DetNAS.arch_settings, 'VOC-FPN-300M')
    with pytest.raises(ValueError, match='not a DetNAS COCO-FPN-300M checkpoint: it looks like '
                       'VOC-FPN-300M$'):
        convert_detnas_checkpoint(checkpoint)


def test_convert_tells_1_3g_from_3_8g():
    # The two share their op list; the stem width tells them apart.
    with pytest.raises(ValueError, match='not a DetNAS COCO-FPN-3.8G checkpoint: it looks like '
                       'COCO-FPN-1.3G$'):
        convert_detnas_checkpoint(DetNAS(arch='COCO-FPN-1.3G').state_dict(), 'COCO-FPN-3.8G')


def test_convert_refuses_checkpoint_without_block_keys():
    # A supernet holds every candidate op of block i under features.<i>.<op index>.
    supernet_like = {
        re.sub(r'^features\.(\d+)\.', r'features.\1.0.', key): value
        for key, value in DetNAS().state_dict().items()
    }
    with pytest.raises(ValueError, match='it has no DetNAS block keys'):
        convert_detnas_checkpoint(supernet_like)


def test_convert_refuses_unknown_architecture():
    state_dict = DetNAS().state_dict()
    key = 'features.0.conv.0.interstellar1a_shufflenet_7x7_branch2a.weight'
    state_dict[key.replace('7x7', '3x3')] = state_dict.pop(key)
    with pytest.raises(ValueError, match=r"its blocks \('shufflenet_3x3', 'shufflenet_5x5'.*\) "
                       'with a 16-channel stem match no known DetNAS architecture'):
        convert_detnas_checkpoint(state_dict)


@pytest.mark.parametrize('edit, message', [
    ('drop', r'missing keys 1 \(first_conv.bn.running_var\), unexpected keys 0 \(\)'),
    ('add', r'unexpected keys 1 \(features.0.extra.weight\)'),
    ('reshape', r'shape mismatches 1 \(first_conv.bn.running_var \(8,\) != \(16,\)\)'),
])
def test_convert_refuses_wrong_keys_or_shapes(edit, message):
    state_dict = DetNAS().state_dict()
    if edit == 'drop':
        del state_dict['first_conv.bn.running_var']
    elif edit == 'add':
        state_dict['features.0.extra.weight'] = torch.rand(1)
    else:
        state_dict['first_conv.bn.running_var'] = torch.rand(8)
    with pytest.raises(ValueError, match='checkpoint does not match DetNAS COCO-FPN-300M: .*'
                       + message):
        convert_detnas_checkpoint(state_dict)


def test_convert_rejects_unknown_arch():
    with pytest.raises(ValueError, match=r"arch must be one of \(.*\), got 'VOC-FPN-300M'"):
        convert_detnas_checkpoint({}, 'VOC-FPN-300M')


def test_converter_cli(tmp_path):
    state_dict = _random_state_dict()
    src, dst = tmp_path / 'COCO_FPN_300M.pkl', tmp_path / 'out' / 'detnas.pth'
    torch.save(_official_checkpoint(state_dict), src)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get(
        'PYTHONPATH', '')]))
    subprocess.run([sys.executable, 'tools/model_converters/detnas_to_mmdet.py', str(src),
                    str(dst)], cwd=REPO_ROOT, env=env, check=True, capture_output=True)
    checkpoint = torch.load(dst, weights_only=True)
    assert checkpoint['meta'] == dict(arch='COCO-FPN-300M', source='COCO_FPN_300M.pkl')
    assert all(torch.equal(checkpoint['state_dict'][key], value)
               for key, value in state_dict.items())
