#!/usr/bin/env bash
# The op's checks and timings on a CUDA GPU, in one run: the CUDA tests (parity with the float64
# loop and the CPU, no host syncs, CUDA-graph replay, deterministic mode, torch.compile, half
# types) and the Triton kernels' tests compiled for the GPU, then benchmark_drconv.py's tables
# with --device cuda: the shapes preset in float32 (TF32, as cuDNN runs convolutions) and under
# bfloat16 autocast, the DetNAS-300M backbone at batch 32, 224 x 224 (needs mmdet), and
# torchvision's Mask R-CNN R50-FPN with DRConv in its P2 and P3 output convs at batch 2,
# 800 x 1216 (needs torchvision).
# Everything lands in $OUT (default work_dirs/gpu_check): tests.log, and one Markdown file per
# table with its command on the first line.
# Usage: bash tools/analysis_tools/gpu_check.sh   (PYTHON=... for another interpreter)
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT:-work_dirs/gpu_check}
mkdir -p "$OUT"

"$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "no CUDA device")'
"$PY" - <<'EOF'
import torch
from drconv_mmdet.ops.implementations import default_kernels
props = torch.cuda.get_device_properties(0)
print(f'[gpu_check] {props.name}, compute capability {props.major}.{props.minor}, torch '
      f'{torch.__version__}, default kernels: float32 '
      f'{default_kernels(torch.empty(0, device="cuda"))}, bfloat16 '
      f'{default_kernels(torch.empty(0, device="cuda", dtype=torch.bfloat16))}')
EOF

echo "[gpu_check] CUDA and Triton tests -> $OUT/tests.log"
# No pipe into tee here: a failing test must stop the script with its status.
"$PY" -m pytest tests/test_ops/test_cuda.py tests/test_ops/test_triton.py -q -rs \
    -p no:cacheprovider > "$OUT/tests.log" 2>&1 || { tail -40 "$OUT/tests.log"; exit 1; }
tail -3 "$OUT/tests.log"

bench() {
    local name=$1
    shift
    local command=("$PY" tools/analysis_tools/benchmark_drconv.py --device cuda "$@")
    echo "[gpu_check] ${command[*]}"
    "${command[@]}" --out "$OUT/$name.md.tmp"
    { echo "Command: ${command[*]}"; echo; cat "$OUT/$name.md.tmp"; } > "$OUT/$name.md"
    rm "$OUT/$name.md.tmp"
}

# The Triton kernels (each device's default), then the PyTorch kernels on the same rows.
bench shapes_fp32 --preset shapes --parts op layer
bench shapes_bf16 --preset shapes --parts op layer --amp bf16
bench shapes_fp32_pytorch --preset shapes --parts op --implementation pytorch
if "$PY" -c 'import mmdet' 2>/dev/null; then
    bench backbone_fp32 --parts backbone --batch 32 --sizes 224x224
    bench backbone_bf16 --parts backbone --batch 32 --sizes 224x224 --amp bf16
else
    echo "[gpu_check] mmdet is not installed: no DetNAS backbone table"
fi
if "$PY" -c 'import torchvision' 2>/dev/null; then
    bench detector_fp32 --parts detector --batch 2 --sizes 800x1216
    bench detector_bf16 --parts detector --batch 2 --sizes 800x1216 --amp bf16
else
    echo "[gpu_check] torchvision is not installed: no Mask R-CNN table"
fi
echo "[gpu_check] done: tables in $OUT"
