"""``import drconv_mmdet``: the torch-only core everywhere, mmdet registration where mmdet is."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import REPO_ROOT


def _run_python(code: str, *path_first: Path) -> subprocess.CompletedProcess:
    """Runs ``code`` in a fresh interpreter with ``path_first`` and the repository on its path."""
    python_path = [str(p) for p in path_first] + [str(REPO_ROOT)]
    if os.environ.get('PYTHONPATH'):
        python_path.append(os.environ['PYTHONPATH'])
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join(python_path)}
    return subprocess.run([sys.executable, '-c', textwrap.dedent(code)],
                          cwd=REPO_ROOT,
                          env=env,
                          capture_output=True,
                          text=True,
                          timeout=300)


@pytest.mark.slow
def test_core_imports_with_torch_alone():
    # A None entry in sys.modules makes find_spec return None and any import of the name fail,
    # as if OpenMMLab were not installed; a stray import of it would fail this test.
    result = _run_python("""
        import sys
        for name in ('mmdet', 'mmcv', 'mmengine'):
            sys.modules[name] = None
        import torch
        import drconv_mmdet
        assert not any(name.startswith('drconv_mmdet.models') or name.startswith(
            'drconv_mmdet.datasets') for name in sys.modules), sorted(sys.modules)
        layer = drconv_mmdet.DRConv2d(3, 5, 3, padding=1, region_num=2)
        out = layer(torch.rand(2, 3, 6, 7))
        assert out.shape == (2, 5, 6, 7), out.shape
        model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.ReLU())
        assert drconv_mmdet.convert_to_drconv(model, ['0'], region_num=2) == ['0']
        assert isinstance(model[0], drconv_mmdet.DRConv2d)
        assert callable(drconv_mmdet.dr_conv2d)
        print('core ok')
    """)
    assert result.returncode == 0, result.stderr
    assert 'core ok' in result.stdout


@pytest.mark.slow
def test_broken_mmdet_fails_loudly(tmp_path):
    pytest.importorskip('mmdet', reason='the mmdet side of the import needs mmdet installed')
    fake = tmp_path / 'mmdet'
    fake.mkdir()
    (fake / '__init__.py').write_text("raise ImportError('this mmdet install is broken')\n")
    result = _run_python('import drconv_mmdet', tmp_path)
    assert result.returncode != 0
    assert 'ImportError: this mmdet install is broken' in result.stderr


@pytest.mark.slow
def test_import_registers_everything_with_mmdet():
    pytest.importorskip('mmdet', reason='the mmdet side of the import needs mmdet installed')
    result = _run_python("""
        import drconv_mmdet
        from mmdet.registry import DATASETS, MODELS
        from mmengine.registry import MODELS as MMENGINE_MODELS
        for name in ('DRConv', 'DRConv2d'):
            assert MODELS.get(name) is drconv_mmdet.DRConv2d, name
            assert MMENGINE_MODELS.get(name) is drconv_mmdet.DRConv2d, name
        assert MODELS.get('DRFPN') is drconv_mmdet.models.DRFPN
        assert MODELS.get('DetNAS') is drconv_mmdet.models.DetNAS
        assert DATASETS.get('ToyCocoDataset') is drconv_mmdet.datasets.ToyCocoDataset
        print('registered')
    """)
    assert result.returncode == 0, result.stderr
    assert 'registered' in result.stdout
