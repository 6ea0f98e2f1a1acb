#!/bin/sh
# usage: npm_ci.sh DIR [MODULE]
# Installs DIR's npm packages into DIR/node_modules (git-ignored) with
# `npm ci` from its committed package-lock.json (tests/deploy: the schema
# validators of k8s_validate.mjs; tests/onnx: onnxruntime-node, the real
# ONNX runtime, whose CPU binaries ship in the package). Needs the npm
# registry once; later runs are a no-op while the lock file is unchanged.
# onnxruntime-node's postinstall would download CUDA files: the two
# variables below skip that. With MODULE, checks that node can load it.
# Exits 77 (skip) when node or npm is missing.
set -eu
here=$(cd "$1" && pwd)
name=$(basename "$here")
for tool in node npm; do
  command -v "$tool" >/dev/null 2>&1 || { echo "SKIP: $tool is not installed"; exit 77; }
done
stamp="$here/node_modules/.finetuned-package-lock.sha256"
want=$(sha256sum "$here/package-lock.json" | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "tests/$name/node_modules is up to date"
  exit 0
fi
cd "$here"
ONNXRUNTIME_NODE_INSTALL=skip ONNXRUNTIME_NODE_INSTALL_CUDA=skip npm ci --no-audit --no-fund --loglevel=error
if [ $# -ge 2 ]; then
  node -e "require('$2')" || { echo "$2 does not load"; exit 1; }
fi
echo "$want" >"$stamp"
echo "installed tests/$name/node_modules (node $(node --version))"
