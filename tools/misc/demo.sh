#!/usr/bin/env bash
# The README's demo (`make demo`): train the demo Mask R-CNN with DRConv in its FPN on the toy COCO
# set, evaluate it with the COCO metric (bbox and segm tables), and draw its guided masks.
# Usage: bash tools/misc/demo.sh [CONFIG] [WORK_DIR]   (the toy set must exist: `make data`)
set -euo pipefail
cd "$(dirname "$0")/../.."
CONFIG=${1:-configs/demo/mask-rcnn_r18_drfpn-8r_toy-coco.py}
WORK_DIR=${2:-work_dirs/demo}
PY=${PYTHON:-.venv/bin/python}

echo "[demo] training $CONFIG (300 iterations, a few minutes on 2 CPU cores)"
"$PY" tools/train.py "$CONFIG" --work-dir "$WORK_DIR"
checkpoint=$(cat "$WORK_DIR/last_checkpoint")

echo "[demo] evaluating $checkpoint on the toy val split"
"$PY" tools/test.py "$CONFIG" "$checkpoint" --work-dir "$WORK_DIR/test"

echo "[demo] drawing guided masks into $WORK_DIR/guided_masks"
"$PY" tools/analysis_tools/visualize_guided_masks.py "$CONFIG" "$checkpoint" \
    data/toy_coco/val/000001.png data/toy_coco/val/000002.png data/toy_coco/val/000003.png \
    --out-dir "$WORK_DIR/guided_masks"
echo "[demo] done: checkpoint $checkpoint, metrics under $WORK_DIR/test, pictures in $WORK_DIR/guided_masks"
