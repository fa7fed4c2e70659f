#!/usr/bin/env bash
# One-command environment for drconv-mmdet: a virtual environment in the repo with torch, mmcv 2.1.0
# (with ops, built once from the sdist and cached as a wheel), mmengine, mmdet, the test tools and the
# plugin in editable mode. Safe to run again: a finished setup is recognised by a stamp and takes seconds.
#
# Variables:
#   VENV=.venv              where the environment lives
#   PYTHON=python3          interpreter used to create it
#   TORCH_VERSION=2.13.0    torch to install ...
#   KEEP_TORCH=0            ... or 1 to keep the torch already in the environment (GPU users)
#   TORCHVISION_VERSION=    torchvision to install next to torch (empty: none)
#   TORCH_WHEELHOUSE=       a folder that keeps the downloaded torch wheels and their dependencies, so
#                           that several environments with the same torch download it once (empty:
#                           plain pip install)
#   OPENMMLAB=1             0: a torch-only environment (no mmengine, mmcv, mmdet), checked to have
#                           none of OpenMMLab
#   EDITABLE=1              0: leave the plugin out (to install it another way, as `make test-mim` does)
#   CONSTRAINTS=            a pip constraints file applied to every install (requirements/compat.txt
#                           for torch 2.1)
#   MMCV_WHEEL_CACHE=~/.cache/drconv-mmdet/wheels   built mmcv wheels, keyed by python, torch and CUDA
#   MAX_JOBS=$(nproc)       parallel compile jobs for the mmcv and detectron2 builds
#   DETECTRON2=0            1: also build detectron2 from its source tarball against the installed torch
#                           (wheel cached next to mmcv's) and install it with its pure-Python dependencies
#   DETECTRON2_TARBALL=../shared/vendor/detectron2/detectron2-*.tar.gz   that tarball (a glob matching one
#                           file, relative to the repository root)
#   MMPRETRAIN=0            1: also install mmpretrain (MMPRETRAIN_VERSION=1.2.0), for drconv_mmdet.mmpretrain;
#                           it imports torchvision, so set TORCHVISION_VERSION too
#   DRCONV_REQUIRE_CPU_KERNELS=0   1: the plugin's compiled CPU kernels must build and load, or the
#                           install and every import of the plugin fail (the Makefile sets 1 where a
#                           C++ compiler works)
set -euo pipefail

cd "$(dirname "$0")/../.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
KEEP_TORCH=${KEEP_TORCH:-0}
TORCHVISION_VERSION=${TORCHVISION_VERSION:-}
TORCH_WHEELHOUSE=${TORCH_WHEELHOUSE:-}
OPENMMLAB=${OPENMMLAB:-1}
EDITABLE=${EDITABLE:-1}
CONSTRAINTS=${CONSTRAINTS:-}
MMCV_VERSION=2.1.0
MMENGINE_VERSION=0.10.7
MMDET_VERSION=3.3.0
MMCV_WHEEL_CACHE=${MMCV_WHEEL_CACHE:-$HOME/.cache/drconv-mmdet/wheels}
DETECTRON2=${DETECTRON2:-0}
MMPRETRAIN=${MMPRETRAIN:-0}
MMPRETRAIN_VERSION=${MMPRETRAIN_VERSION:-1.2.0}
DETECTRON2_TARBALL=${DETECTRON2_TARBALL:-../shared/vendor/detectron2/detectron2-*.tar.gz}

say() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

if [ ! -x "$VENV/bin/python" ]; then
    say "creating virtual environment $VENV with $($PYTHON --version 2>&1)"
    "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check)
if [ -n "$CONSTRAINTS" ]; then
    [ -f "$CONSTRAINTS" ] || die "CONSTRAINTS=$CONSTRAINTS: no such file"
    # The environment variable reaches every pip command, the mmcv build's included.
    export PIP_CONSTRAINT="${PIP_CONSTRAINT:+$PIP_CONSTRAINT }$(realpath "$CONSTRAINTS")"
fi

