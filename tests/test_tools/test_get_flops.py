import re
import runpy

import pytest
from helpers import REPO_ROOT

DEMO_CONFIG = str(REPO_ROOT / 'configs/demo/mask-rcnn_r18_fpn_toy-coco.py')
DEMO_DRFPN_CONFIG = str(REPO_ROOT / 'configs/demo/mask-rcnn_r18_drfpn-8r_toy-coco.py')


@pytest.fixture(scope='module')
def get_flops():
    return runpy.run_path(str(REPO_ROOT / 'tools/analysis_tools/get_flops.py'))['main']


def _row(output, first_cell):
    """The cells of the table row that starts with ``first_cell``."""
    for line in output.splitlines():
        cells = [cell.strip() for cell in line.strip('|').split('|')]
        if cells[0] == first_cell:
            return cells[1:]
    raise AssertionError(f'no row {first_cell!r} in:\n{output}')


def test_drfpn_model_table(get_flops, capsys):
    get_flops([DEMO_DRFPN_CONFIG, '--shape', '256', '256'])
    output = capsys.readouterr().out

    assert 'Input: (1, 3, 256, 256), a 256 x 256 image' in output
    parts = {name: _row(output, name) for name in ('backbone', 'neck', 'rpn_head', 'roi_head')}
    total_params, total_madds, share = _row(output, 'total')
    assert share == '100.0%'
    assert abs(sum(float(row[1]) for row in parts.values()) - float(total_madds)) < 0.003
    assert abs(sum(float(row[0]) for row in parts.values()) - float(total_params)) < 0.003

    # The 64-channel P2 and P3 maps of a 256 x 256 image are 64 x 64 and 32 x 32.
    for name, size in (('neck.fpn_convs.0.conv (8R)', 64), ('neck.fpn_convs.1.conv (8R)', 32)):
        params, madds, guide, generator, conv, all_regions = map(float, _row(output, name))
        assert conv == round(64 * 64 * 9 * size * size / 1e9, 3)  # the plain 3x3 conv
        assert guide == round(8 * 64 * 9 * size * size / 1e9, 3)
        # 1x1 convs on the 3 x 3 pooled input: 64 -> 64 hidden, then 64 -> 8*64*64 in 8 groups.
        assert generator == round((64 * 64 + 8 * 64 * 64 * 8) * 9 / 1e9, 3)
        assert abs(madds - (guide + generator + conv)) < 0.002
        assert abs(all_regions - (madds + 7 * conv)) < 0.01
    assert re.search(r'\| all 2 DRConv layers \(\d+\.\d% of MADDs\) ', output)
    assert 'Not counted' not in output


def test_backbone_only(get_flops, capsys):
    get_flops([DEMO_CONFIG, '--shape', '64', '--backbone-only'])
    output = capsys.readouterr().out
    assert 'Input: (1, 3, 64, 64), a 64 x 64 image' in output
    # ResNet-18 stem: 7x7 conv, 3 -> 64, stride 2.
    assert _row(output, 'conv1')[1] == f'{64 * 3 * 49 * 32 * 32 / 1e9:.3f}'
    assert _row(output, 'layer4')
    assert 'DRConv layer' not in output


@pytest.mark.parametrize('shape', [['0', '5'], ['4', '4', '4']])
def test_bad_shape(get_flops, shape):
    with pytest.raises(ValueError,
                       match=r'--shape must be one or two positive ints \(S or H W\), '
                       rf'but got \[{", ".join(shape)}\]'):
        get_flops([DEMO_CONFIG, '--shape', *shape])


def test_missing_config(get_flops, tmp_path):
    with pytest.raises(FileNotFoundError, match='config file .*missing.py.* does not exist'):
        get_flops([str(tmp_path / 'missing.py')])
