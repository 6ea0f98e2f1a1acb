#!/bin/bash
# Accuracy on Fashion-MNIST through finetuned: (i) 10 classes, (ii) 5-shot transfer vs scratch.
#   bench/run_accuracy.sh [BIN_DIR] [extra accuracy.py flags, e.g. --parts i --per-class 3000 --epochs 4]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-${FT_BIN:-build/bin}}; shift || true
exec /usr/bin/python3 bench/accuracy.py --bin "$BIN" "$@"