stamp_inputs() {
    cat setup.py requirements/*.txt tools/misc/setup_env.sh drconv_mmdet/ops/csrc/*
    echo "${DRCONV_REQUIRE_CPU_KERNELS:-0}"
    echo "$TORCH_VERSION $KEEP_TORCH $TORCHVISION_VERSION $OPENMMLAB $EDITABLE $CONSTRAINTS"
    echo "$DETECTRON2 $DETECTRON2_TARBALL $MMPRETRAIN $MMPRETRAIN_VERSION"
    echo "$MMCV_VERSION $MMENGINE_VERSION $MMDET_VERSION"
}
STAMP="$VENV/.drconv-mmdet-setup"
stamp=$(stamp_inputs | sha256sum | cut -d' ' -f1)

check_env() {
    if [ "$DETECTRON2" = 1 ]; then
        detectron2_ok || return 1
    fi
    if [ "$OPENMMLAB" = 0 ]; then
        check_torch_only_env
        return
    fi
    "$PY" - <<'PY'
import mmcv
from mmcv.ops import RoIAlign, nms  # noqa: F401  (compiled ops, needed by Mask R-CNN)
import mmdet
import mmengine
import torch

import drconv_mmdet
print(f'[setup] ok: torch {torch.__version__}, mmcv {mmcv.__version__} (ops), mmengine '
      f'{mmengine.__version__}, mmdet {mmdet.__version__}, drconv_mmdet {drconv_mmdet.__version__}')
PY
}

check_torch_only_env() {
    "$PY" - <<'PY'
import importlib.util
import sys

import torch

import drconv_mmdet
found = [name for name in ('mmengine', 'mmcv', 'mmdet') if importlib.util.find_spec(name)]
if found:
    sys.exit(f'[setup] this environment must be torch-only but has {", ".join(found)}')
print(f'[setup] ok: torch {torch.__version__}, drconv_mmdet {drconv_mmdet.__version__}, '
      'no OpenMMLab')
PY
}

detectron2_ok() {
    "$PY" -c 'import detectron2, torch; from detectron2 import _C  # noqa: F401  (its compiled ops)
print(f"[setup] ok: detectron2 {detectron2.__version__} with its compiled ops")'
}

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$stamp" ] && check_env 2>/dev/null; then
    exit 0
fi

say "installing build tools (requirements/build.txt)"
"${PIP[@]}" install -q -r requirements/build.txt

if [ "$KEEP_TORCH" = 1 ] && "$PY" -c 'import torch' 2>/dev/null; then
    say "keeping torch $("$PY" -c 'import torch; print(torch.__version__)')"
else
    torch_pkgs=("torch==$TORCH_VERSION")
    [ -z "$TORCHVISION_VERSION" ] || torch_pkgs+=("torchvision==$TORCHVISION_VERSION")
    say "installing ${torch_pkgs[*]}"
    if [ -n "$TORCH_WHEELHOUSE" ]; then
        # pip's own HTTP cache is no help here: proxies that drop Cache-Control headers disable it.
        "${PIP[@]}" download -q -d "$TORCH_WHEELHOUSE" "${torch_pkgs[@]}"
        "${PIP[@]}" install -q --no-index --find-links "$TORCH_WHEELHOUSE" "${torch_pkgs[@]}"
    else
        "${PIP[@]}" install -q "${torch_pkgs[@]}"
    fi
fi
# Every later install keeps this torch (and torchvision): a requirement that an older torch cannot
# meet (for example triton 3 next to torch 2.1) must fail, not replace torch.
pins="$VENV/torch-pins.txt"
"$PY" - "$pins" <<'PY'
import importlib.metadata as metadata
import sys

with open(sys.argv[1], 'w') as f:
    for name in ('torch', 'torchvision'):
        try:
            f.write(f'{name}=={metadata.version(name)}\n')
        except metadata.PackageNotFoundError:
            pass
PY
export PIP_CONSTRAINT="${PIP_CONSTRAINT:+$PIP_CONSTRAINT }$(realpath "$pins")"

# A compiled wheel is only valid for the python, torch and CUDA it was built against. The CUDA ops
# are built only where a GPU is visible, so the key says when a wheel has them.
wheel_key() {
    "$PY" -c 'import sys, torch
cuda = f"-cuda{torch.version.cuda}" if torch.cuda.is_available() else ""
print(f"cp{sys.version_info[0]}{sys.version_info[1]}-torch{torch.__version__}{cuda}")'
}

mmcv_ok() {
    "$PY" -c "import mmcv, sys; from mmcv.ops import RoIAlign, nms; sys.exit(mmcv.__version__ != '$MMCV_VERSION')" 2>/dev/null
}

install_mmcv() {
    cuda=$("$PY" -c 'import torch; print(int(torch.cuda.is_available()))')
    key=$(wheel_key)
    cache_dir="$MMCV_WHEEL_CACHE/mmcv-$MMCV_VERSION-$key"
    wheel=$(ls "$cache_dir"/mmcv-"$MMCV_VERSION"-*.whl 2>/dev/null | head -n 1 || true)
    if [ -z "$wheel" ]; then
        mkdir -p "$cache_dir"
        log="$cache_dir/build.log"
        # --no-cache-dir: pip would otherwise hand back the wheel it built for another torch
        # (`undefined symbol` at `import mmcv.ops`).
        say "building mmcv $MMCV_VERSION with ops from the sdist (CUDA: $cuda). This is slow:"
        say "about 16 minutes on 2 CPU cores for the CPU ops, much longer with CUDA. Full log: $log"
        build_dir=$(mktemp -d)
        set +e
        MMCV_WITH_OPS=1 FORCE_CUDA=$cuda MAX_JOBS=${MAX_JOBS:-$(nproc)} \
            "${PIP[@]}" wheel -v --no-cache-dir --no-build-isolation --no-deps -w "$build_dir" "mmcv==$MMCV_VERSION" 2>&1 \
            | tee "$log" | grep --line-buffered -oE '^ *\[[0-9]+/[0-9]+\]' | sed -u 's/^ */[setup]   compiled /'
        status=${PIPESTATUS[0]}
        set -e
        [ "$status" = 0 ] || die "mmcv build failed (exit $status); the end of $log says why"
        mv "$build_dir"/mmcv-*.whl "$cache_dir"/
        rmdir "$build_dir" 2>/dev/null || true
        wheel=$(ls "$cache_dir"/mmcv-"$MMCV_VERSION"-*.whl | head -n 1)
        say "cached $wheel"
    else
        say "installing cached $wheel"
    fi
    "${PIP[@]}" install -q --no-deps --force-reinstall "$wheel"
    mmcv_ok || die "mmcv $MMCV_VERSION is installed but its compiled ops do not import"
}

