#!/usr/bin/env bash
# Multi-process training with torchrun: bash tools/dist_train.sh CONFIG GPUS [train.py args]
# Multi-node: set NNODES, NODE_RANK, MASTER_ADDR and PORT on every node.
set -euo pipefail
exec bash "$(dirname "$0")/dist_launch.sh" "$2" train.py "$1" "${@:3}"
