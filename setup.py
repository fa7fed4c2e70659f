"""Packaging for drconv-mmdet, with the OpenMMLab ``.mim`` extension.

``mim train drconv_mmdet CONFIG`` and ``mim test`` look for ``configs/``, ``tools/`` and
``model-index.yml`` inside the installed package (``drconv_mmdet/.mim``), so they are copied there for a
regular install and linked there for an editable one. mim 0.3.9 finds the package at the folder that
holds its metadata joined with its name: for a regular install that is the package in site-packages;
a PEP 660 editable install leaves only metadata there, so mim works after a regular install only.
"""
import os
import os.path as osp
import shutil
import sys
from typing import List

from setuptools import find_packages, setup

REPO_ROOT = osp.dirname(osp.abspath(__file__))
MIM_FILES = ('configs', 'tools', 'model-index.yml')


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


if __name__ == '__main__':
    add_mim_extension()
    with open(osp.join(REPO_ROOT, 'README.md'), encoding='utf-8') as f:
        long_description = f.read()
    setup(
        name='drconv-mmdet',
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
        zip_safe=False)