if [ "$OPENMMLAB" = 1 ]; then
    # mmcv imports mmengine, so mmengine comes first; mmcv's other needs come with it.
    say "installing mmengine==$MMENGINE_VERSION"
    "${PIP[@]}" install -q "mmengine==$MMENGINE_VERSION" Pillow
    if mmcv_ok; then
        say "mmcv $MMCV_VERSION with ops already installed"
    else
        install_mmcv
    fi
    say "installing mmdet==$MMDET_VERSION and the test tools"
    "${PIP[@]}" install -q "mmengine==$MMENGINE_VERSION" "mmdet==$MMDET_VERSION" -r requirements/runtime.txt \
        -r requirements/tests.txt
else
    say "installing the test tools"
    "${PIP[@]}" install -q -r requirements/tests.txt
fi
if ! "$PY" -c 'import triton' 2>/dev/null \
        && "$PY" -c 'import sys, torch; sys.exit(tuple(map(int, torch.__version__.split(".")[:2])) < (2, 4))'; then
    say "installing triton (requirements/triton.txt)"
    "${PIP[@]}" install -q -r requirements/triton.txt
fi

install_detectron2() {
    # detectron2 is not on PyPI: it is built from its source tarball against the torch in place.
    local tarballs=($DETECTRON2_TARBALL)
    [ "${#tarballs[@]}" = 1 ] && [ -f "${tarballs[0]}" ] \
        || die "DETECTRON2_TARBALL=$DETECTRON2_TARBALL must name one detectron2 source tarball"
    local tarball=${tarballs[0]} name cuda cache_dir wheel log build_dir status
    name=$(basename "$tarball" .tar.gz)
    cuda=$("$PY" -c 'import torch; print(int(torch.cuda.is_available()))')
    cache_dir="$MMCV_WHEEL_CACHE/$name-$(wheel_key)"
    wheel=$(ls "$cache_dir"/detectron2-*.whl 2>/dev/null | head -n 1 || true)
    if [ -z "$wheel" ]; then
        mkdir -p "$cache_dir"
        log="$cache_dir/build.log"
        say "building detectron2 from $tarball (CUDA: $cuda). Full log: $log"
        build_dir=$(mktemp -d)
        tar xzf "$tarball" -C "$build_dir"
        set +e
        FORCE_CUDA=$cuda MAX_JOBS=${MAX_JOBS:-$(nproc)} "${PIP[@]}" wheel -v --no-cache-dir --no-build-isolation \
            --no-deps -w "$build_dir/wheel" "$build_dir/$name" > "$log" 2>&1
        status=$?
        set -e
        [ "$status" = 0 ] || die "detectron2 build failed (exit $status); the end of $log says why"
        mv "$build_dir"/wheel/detectron2-*.whl "$cache_dir"/
        rm -rf "$build_dir"
        wheel=$(ls "$cache_dir"/detectron2-*.whl | head -n 1)
        say "cached $wheel"
    else
        say "installing cached $wheel"
    fi
    # Its dependencies are pure Python and come from PyPI; torch is not among them.
    "${PIP[@]}" install -q --force-reinstall --no-deps "$wheel"
    "${PIP[@]}" install -q "$wheel" -r requirements/detectron2.txt
    detectron2_ok >/dev/null || die "detectron2 is installed but does not import with its compiled ops"
}

if [ "$DETECTRON2" = 1 ]; then
    install_detectron2
fi
# MMPRETRAIN=1: also mmpretrain, for the classification backbones (drconv_mmdet.mmpretrain). It
# imports torchvision, which TORCHVISION_VERSION installs with torch.
if [ "$MMPRETRAIN" = 1 ]; then
    "$PY" -c 'import torchvision' 2>/dev/null \
        || die "MMPRETRAIN=1 needs a torchvision that imports: set TORCHVISION_VERSION (0.16.2 for torch 2.1.2)"
    say "installing mmpretrain==$MMPRETRAIN_VERSION"
    "${PIP[@]}" install -q "mmpretrain==$MMPRETRAIN_VERSION"
    "$PY" -c 'import mmpretrain, torchvision
from mmpretrain.models import MobileNetV2, ShuffleNetV2  # noqa: F401
print(f"[setup] ok: mmpretrain {mmpretrain.__version__}, torchvision {torchvision.__version__}")' \
        || die "mmpretrain is installed but does not import; see the error above"
fi
if [ "$EDITABLE" = 1 ]; then
    say "installing drconv-mmdet in editable mode (without its dependencies: they are in place)"
    "${PIP[@]}" install -q --no-build-isolation --no-deps -e .
fi

check_env || die "the environment does not import or lacks a part; see the error above"
echo "$stamp" > "$STAMP"
