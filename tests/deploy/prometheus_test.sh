#!/bin/sh
# promtool over deploy/prometheus: the alert rules parse, their unit tests
# (finetune-alerts.test.yml) pass, and both scrape configs are valid.
# Exits 77 (skip) only when promtool (Debian package prometheus) is missing.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
prom="$here/../../deploy/prometheus"
command -v promtool >/dev/null 2>&1 || { echo "SKIP: promtool is not installed (Debian package prometheus)"; exit 77; }
cd "$prom"
promtool check rules rules/finetune-alerts.yml
promtool test rules rules/finetune-alerts.test.yml
promtool check config prometheus.yml

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if promtool check config prometheus-kubernetes.yml >"$tmp/out" 2>&1; then
  cat "$tmp/out"
elif grep -q "field kubernetes_sd_configs not found" "$tmp/out"; then
  # Debian builds Prometheus without Kubernetes discovery. Check everything
  # else in the file (relabelling, rule files) with the discovery block
  # swapped for an empty static one.
  echo "NOTE: this promtool has no kubernetes_sd_configs (Debian build);" \
       "checking prometheus-kubernetes.yml with static_configs in its place"
  cp -r rules "$tmp/"
  sed -e 's/^\([[:space:]]*\)kubernetes_sd_configs:/\1static_configs:/' \
      -e 's/^\([[:space:]]*\)- role: pod$/\1- targets: []/' \
      prometheus-kubernetes.yml >"$tmp/prometheus-kubernetes.yml"
  if grep -q "kubernetes_sd_configs\|role: " "$tmp/prometheus-kubernetes.yml"; then
    echo "FAIL: could not swap the discovery block; update $0"
    exit 1
  fi
  promtool check config "$tmp/prometheus-kubernetes.yml"
else
  cat "$tmp/out"
  exit 1
fi
