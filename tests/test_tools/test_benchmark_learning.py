import json
import runpy
import subprocess
import sys

import pytest
import torch
from helpers import REPO_ROOT
from torch import nn

from drconv_mmdet.nn import DRConv2d

TOOL = str(REPO_ROOT / 'tools/analysis_tools/benchmark_learning.py')


@pytest.fixture(scope='module')
def tool():
    return runpy.run_path(TOOL)


def test_quick_mode_prints_and_writes_the_tables(tool, tmp_path, capsys):
    json_path, md_path = tmp_path / 'learning.json', tmp_path / 'learning.md'
    tool['main'](['--quick', '--threads', '1', '--out', str(json_path), str(md_path)])

    printed = capsys.readouterr().out
    rows = [line for line in printed.splitlines() if line.startswith('| k1 |')]
    # The best-schedule table, then the sweep table.
    assert [row.split(' | ')[1] for row in rows] == ['conv', 'paper', 'basis'] * 2
    assert '| network | layer | SGD 0.2 | AdamW 0.003 |' in printed
    assert md_path.read_text().split('\n\n', 1)[1].strip() == printed.split('\n\n', 1)[1].strip()
    meta = json.loads(json_path.read_text())
    assert (meta['train'], meta['val'], meta['test']) == (1005, 252, 540)
    variants = meta['variants']
    assert [v['generator'] for v in variants] == ['conv', 'paper', 'basis']
    for v in variants:
        assert len(v['runs']) == 2 and len(v['sweep']) == 2
        best = max(v['sweep'], key=lambda s: s['val_acc_mean'])
        assert (v['optimizer'], v['lr'], v['val_acc_mean']) == (best['optimizer'], best['lr'],
                                                                best['val_acc_mean'])
        assert 0 <= v['acc_mean'] <= 100 and 0 <= v['train_acc_mean'] <= 100
        assert v['params'] > 0 and v['epoch_cpu_s'] > 0
    assert 'largest_region_share' not in variants[0] and 'delta' not in variants[0]
    for v in variants[1:]:
        # m = 4 regions over 8x8 maps: the largest region holds at least a quarter of a map.
        assert 0.25 <= v['largest_region_share'] <= 1 and 1 <= v['regions_used'] <= 4
        assert v['params'] > variants[0]['params']
        assert v['delta'] == pytest.approx(v['acc_mean'] - variants[0]['acc_mean'])


@pytest.mark.slow
def test_parallel_runs_give_the_serial_results(tmp_path):
    outputs = {}
    for jobs in (1, 2):
        out = tmp_path / f'jobs{jobs}.json'
        subprocess.run([
            sys.executable, TOOL, '--quick', '--generators', 'conv', 'basis', '--threads', '1',
            '--jobs',
            str(jobs), '--out',
            str(out)
        ],
                       check=True,
                       cwd=REPO_ROOT,
                       capture_output=True)
        outputs[jobs] = [[(r['optimizer'], r['lr'], r['accuracy'], r['val_accuracy'])
                          for r in v['runs']] for v in json.loads(out.read_text())['variants']]
    assert outputs[1] == outputs[2]


def fake_run(optimizer, lr, seed, val, test):
    return dict(optimizer=optimizer,
                lr=lr,
                seed=seed,
                val_accuracy=val,
                accuracy=test,
                train_accuracy=100.0,
                params=10,
                epoch_cpu_s=0.1,
                largest_region_share=[],
                regions_used=[])


def test_summary_chooses_the_schedule_on_validation_only(tool):
    runs = [
        fake_run('sgd', 0.2, 0, 90.0, 99.0),
        fake_run('sgd', 0.2, 1, 80.0, 99.0),
        fake_run('adamw', 1e-3, 0, 86.0, 70.0),
        fake_run('adamw', 1e-3, 1, 86.0, 72.0)
    ]
    baseline = tool['summarise'](dict(network='k1', generator='conv'), runs, None)
    # Validation means: SGD 85, AdamW 86; the test split would have chosen SGD.
    assert (baseline['optimizer'], baseline['lr']) == ('adamw', 1e-3)
    assert baseline['acc_mean'] == 71.0 and baseline['acc_std'] == pytest.approx(2**0.5)
    assert [s['val_acc_mean'] for s in baseline['sweep']] == [85.0, 86.0]

    other = [fake_run('sgd', 0.2, seed, 90.0, 75.0 + seed) for seed in (0, 1)]
    row = tool['summarise'](dict(network='k1', generator='basis'), other, baseline)
    assert row['delta'] == pytest.approx(75.5 - 71.0)
    assert 0 < row['p_value'] < 1


