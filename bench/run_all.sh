#!/bin/bash
# Builds the benchmark binaries into BUILD_DIR (default build) and runs every benchmark.
#   bench/run_all.sh [BUILD_DIR]      (about 45-60 minutes on 2 cores)
# The binaries must come from a Release build. bench/ is added by the top-level
# CMakeLists.txt, or, if it is not, through bench/cmake/hook.cmake (below).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
if [ ! -f "$BUILD/build.ninja" ] || ! grep -q ft_bench_step_time "$BUILD/build.ninja"; then
  cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_PROJECT_finetuned_INCLUDE="$PWD/bench/cmake/hook.cmake"
fi
ninja -C "$BUILD" finetuned finetune-worker ftctl ft_bench_step_time ft_bench_loader
BIN="$BUILD/bin"
echo "# $(date -u +%F) $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-), load $(cut -d' ' -f1-3 /proc/loadavg)"
bench/run_job.sh "$BIN" --scenarios a,b,c --reps 3 --train-per-class 200 --val-per-class 50
bench/run_step_time.sh "$BIN" --arch priority --reps 3 --warmup 2 --iters 5
bench/run_accuracy.sh "$BIN" --parts ii
bench/run_accuracy.sh "$BIN" --parts i --per-class 3000 --epochs 4 --augment none
bench/run_step_time.sh "$BIN" --arch rest --reps 1 --warmup 2 --iters 5
