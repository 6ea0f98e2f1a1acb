#!/bin/sh
# Renders deploy/k8s/overlays/{cpu,gpu} with `kubectl kustomize` and validates
# every object (k8s_validate.mjs: kubernetes-models schemas + deployment rules).
# KUBECTL=/path/to/kubectl picks another kubectl. Exits 77 (skip) only when
# kubectl, node or npm is missing.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
kubectl=${KUBECTL:-kubectl}
command -v "$kubectl" >/dev/null 2>&1 || { echo "SKIP: kubectl is not installed (Debian package kubernetes-client)"; exit 77; }
command -v node >/dev/null 2>&1 || { echo "SKIP: node is not installed"; exit 77; }
sh "$here/../npm_ci.sh" "$here" >/dev/null || exit $?

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
status=0
for overlay in cpu gpu; do
  if ! "$kubectl" kustomize "$root/deploy/k8s/overlays/$overlay" >"$tmp/$overlay.yaml" 2>"$tmp/$overlay.err"; then
    echo "FAIL: kubectl kustomize deploy/k8s/overlays/$overlay"
    cat "$tmp/$overlay.err"
    status=1
    continue
  fi
  # Newer kustomize warns about the v2-compatible fields (bases, patchesStrategicMerge).
  grep -v "is deprecated" "$tmp/$overlay.err" >&2 || true
  node "$here/k8s_validate.mjs" --overlay "$overlay" \
    --rules "$root/deploy/prometheus/rules/finetune-alerts.yml" <"$tmp/$overlay.yaml" || status=1
done
exit $status
