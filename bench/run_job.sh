#!/bin/bash
# A whole fine-tuning job through finetuned vs a plain PyTorch script, and the
# input pipeline alone.
#   bench/run_job.sh [BIN_DIR] [extra job_compare.py flags, e.g. --scenarios a,b,c --reps 3]
# BIN_DIR (default $FT_BIN or build/bin) must hold finetuned, finetune-worker, ftctl, ft_bench_loader.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-${FT_BIN:-build/bin}}; shift || true
exec /usr/bin/python3 bench/job_compare.py --bin "$BIN" "$@"
