"""Installs of a copy of the source where the compiled CPU kernels do not build: without a working
compiler (``CC=false CXX=false``) or with C++ that does not compile, regular and editable, the
package installs as pure Python, and says so at the op's first call on CPU; with
``DRCONV_REQUIRE_CPU_KERNELS=1`` the install, or the import, fails.

pip runs on this interpreter's environment (``--no-build-isolation``: its torch, so that setup.py
tries the build) into a folder of the test, which ``PYTHONPATH`` puts first.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]
SOURCE = [
    'setup.py', 'setup.cfg', 'pyproject.toml', 'MANIFEST.in', 'README.md', 'requirements',
    'drconv_mmdet', 'configs', 'tools', 'model-index.yml'
]
NO_COMPILER = dict(CC='false', CXX='false')
# Imports the installed package and runs the op twice on CPU: one warning.
USE = '''
import sys
import warnings
# An editable install of the plugin in this environment would find its kernels for the package
# at PYTHONPATH (setuptools' finder maps the package's submodules to its source tree).
sys.meta_path = [finder for finder in sys.meta_path
                 if not getattr(finder, '__module__', '').startswith('__editable__')]
import torch
import drconv_mmdet
from drconv_mmdet.ops import cpu_extension
print(drconv_mmdet.__file__)
print(cpu_extension.AVAILABLE)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    for _ in range(2):
        drconv_mmdet.dr_conv2d(torch.randn(1, 2, 5, 5), torch.randn(1, 2, 3, 2, 3, 3),
                               torch.randn(1, 2, 3, 3))
print(len(caught))
print(caught[0].message if caught else '')
'''


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """A copy of the source without builds of the kernels."""
    copy = tmp_path / 'source'
    ignore = shutil.ignore_patterns('__pycache__', '_C_torch*', '.mim', '*.egg-info')
    for name in SOURCE:
        src = REPO_ROOT / name
        if src.is_dir():
            shutil.copytree(src, copy / name, ignore=ignore, symlinks=True)
        else:
            copy.mkdir(exist_ok=True)
            shutil.copy2(src, copy / name)
    return copy


def environment(**variables: str) -> Dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != 'PYTHONPATH'}
    env.update({
        'DRCONV_REQUIRE_CPU_KERNELS': '0',
        'PIP_DISABLE_PIP_VERSION_CHECK': '1',
        **variables
    })
    return env


def pip_install(args: List[str], env: Dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    # --ignore-installed: an install into a --prefix would otherwise first uninstall the plugin
    # from this environment, where the other tests and tools run it.
    return subprocess.run(
        [sys.executable, '-m', 'pip', 'install', '--no-deps', '--ignore-installed', *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600)


def use(path: Path, cwd: Path, **variables: str) -> subprocess.CompletedProcess:
    """Runs USE with ``path`` first on the path, away from the repository."""
    env = environment(PYTHONPATH=str(path), **variables)
    return subprocess.run([sys.executable, '-c', USE],
                          env=env,
                          cwd=cwd,
                          capture_output=True,
                          text=True,
                          timeout=300)


def assert_pure_python(path: Path, cwd: Path) -> None:
    """The package at ``path`` has no kernels, imports, and its op warns once on CPU; it does
    not import where the kernels are required."""
    assert not list((path / 'drconv_mmdet').glob('_C_torch*'))
    result = use(path, cwd)
    assert result.returncode == 0, result.stderr
    location, available, warned, message = result.stdout.splitlines()
    assert Path(location).resolve() == (path / 'drconv_mmdet' / '__init__.py').resolve()
    assert (available, warned) == ('False', '1')
    assert message.startswith('the compiled DRConv CPU kernels are not built for torch')
    result = use(path, cwd, DRCONV_REQUIRE_CPU_KERNELS='1')
    assert result.returncode != 0
    assert 'DRCONV_REQUIRE_CPU_KERNELS=1, but the compiled DRConv CPU kernels are not built' in \
        result.stderr


def break_kernels(source: Path) -> None:
    kernels = source / 'drconv_mmdet' / 'ops' / 'csrc' / 'region_products_cpu.cpp'
    kernels.write_text('#error this source does not compile\n')


@pytest.mark.parametrize('isolation', [False, True])
def test_regular_install_without_compiler(source, tmp_path, isolation):
    """Under build isolation torch does not import in the build, which makes no attempt."""
    target = tmp_path / 'target'
    args = ['--target', str(target), str(source)]
    result = pip_install(args if isolation else ['--no-build-isolation', *args],
                         environment(**NO_COMPILER), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert_pure_python(target, tmp_path)


def test_editable_install_without_compiler(source, tmp_path):
    result = pip_install(
        ['--no-build-isolation', '--prefix',
         str(tmp_path / 'prefix'), '-e',
         str(source)], environment(**NO_COMPILER), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert_pure_python(source, tmp_path)


@pytest.mark.parametrize('editable', [False, True])
def test_install_of_uncompilable_kernels(source, tmp_path, editable):
    break_kernels(source)
    args = (['--prefix', str(tmp_path / 'prefix'), '-e']
            if editable else ['--target', str(tmp_path / 'target')])
    result = pip_install(['--no-build-isolation', *args, str(source)], environment(), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert_pure_python(source if editable else tmp_path / 'target', tmp_path)


# yapf: disable
@pytest.mark.parametrize('route, variables, message', [
    (['--no-build-isolation'], NO_COMPILER,
     "DRCONV_REQUIRE_CPU_KERNELS=1, but the compiled CPU kernels did not build: Command '['false'"),
    ([], NO_COMPILER, 'DRCONV_REQUIRE_CPU_KERNELS=1, but the compiled CPU kernels cannot be '
     'built: torch does not import here'),
    (['--no-build-isolation'], {},
     'DRCONV_REQUIRE_CPU_KERNELS=1, but the compiled CPU kernels did not build'),
])
# yapf: enable
def test_required_kernels_fail_the_install(source, tmp_path, route, variables, message):
    break_kernels(source)
    result = pip_install(
        [*route, '--target', str(tmp_path / 'target'),
         str(source)], environment(DRCONV_REQUIRE_CPU_KERNELS='1', **variables), tmp_path)
    assert result.returncode != 0
    assert message in result.stdout + result.stderr
