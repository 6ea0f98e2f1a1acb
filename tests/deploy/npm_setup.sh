#!/bin/sh
# Installs the schema-validation packages of k8s_validate.mjs into
# tests/deploy/node_modules (git-ignored) with `npm ci` from the committed
# package-lock.json. Needs the npm registry once; later runs are a no-op while
# the lock file is unchanged. Exits 77 (skip) when node or npm is missing.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
for tool in node npm; do
  command -v "$tool" >/dev/null 2>&1 || { echo "SKIP: $tool is not installed"; exit 77; }
done
stamp="$here/node_modules/.finetuned-package-lock.sha256"
want=$(sha256sum "$here/package-lock.json" | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "tests/deploy/node_modules is up to date"
  exit 0
fi
cd "$here"
npm ci --no-audit --no-fund --loglevel=error
echo "$want" >"$stamp"
echo "installed tests/deploy/node_modules (node $(node --version))"
