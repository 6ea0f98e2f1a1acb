#!/bin/bash
# Per-architecture training-step time, finetuned vs torchvision.
#   bench/run_step_time.sh [BIN_DIR] [extra step_time_compare.py flags, e.g. --arch all --reps 3]
# BIN_DIR (default $FT_BIN or build/bin) must hold ft_bench_step_time.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-${FT_BIN:-build/bin}}; shift || true
exec /usr/bin/python3 bench/step_time_compare.py --bench-bin "$BIN" "$@"
