import json
import runpy

import pytest
import torch
from helpers import REPO_ROOT

from drconv_mmdet.nn import DRConv2d

TOOL = str(REPO_ROOT / 'tools/analysis_tools/benchmark_learning.py')


@pytest.fixture(scope='module')
def tool():
    return runpy.run_path(TOOL)


def test_quick_mode_prints_and_writes_the_table(tool, tmp_path, capsys):
    json_path, md_path = tmp_path / 'learning.json', tmp_path / 'learning.md'
    tool['main'](['--quick', '--threads', '1', '--out', str(json_path), str(md_path)])

    table = capsys.readouterr().out
    rows = [line for line in table.splitlines() if line.startswith('| 1 | 8 |')]
    assert [row.split(' | ')[2] for row in rows] == ['conv', 'paper', 'basis']
    assert md_path.read_text().split('\n\n', 1)[1].strip() == table.split('\n\n', 1)[1].strip()
    variants = json.loads(json_path.read_text())['variants']
    assert [v['generator'] for v in variants] == ['conv', 'paper', 'basis']
    for v in variants:
        assert 0 <= v['acc_mean'] <= 100 and 0 <= v['train_acc_mean'] <= 100
        assert v['params'] > 0 and v['epoch_s'] > 0 and v['epoch_cpu_s'] > 0
    assert 'largest_region_share' not in variants[0]
    for v in variants[1:]:
        # m = 4 regions over 8x8 maps: the largest region holds at least a quarter of a map.
        assert 0.25 <= v['largest_region_share'] <= 1 and 1 <= v['regions_used'] <= 4
        assert v['params'] > variants[0]['params']


def test_grid_sweeps_regions_at_the_narrowest_width_only(tool):
    args = tool['parse_args'](['--kernels', '3', '--widths', '16', '8', '--regions', '8',
                               '--sweep-regions', '4', '8'])
    grid = [(v['width'], v['generator'], v['regions']) for v in tool['variant_grid'](args)]
    assert grid == [(16, 'conv', None), (16, 'paper', 8), (16, 'basis', 8), (16, 'paper-static', 8),
                    (8, 'conv', None), (8, 'paper', 8), (8, 'paper', 4), (8, 'basis', 8),
                    (8, 'basis', 4), (8, 'paper-static', 8)]


def test_conv_baseline_comes_first(tool):
    args = tool['parse_args'](['--kernels', '1', '--widths', '8', '--generators', 'basis', 'conv',
                               '--sweep-regions'])
    assert [v['generator'] for v in tool['variant_grid'](args)] == ['conv', 'basis']


def test_static_kernel_variant_skipped_with_a_note(tool, monkeypatch, capsys):
    main = tool['main']
    monkeypatch.setitem(main.__globals__, 'supports_static_kernel', lambda: False)
    monkeypatch.setitem(main.__globals__, 'run',
                        lambda *a, **k: pytest.fail('no variant should be trained'))
    main(['--generators', 'paper-static'])
    assert 'paper-static variants are skipped' in capsys.readouterr().out


def test_inner_convs(tool):
    conv = tool['inner_conv'](8, 3, 'conv', 4)
    assert type(conv) is torch.nn.Conv2d and conv.padding == (1, 1)
    drconv = tool['inner_conv'](8, 3, 'paper-static', 4)
    assert isinstance(drconv, DRConv2d) and drconv.generator_type == 'paper'
    assert drconv.region_num == 4 and drconv.generator.static_kernel
    assert tool['inner_conv'](8, 1, 'basis', 8).generator_type == 'basis'
    model = tool['build_model'](8, 1, 'paper', 4)
    assert sum(isinstance(m, DRConv2d) for m in model.modules()) == 2
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_random_shift_moves_each_image_by_at_most_one_pixel(tool):
    images = torch.arange(1, 1 + 64 * 6, dtype=torch.float).view(6, 1, 8, 8)
    shifted = tool['random_shift'](images, torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(images, (1, 1, 1, 1))
    offsets = set()
    for image, out in zip(padded, shifted):
        matches = [(dy, dx) for dy in range(3) for dx in range(3)
                   if torch.equal(out, image[:, dy:dy + 8, dx:dx + 8])]
        assert len(matches) == 1
        offsets.add(matches[0])
    assert len(offsets) > 1  # not the same shift for the whole batch


@pytest.mark.parametrize('argv, message', [
    (['--epochs', '0'], '--epochs must be >= 1, but got 0'),
    (['--threads', '0'], '--threads must be >= 1, but got 0'),
    (['--kernels', '2'], r'--kernels must be odd positive ints, but got \[2\]'),
    (['--widths', '0'], r'--widths must be positive ints, but got \[0\]'),
    (['--sweep-regions', '-4'], r'--sweep-regions must be positive ints, but got \[-4\]'),
    (['--generators', 'cond'], r"--generators must be among .*, but got \['cond'\]"),
])
def test_bad_arguments(tool, argv, message):
    with pytest.raises(ValueError, match=message):
        tool['parse_args'](argv)
