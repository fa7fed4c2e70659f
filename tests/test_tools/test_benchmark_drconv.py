import importlib.metadata
import importlib.util
import platform
import runpy
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
TOOL = str(REPO_ROOT / 'tools/analysis_tools/benchmark_drconv.py')
TINY = [
    '--batch', '2', '--channels', '4', '--out-channels', '3', '--sizes', '7x5', '--kernels', '3',
    '--regions', '2', '--repeat', '1', '--threads', '1'
]


@pytest.fixture(scope='module')
def tool():
    return runpy.run_path(TOOL)


@pytest.mark.parametrize('amp', [None, 'bf16'])
def test_op_and_layer_tables(tool, tmp_path, capsys, amp):
    out = tmp_path / 'bench.md'
    tool['main'](TINY +
                 ['--parts', 'op', 'layer', '--out', str(out)] + (['--amp', amp] if amp else []))
    text = out.read_text()
    assert text.strip() in capsys.readouterr().out
    assert ('autocast bf16' if amp else 'float32') in text.splitlines()[0]
    for part in ('op', 'layer'):
        table = text.split(f'### {part}\n\n')[1].split('\n\n')[0].splitlines()
        assert table[0].startswith('| B | C->O | HxW | k | m | conv2d fwd ms')
        assert 'op fwd / conv2d' in table[0] and 'reference train / conv2d' in table[0]
        cells = table[2].strip('| ').split(' | ')
        assert cells[:5] == ['2', '4->3', '7x5', '3', '2']
        assert all(float(cell) > 0 for cell in cells[5:])


@pytest.mark.slow
def test_memory_column(tool, capsys):
    tool['main'](TINY + ['--parts', 'op', '--memory'])
    header = [line for line in capsys.readouterr().out.splitlines() if line.startswith('| B |')][0]
    assert header.endswith('conv2d peak MB | op peak MB | reference peak MB |')


# yapf: disable
@pytest.mark.parametrize('argv,message', [
    (['--batch', '0'], r'--batch must be >= 1, but got 0'),
    (['--sizes', '7by5'], r"--sizes must look like 100x168, but got \['7by5'\]"),
    (['--timer', 'cpu', '--device', 'cuda'],
     r'--timer cpu times CPU work only, but got --device cuda'),
])
# yapf: enable
def test_bad_arguments(tool, argv, message):
    with pytest.raises(ValueError, match=message):
        tool['parse_args'](argv)


def test_cuda_without_a_device(tool, monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    with pytest.raises(ValueError,
                       match=r'--device cuda needs a CUDA device, but '
                       r'torch.cuda.is_available\(\) is False'):
        tool['parse_args'](['--device', 'cuda'])


def test_implementation_choice(tool, capsys):
    from drconv_mmdet.ops import cpu_extension

    tool['main'](TINY + ['--parts', 'op'])
    default = (f'compiled ({cpu_extension.instruction_set()})'
               if cpu_extension.AVAILABLE else 'PyTorch')
    assert f'{default} CPU kernels' in capsys.readouterr().out
    tool['main'](TINY + ['--parts', 'op', '--implementation', 'pytorch'])
    assert 'PyTorch CPU kernels' in capsys.readouterr().out


@pytest.mark.skipif(not (platform.system() == 'Linux' and platform.machine() == 'x86_64')
                    and importlib.util.find_spec('triton') is None,
                    reason=f'triton has no wheels for {platform.system()} {platform.machine()}')
@pytest.mark.skipif(
    importlib.util.find_spec('triton') is not None
    and int(importlib.metadata.version('triton').split('.')[0]) < 3,
    reason='the Triton kernels need triton >= 3.0 (torch < 2.4 comes with triton 2)')
@pytest.mark.slow
def test_triton_choice(tool, capsys):
    """The Triton kernels on a CUDA device, else on CPU in Triton's interpreter (see
    tests/conftest.py)."""
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
    tool['main'](TINY + ['--parts', 'op', '--device', device, '--implementation', 'triton'])
    assert ', Triton ' in capsys.readouterr().out
