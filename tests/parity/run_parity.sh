#!/bin/sh
# usage: run_parity.sh PARITY_BINARY ARCH [IMAGE_SIZE]
set -eu
bin=$1 arch=$2 size=${3:-64}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
/usr/bin/python3 "$(dirname "$0")/make_weights.py" "$arch" "$dir" --image-size "$size"
"$bin" "$arch" "$dir/$arch.pth" "$dir/$arch.io.pth"
