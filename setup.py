"""Packaging for drconv-mmdet, with the OpenMMLab ``.mim`` extension.

``mim train drconv_mmdet CONFIG`` and ``mim test`` look for ``configs/``, ``tools/`` and
``model-index.yml`` inside the installed package (``drconv_mmdet/.mim``), so they are copied there
for a regular install and linked there for an editable one. mim 0.3.9 finds the package at the
folder that holds its metadata joined with its name: for a regular install that is the package in
site-packages; a PEP 660 editable install leaves only metadata there, so mim works after a regular
install only.
"""
import os
import os.path as osp
import shutil
import sys
from typing import List

from setuptools import find_packages, setup

REPO_ROOT = osp.dirname(osp.abspath(__file__))
MIM_FILES = ('configs', 'tools', 'model-index.yml')
CPU_KERNELS = 'drconv_mmdet/ops/csrc/region_products_cpu.cpp'
CPU_KERNEL_HEADERS = [
    'drconv_mmdet/ops/csrc/small_gemm.h', 'drconv_mmdet/ops/csrc/small_gemm_kernel.inc'
]
REQUIRE_VARIABLE = 'DRCONV_REQUIRE_CPU_KERNELS'


def read_version() -> str:
    namespace: dict = {}
    with open(osp.join(REPO_ROOT, 'drconv_mmdet', 'version.py')) as f:
        exec(f.read(), namespace)
    return namespace['__version__']


def parse_requirements(path: str) -> List[str]:
    with open(osp.join(REPO_ROOT, path)) as f:
        lines = (line.split('#', 1)[0].strip() for line in f)
        return [line for line in lines if line and not line.startswith('-')]


def add_mim_extension() -> None:
    # PEP 660 editable installs run `editable_wheel`, not `develop`; both get links so that edits
    # to configs and tools show through, while wheels and sdists need real copies.
    if {'develop', 'editable_wheel'} & set(sys.argv):
        mode = 'copy' if os.name == 'nt' else 'symlink'
    elif {'sdist', 'bdist_wheel', 'build', 'install'} & set(sys.argv):
        mode = 'copy'
    else:
        return
    mim_path = osp.join(REPO_ROOT, 'drconv_mmdet', '.mim')
    os.makedirs(mim_path, exist_ok=True)
    for name in MIM_FILES:
        src = osp.join(REPO_ROOT, name)
        dst = osp.join(mim_path, name)
        if osp.islink(dst) or osp.isfile(dst):
            os.remove(dst)
        elif osp.isdir(dst):
            shutil.rmtree(dst)
        if mode == 'symlink':
            os.symlink(osp.relpath(src, mim_path), dst)
        elif osp.isdir(src):
            shutil.copytree(src, dst)
        else:
            shutil.copyfile(src, dst)


def kernels_required() -> bool:
    """``DRCONV_REQUIRE_CPU_KERNELS=1``: the build fails where the compiled CPU kernels do not
    build (as ``drconv_mmdet.ops.cpu_extension.required``; the project's setup sets it where a
    C++ compiler works). Otherwise the package installs as pure Python without them."""
    return os.environ.get(REQUIRE_VARIABLE, '0') == '1'


def cpu_extension() -> dict:
    """``setup()`` arguments that build the compiled CPU kernels, where torch imports here.

    Under pip's build isolation torch is missing: the package is then pure Python, and the op
    runs its PyTorch kernels. The module's name carries the torch version it is built against
    (see drconv_mmdet/ops/cpu_extension.py): an extension only works with that torch, and
    environments with different torch share an editable checkout.
    """
    try:
        import torch
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError as error:
        if kernels_required():
            raise RuntimeError(f'{REQUIRE_VARIABLE}=1, but the compiled CPU kernels cannot be '
                               f'built: torch does not import here ({error}). Install with '
                               '`pip install --no-build-isolation` into an environment with '
                               'torch') from error
        return {}
    # ATen's parallel_for is an OpenMP pragma in a header: without OpenMP it runs serially.
    openmp = {'linux': ['-fopenmp'], 'win32': ['/openmp']}.get(sys.platform, [])
    version = torch.__version__.split('+')[0].replace('.', '_')

    class OptionalBuildExtension(BuildExtension):
        """Leaves the extension out, with a warning, where it does not build (no working
        compiler, a compile error): the package works without it. Unless it is required."""

        def build_extensions(self) -> None:
            # torch's compiler check runs here, before any extension is compiled.
            try:
                super().build_extensions()
            except Exception as error:  # compilers fail in many exception types
                if kernels_required():
                    raise RuntimeError(f'{REQUIRE_VARIABLE}=1, but the compiled CPU kernels did '
                                       f'not build: {error}') from error
                names = ', '.join(ext.name for ext in self.extensions)
                print(
                    f'WARNING: {names} was not built ({error}); the DRConv op will run its '
                    'PyTorch kernels on CPU',
                    file=sys.stderr)
                # Nothing is left to copy or package: an editable install would otherwise copy
                # the missing library into the source tree and stop.
                self.extensions = []

    extension = CppExtension(f'drconv_mmdet._C_torch{version}', [CPU_KERNELS],
                             depends=CPU_KERNEL_HEADERS,
                             extra_compile_args=['-O3' if os.name != 'nt' else '/O2', *openmp],
                             extra_link_args=[flag for flag in openmp if flag != '/openmp'])
    return dict(ext_modules=[extension], cmdclass={'build_ext': OptionalBuildExtension})


if __name__ == '__main__':
    add_mim_extension()
    with open(osp.join(REPO_ROOT, 'README.md'), encoding='utf-8') as f:
        long_description = f.read()
    setup(name='drconv-mmdet',
          version=read_version(),
          description='Dynamic Region-Aware Convolution (DRConv) for MMDetection 3.x',
          long_description=long_description,
          long_description_content_type='text/markdown',
          license='Apache-2.0',
          python_requires='>=3.8',
          packages=find_packages(exclude=('configs', 'tools', 'tests', 'tests.*')),
          include_package_data=True,
          install_requires=parse_requirements('requirements/runtime.txt'),
          extras_require={
              'tests': parse_requirements('requirements/tests.txt'),
              'mim': parse_requirements('requirements/mminstall.txt'),
          },
          classifiers=[
              'Programming Language :: Python :: 3',
              'Topic :: Scientific/Engineering :: Artificial Intelligence',
          ],
          zip_safe=False,
          **cpu_extension())
