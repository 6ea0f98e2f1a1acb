#!/bin/sh
# Renders every deploy/k8s/overlays/* with `kubectl kustomize` and validates
# every object (k8s_validate.mjs: kubernetes-models schemas + deployment rules).
# Then checks that broken variants of postgres-cnpg are rejected (mutate below).
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
for overlay in cpu gpu postgres-cnpg postgres-external; do
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

# The checks must be able to fail: each edit of the rendered postgres-cnpg
# output breaks one rule, and the validator has to reject it. An edit that
# no longer matches anything fails too, so this cannot pass by going stale.
mutate() {  # DESCRIPTION SED-EXPRESSION
  sed "$2" "$tmp/postgres-cnpg.yaml" >"$tmp/mutant.yaml"
  if cmp -s "$tmp/postgres-cnpg.yaml" "$tmp/mutant.yaml"; then
    echo "FAIL: mutation '$1' matched nothing in the rendered postgres-cnpg"
    status=1
  elif node "$here/k8s_validate.mjs" --overlay postgres-cnpg \
      --rules "$root/deploy/prometheus/rules/finetune-alerts.yml" <"$tmp/mutant.yaml" >"$tmp/mutant.out" 2>&1; then
    echo "FAIL: the validator accepts postgres-cnpg with $1"
    status=1
  fi
}
if [ -s "$tmp/postgres-cnpg.yaml" ]; then
  mutate "3 server replicas" 's/^  replicas: 2$/  replicas: 3/'
  mutate "a ReadWriteOnce data volume" 's/ReadWriteMany/ReadWriteOnce/'
  mutate "a fixed --replica-id" 's/--replica-id=$(POD_NAME)/--replica-id=a/'
  mutate "POD_NAME from the namespace" 's/fieldPath: metadata.name$/fieldPath: metadata.namespace/'
  mutate "a password in DATABASE_URL" 's|postgresql://$(DB_USER)@|postgresql://finetune:secret@|'
  mutate "the URL in the args" 's|--database=$(DATABASE_URL)|--database=postgresql://finetune@db/finetune|'
  mutate "a StatefulSet server" 's/^kind: Deployment$/kind: StatefulSet/'
  mutate "a non-integer instances" 's/^  instances: 3$/  instances: three/'
  mutate "no anti-affinity" 's/topologyKey: kubernetes.io\/hostname/topologyKey: topology.kubernetes.io\/zone/'
fi
exit $status
