#!/usr/bin/env bash
# finetuned developer entry point.
#   ./dev.sh test    install what is needed, build, run every test (CI runs this)
#   ./dev.sh demo    install, build, run the transfer-learning demo on Fashion-MNIST
#   ./dev.sh build   install and build only
#   ./dev.sh deps    install the Debian packages only
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(pwd)
BUILD_DIR=${BUILD_DIR:-$ROOT/build}

# Debian 12 packages. docker/Dockerfile.* install the same names (a test keeps
# them in step): BUILD_PACKAGES to compile, RUNTIME_* to run, TEST_PACKAGES
# for the test suite only.
BUILD_PACKAGES=(
  build-essential cmake ninja-build ccache pkg-config git
  libabsl-dev libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libsqlite3-dev libpq-dev libssl-dev zlib1g-dev nlohmann-json3-dev prometheus-cpp-dev libarchive-dev
  libtorch-dev libopencv-core-dev libopencv-imgproc-dev libopencv-imgcodecs-dev
  libgtest-dev libgmock-dev libgoogle-perftools-dev libcairo2-dev
  libonnx-dev libgloo-dev
)
TEST_PACKAGES=(
  python3-torch python3-torchvision python3-pil python3-yaml python3-numpy
  dataset-fashion-mnist prometheus
  postgresql
  openssl python3-grpcio python3-protobuf
  python3-venv python3-pip python3-setuptools python3-wheel python3-tqdm python3-matplotlib
  chromium
  python3-onnx
)
# The BLAS every worker runs on: Debian's LibTorch (and Python torch) call
# whatever provides libblas.so.3, and on a bare machine that is the reference
# BLAS, 2-9x slower (bench/README.md, "BLAS"). BLIS, not OpenBLAS: OpenBLAS's
# 60 KiB of static TLS does not fit the 100 KiB thread stacks Debian's
# civetweb starts, and the worker's --metrics-listen then fails.
# select_blas makes it the system's libblas.so.3; the Dockerfiles do the same.
BLAS_PACKAGES=(
  libblis4-pthread liblapack3
)
# Installed only when the command is missing: some machines carry their own
# kubectl or Node.js, and Debian's packages would clash with them.
OPTIONAL_TOOLS=(kubectl:kubernetes-client npm:npm node:nodejs)

log() { printf '\033[1m[dev.sh]\033[0m %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

deps() {
  local missing=()
  for p in "${BUILD_PACKAGES[@]}" "${TEST_PACKAGES[@]}" "${BLAS_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  for t in "${OPTIONAL_TOOLS[@]}"; do
    command -v "${t%%:*}" >/dev/null 2>&1 || missing+=("${t#*:}")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  select_blas
}

# libblas.so.3 -> BLIS, and liblapack.so.3 -> the reference LAPACK (on BLIS):
# OpenBLAS's liblapack.so.3, where OpenBLAS is installed, would load
# libopenblas.so.0, and its TLS, all the same.
select_blas() {
  local arch lib
  arch=$(gcc -dumpmachine)
  lib=/usr/lib/$arch
  set_alternative "libblas.so.3-$arch" "$lib/blis-pthread/libblas.so.3"
  set_alternative "liblapack.so.3-$arch" "$lib/lapack/liblapack.so.3"
}

set_alternative() {
  local name=$1 path=$2
  if [ "$(update-alternatives --query "$name" 2>/dev/null | sed -n 's/^Value: //p')" != "$path" ]; then
    log "selecting $path as $name"
    as_root update-alternatives --set "$name" "$path" >/dev/null
  fi
}

configure() {
  export CCACHE_DIR=${CCACHE_DIR:-$HOME/.cache/ccache}
  export CCACHE_SLOPPINESS=pch_defines,time_macros,include_file_mtime,include_file_ctime
  # Paths relative to the checkout, so that a second clone hits the same cache.
  export CCACHE_BASEDIR=${CCACHE_BASEDIR:-$ROOT}
  export CCACHE_MAXSIZE=${CCACHE_MAXSIZE:-5G}
  if [ ! -f "$BUILD_DIR/build.ninja" ]; then
    cmake -S "$ROOT" -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release -DFT_WERROR=ON
  fi
}

build() {
  deps
  configure
  # Two compile jobs fit 2 cores; LibTorch translation units need ~1.5 GB each.
  cmake --build "$BUILD_DIR" -j "${JOBS:-$(nproc)}"
}

run_tests() {
  build
  cd "$BUILD_DIR"
  ctest --output-on-failure --timeout 1500 -j "${TEST_JOBS:-2}" "$@"
}

case "${1:-}" in
  deps) deps ;;
  build) build ;;
  test) shift; run_tests "$@" ;;
  demo) build; exec "$ROOT/client/demo.sh" "$BUILD_DIR/bin" ;;
  *) sed -n '2,7p' "$0"; exit 2 ;;
esac
