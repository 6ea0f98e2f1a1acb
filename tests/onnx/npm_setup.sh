#!/bin/sh
# Installs onnxruntime-node (the real ONNX runtime that run_onnx.mjs checks
# model.onnx with; its CPU binaries ship in the npm package) into
# tests/onnx/node_modules (git-ignored) with `npm ci` from the committed
# package-lock.json. Needs the npm registry once; later runs are a no-op while
# the lock file is unchanged. Its postinstall would download CUDA files: the
# two variables below skip that. Exits 77 (skip) when node or npm is missing.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
for tool in node npm; do
  command -v "$tool" >/dev/null 2>&1 || { echo "SKIP: $tool is not installed"; exit 77; }
done
stamp="$here/node_modules/.finetuned-package-lock.sha256"
want=$(sha256sum "$here/package-lock.json" | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "tests/onnx/node_modules is up to date"
  exit 0
fi
cd "$here"
ONNXRUNTIME_NODE_INSTALL=skip ONNXRUNTIME_NODE_INSTALL_CUDA=skip npm ci --no-audit --no-fund --loglevel=error
node -e 'require("onnxruntime-node")' || { echo "onnxruntime-node does not load"; exit 1; }
echo "$want" >"$stamp"
echo "installed tests/onnx/node_modules (node $(node --version), onnxruntime-node $(node -p 'require("onnxruntime-node/package.json").version'))"