def test_grid_puts_conv_first_in_every_network(tool):
    args = tool['parse_args'](['--networks', 'mobilenet', 'k3', '--generators', 'basis', 'conv'])
    grid = [(v['network'], v['generator']) for v in tool['variant_grid'](args)]
    assert grid == [('mobilenet', 'conv'), ('mobilenet', 'basis'), ('k3', 'conv'), ('k3', 'basis')]
    assert tool['schedules'](tool['parse_args'](['--sgd-lrs', '0.1',
                                                 '--adamw-lrs'])) == [('sgd', 0.1)]


def test_static_kernel_variant_skipped_with_a_note(tool, monkeypatch, capsys):
    variant_grid = tool['variant_grid']
    monkeypatch.setitem(variant_grid.__globals__, 'supports_static_kernel', lambda: False)
    grid = variant_grid(tool['parse_args'](['--networks', 'k1']))
    assert [v['generator'] for v in grid] == ['conv', 'paper', 'basis']
    assert 'paper-static variants are skipped' in capsys.readouterr().out


def pointwise_convs(model):
    return [
        m for m in model.modules()
        if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.groups == 1
    ]


@pytest.mark.parametrize('network, kernel, swapped', [('k1', 1, 2), ('k3', 3, 2),
                                                      ('shufflenet', 1, 8), ('mobilenet', 1, 6)])
def test_networks_swap_exactly_their_convs(tool, network, kernel, swapped):
    plain = tool['build_model'](network, 8, 'conv', 4)
    drconv = tool['build_model'](network, 8, 'paper-static', 4)
    drconvs = [m for m in drconv.modules() if isinstance(m, DRConv2d)]
    assert len(drconvs) == swapped
    assert all(m.kernel_size == (kernel, kernel) and m.region_num == 4 for m in drconvs)
    assert all(m.generator_type == 'paper' and m.generator.static_kernel for m in drconvs)
    if kernel == 1:
        # Every 1x1 conv of the plain network, and only those, is a DRConv in the other.
        assert [(c.in_channels, c.out_channels) for c in pointwise_convs(plain)
                ] == [(m.in_channels, m.out_channels) for m in drconvs]
        assert not pointwise_convs(drconv)
    for model in (plain, drconv):
        assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_shuffle_unit_splits_and_interleaves_the_branches(tool):
    unit = tool['ShuffleUnit'](4, 4, True, lambda i, o: nn.Identity())
    unit.right = nn.Identity()
    x = torch.arange(4.).view(1, 4, 1, 1)
    # Channels [0, 1 | 2, 3]: the halves (0, 1) and (2, 3) interleave.
    assert unit(x).flatten().tolist() == [0., 2., 1., 3.]


def test_inverted_residual_adds_its_input_only_where_the_channels_stay(tool):
    model = tool['build_model']('mobilenet', 8, 'conv', 4)
    blocks = [m for m in model.modules() if isinstance(m, tool['InvertedResidual'])]
    assert [b.residual for b in blocks] == [False, False, True]


def test_data_splits_are_disjoint_and_stratified(tool):
    data = tool['load_data']()
    assert {
        split: len(labels)
        for split, (_, labels) in data.items()
    } == dict(train=1005, val=252, test=540)
    flat = {
        split: {tuple(image.flatten().tolist())
                for image in images}
        for split, (images, _) in data.items()
    }
    # Some digits repeat exactly in the data set, so a few images may be in two splits, but
    # no split is a subset of another.
    assert len(flat['val'] - flat['train']) > 200 and len(flat['test'] - flat['train']) > 450
    for _, labels in data.values():
        assert torch.bincount(labels, minlength=10).min() > 0
    assert abs(data['train'][0].mean().item()) < 1e-5


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
    (['--jobs', '0'], '--jobs must be >= 1, but got 0'),
    (['--width', '0'], '--width must be >= 1, but got 0'),
    (['--regions', '0'], '--regions must be >= 1, but got 0'),
    (['--networks', 'resnet'], r"--networks must be among .*, but got \['resnet'\]"),
    (['--generators', 'cond'], r"--generators must be among .*, but got \['cond'\]"),
    (['--sgd-lrs', '0'], r'--sgd-lrs must be positive, but got \[0.0\]'),
    (['--adamw-lrs', '-1'], r'--adamw-lrs must be positive, but got \[-1.0\]'),
    (['--sgd-lrs', '--adamw-lrs'], '--sgd-lrs and --adamw-lrs are both empty: nothing to train'),
])
def test_bad_arguments(tool, argv, message):
    with pytest.raises(ValueError, match=message):
        tool['parse_args'](argv)
