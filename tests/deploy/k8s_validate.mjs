// Validates rendered Kubernetes manifests (YAML on stdin, as `kubectl kustomize`
// prints them):
//  1. every object is constructed with its model class from kubernetes-models,
//     @kubernetes-models/prometheus-operator or @kubernetes-models/keda and
//     `.validate()`d against its schema; an object of any other kind fails;
//     CloudNativePG's Cluster has no published model: it gets a structural
//     check of the fields the overlay uses (cnpgCluster below);
//  2. the deployment rules of finetuned hold (security context, resources,
//     probes, wiring between Services, selectors, monitors and policies; the
//     overlay's own settings for --overlay cpu|gpu|postgres-cnpg|postgres-external:
//     the postgres ones run the server as a 2-replica Deployment on a shared
//     ReadWriteMany volume, its database URL from a Secret).
// The schemas do not reject unknown fields, so (2) checks the fields that
// matter by value; a typo there shows up as a missing setting.
//
//   node k8s_validate.mjs --overlay cpu --rules deploy/prometheus/rules/finetune-alerts.yml < rendered.yaml
import { readFileSync } from "node:fs";
import { isDeepStrictEqual } from "node:util";
import yaml from "js-yaml";

const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, a, i, all) => (a.startsWith("--") ? [...acc, [a.slice(2), all[i + 1]]] : acc), []),
);
const OVERLAYS = ["cpu", "gpu", "postgres-cnpg", "postgres-external"];
const overlay = args.overlay;
if (!OVERLAYS.includes(overlay) || !args.rules) {
  console.error(`usage: node k8s_validate.mjs --overlay ${OVERLAYS.join("|")} --rules RULES.yml < rendered.yaml`);
  process.exit(2);
}
// The server as several replicas on PostgreSQL (deploy/k8s/replicated).
const replicated = overlay.startsWith("postgres-");
const NAMESPACE = "finetune";
const errors = [];
const fail = (what, msg) => errors.push(`${what}: ${msg}`);

const docs = yaml.loadAll(readFileSync(0, "utf8")).filter((d) => d);
if (docs.length === 0) {
  console.error("FAIL: no objects on stdin");
  process.exit(1);
}

// --- 1. schemas -------------------------------------------------------------
const CRD_PACKAGES = {
  "monitoring.coreos.com": "@kubernetes-models/prometheus-operator",
  "keda.sh": "@kubernetes-models/keda",
  "cert-manager.io": "@kubernetes-models/cert-manager",
};
function modulePath(apiVersion) {
  const group = apiVersion.includes("/") ? apiVersion.split("/")[0] : "";
  if (group === "" || !group.includes(".") || group.endsWith(".k8s.io")) return `kubernetes-models/${apiVersion}`;
  return CRD_PACKAGES[group] ? `${CRD_PACKAGES[group]}/${apiVersion}` : null;
}
const id = (d) => `${d.kind}/${d.metadata?.name}`;

// CloudNativePG Cluster: no model package, so the fields the overlay sets are
// checked by type, and any other spec field is refused rather than passed
// unread (a typo would otherwise be silently ignored by the operator's
// defaults). Returns a list of messages.
const QUANTITY = /^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E)?$/;
const CNPG_SPEC_FIELDS = new Set(["instances", "storage", "bootstrap", "resources", "imageName", "description",
  "primaryUpdateStrategy", "postgresql", "affinity", "monitoring", "enableSuperuserAccess"]);
function cnpgCluster(doc) {
  const out = [];
  const spec = doc.spec;
  if (doc.apiVersion !== "postgresql.cnpg.io/v1") out.push(`apiVersion ${doc.apiVersion}, expected postgresql.cnpg.io/v1`);
  if (typeof doc.metadata?.name !== "string" || !/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/.test(doc.metadata.name)) {
    out.push(`metadata.name ${doc.metadata?.name} is not a DNS label`);
  }
  if (typeof spec !== "object" || spec === null) return [...out, "no spec"];
  for (const k of Object.keys(spec)) if (!CNPG_SPEC_FIELDS.has(k)) out.push(`spec.${k} is not a field this check knows`);
  if (!Number.isInteger(spec.instances) || spec.instances < 1) out.push(`spec.instances ${spec.instances} is not a positive integer`);
  if (typeof spec.storage?.size !== "string" || !QUANTITY.test(spec.storage.size)) out.push(`spec.storage.size ${spec.storage?.size} is not a quantity`);
  const initdb = spec.bootstrap?.initdb;
  if (!initdb || Object.keys(spec.bootstrap).length !== 1) out.push("spec.bootstrap must be exactly initdb");
  for (const k of ["database", "owner"]) {
    if (typeof initdb?.[k] !== "string" || !/^[a-z_][a-z0-9_]*$/.test(initdb[k])) out.push(`spec.bootstrap.initdb.${k} ${initdb?.[k]} is not a plain identifier`);
  }
  for (const kind of ["requests", "limits"]) {
    for (const [r, q] of Object.entries(spec.resources?.[kind] ?? {})) {
      if (typeof q !== "string" || !QUANTITY.test(q)) out.push(`spec.resources.${kind}.${r} ${q} is not a quantity`);
    }
  }
  return out;
}

for (const doc of docs) {
  if (doc.kind === "Cluster" && doc.apiVersion?.startsWith("postgresql.cnpg.io/")) {
    for (const msg of cnpgCluster(doc)) fail(id(doc), `CloudNativePG structure: ${msg}`);
    continue;
  }
  const base = doc.apiVersion && doc.kind ? modulePath(doc.apiVersion) : null;
  let Model = null;
  if (base) {
    try {
      Model = (await import(`${base}/${doc.kind}`))[doc.kind];
    } catch {
      Model = null;
    }
  }
  if (!Model) {
    fail(id(doc), `unknown kind ${doc.apiVersion} ${doc.kind}: no model to validate it with`);
    continue;
  }
  try {
    new Model(doc).validate();
  } catch (e) {
    fail(id(doc), `schema: ${e.message}`);
  }
}

// --- 2. deployment rules ----------------------------------------------------
const of = (kind) => docs.filter((d) => d.kind === kind);
const one = (kind, name) => docs.find((d) => d.kind === kind && d.metadata?.name === name);
const matches = (selector, labels) =>
  !!selector && Object.keys(selector).length > 0 && Object.entries(selector).every(([k, v]) => labels?.[k] === v);
const workloads = docs.filter((d) => ["Deployment", "StatefulSet", "DaemonSet"].includes(d.kind));
const podLabels = (w) => w.spec?.template?.metadata?.labels ?? {};

for (const d of docs) {
  if (d.kind !== "Namespace" && d.metadata?.namespace !== NAMESPACE) {
    fail(id(d), `namespace is ${d.metadata?.namespace}, expected ${NAMESPACE}`);
  }
}
for (const [kind, name] of [
  [replicated ? "Deployment" : "StatefulSet", "finetuned"], ["Deployment", "finetune-worker"], ["Service", "finetuned"],
  ["Service", "finetune-worker"], ["PrometheusRule", "finetune-alerts"], ["ScaledObject", "finetune-worker"],
]) {
  if (!one(kind, name)) fail(`${kind}/${name}`, "missing");
}
for (const kind of ["ServiceMonitor", "NetworkPolicy", "PodDisruptionBudget"]) {
  if (of(kind).length === 0) fail(kind, "none rendered");
}

// Pods: security, resources, probes, volumes.
for (const w of workloads) {
  const spec = w.spec?.template?.spec ?? {};
  const podSec = spec.securityContext ?? {};
  if (!matches(w.spec?.selector?.matchLabels, podLabels(w))) fail(id(w), "selector does not match the pod labels");
  if (spec.automountServiceAccountToken !== false) fail(id(w), "automountServiceAccountToken should be false");
  const volumes = new Map((spec.volumes ?? []).map((v) => [v.name, v]));
  for (const t of w.spec?.volumeClaimTemplates ?? []) volumes.set(t.metadata.name, { persistentVolumeClaim: {} });
  const all = [...(spec.initContainers ?? []).map((c) => [c, true]), ...(spec.containers ?? []).map((c) => [c, false])];
  for (const [c, init] of all) {
    const what = `${id(w)} container ${c.name}`;
    const sec = c.securityContext ?? {};
    const eff = (k) => (sec[k] !== undefined ? sec[k] : podSec[k]);
    if (!c.image || !/:[\w][\w.-]*$/.test(c.image) || /:latest$/.test(c.image)) fail(what, `image ${c.image} needs a fixed tag`);
    for (const kind of ["requests", "limits"]) {
      for (const r of ["cpu", "memory"]) {
        if (c.resources?.[kind]?.[r] === undefined) fail(what, `no resources.${kind}.${r}`);
      }
    }
    if (eff("runAsNonRoot") !== true) fail(what, "runAsNonRoot is not true");
    if (!(Number.isInteger(eff("runAsUser")) && eff("runAsUser") > 0)) fail(what, "runAsUser must be a non-zero uid");
    if (sec.readOnlyRootFilesystem !== true) fail(what, "readOnlyRootFilesystem is not true");
    if (sec.allowPrivilegeEscalation !== false) fail(what, "allowPrivilegeEscalation is not false");
    if (!(sec.capabilities?.drop ?? []).includes("ALL")) fail(what, "capabilities.drop lacks ALL");
    if (sec.capabilities?.add?.length) fail(what, `adds capabilities ${sec.capabilities.add}`);
    if (eff("privileged")) fail(what, "privileged");
    if (eff("seccompProfile")?.type !== "RuntimeDefault") fail(what, "seccompProfile is not RuntimeDefault");
    if (!init) {
      if (!c.livenessProbe) fail(what, "no livenessProbe");
      if (!c.readinessProbe) fail(what, "no readinessProbe");
    }
    const portNames = new Set((c.ports ?? []).map((p) => p.name));
    for (const p of ["livenessProbe", "readinessProbe", "startupProbe"]) {
      const port = c[p]?.httpGet?.port ?? c[p]?.tcpSocket?.port;
      if (typeof port === "string" && !portNames.has(port)) fail(what, `${p} uses unknown port name ${port}`);
    }
    const mounts = c.volumeMounts ?? [];
    for (const m of mounts) {
      if (!volumes.has(m.name)) fail(what, `volumeMount ${m.name} has no volume`);
    }
    const tmp = mounts.find((m) => m.mountPath === "/tmp");
    if (!tmp || !volumes.get(tmp.name)?.emptyDir) fail(what, "read-only root filesystem but no emptyDir at /tmp");
  }
}

// The replicated server (postgres overlays): 2 replicas of a Deployment, one
// ReadWriteMany data volume, the database URL from a Secret, replica ids from
// the pod names, spread over nodes and covered by a PDB.
function checkReplicatedServer(server) {
  const what = id(server);
  const spec = server.spec;
  const pod = spec.template.spec;
  const c = pod.containers.find((x) => x.name === "finetuned") ?? pod.containers[0];
  const a = c.args ?? [];
  if (spec.replicas !== 2) fail(what, `replicas is ${spec.replicas}, expected 2`);
  for (const svc of of("Service")) {
    if (svc.spec.clusterIP === "None" && matches(svc.spec.selector, podLabels(server))) fail(id(svc), "headless Service for a Deployment's server pods");
  }
  for (const flag of ["--database=$(DATABASE_URL)", "--replica-id=$(POD_NAME)"]) {
    if (!a.includes(flag)) fail(what, `args lack ${flag}`);
  }
  if (a.some((x) => /postgres(ql)?:\/\//.test(x))) fail(what, "a database URL is written in the args; it belongs in a Secret");
  const audit = a.find((x) => x.startsWith("--audit-log="));
  if (audit && !audit.includes("$(POD_NAME)")) fail(what, `${audit} is one file for all replicas on the shared volume`);

  // Environment: where DATABASE_URL, PGPASSWORD and POD_NAME come from.
  const env = c.env ?? [];
  const at = (name) => env.findIndex((e) => e.name === name);
  const get = (name) => env[at(name)];
  if (get("POD_NAME")?.valueFrom?.fieldRef?.fieldPath !== "metadata.name") fail(what, "env POD_NAME is not the downward API's metadata.name");
  const url = get("DATABASE_URL");
  const secrets = new Set(); // the Secrets DATABASE_URL is made of
  if (!url) {
    fail(what, "no env DATABASE_URL");
  } else if (url.valueFrom?.secretKeyRef) {
    secrets.add(url.valueFrom.secretKeyRef.name);
  } else if (typeof url.value === "string") {
    const user = url.value.match(/^postgres(?:ql)?:\/\/([^@/]*)@/);
    if (!user) fail(what, `env DATABASE_URL ${url.value} is not postgresql://USER@HOST...`);
    else if (user[1].includes(":")) fail(what, "env DATABASE_URL has a password in it");
    for (const [, ref] of url.value.matchAll(/\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g)) {
      const from = get(ref)?.valueFrom?.secretKeyRef;
      // Kubernetes expands only variables defined before this one.
      if (at(ref) < 0 || at(ref) > at("DATABASE_URL")) fail(what, `env DATABASE_URL uses $(${ref}), not defined before it`);
      else if (!from) fail(what, `env DATABASE_URL uses $(${ref}), which is not from a Secret`);
      else secrets.add(from.name);
    }
    const cert = url.value.match(/[?&]sslrootcert=([^&]+)/)?.[1];
    const m = cert && (c.volumeMounts ?? []).find((v) => cert.startsWith(v.mountPath + "/"));
    if (cert && !(pod.volumes ?? []).find((v) => v.name === m?.name)?.secret) fail(what, `sslrootcert ${cert} is not in a mounted Secret`);
  } else {
    fail(what, "env DATABASE_URL has neither a value nor a secretKeyRef");
  }
  const password = get("PGPASSWORD");
  if (password && password.value !== undefined) fail(what, "env PGPASSWORD is a literal");
  if (password && !secrets.has(password.valueFrom?.secretKeyRef?.name)) fail(what, "env PGPASSWORD is not from the database's Secret");
  if (url?.value !== undefined && !password) fail(what, "DATABASE_URL has no password and no PGPASSWORD is set");
  if (overlay === "postgres-external") {
    const ref = url?.valueFrom?.secretKeyRef;
    if (ref?.name !== "finetuned-database" || ref?.key !== "url") fail(what, "DATABASE_URL is not Secret finetuned-database, key url");
  } else {
    const clusters = of("Cluster");
    if (clusters.length !== 1) {
      fail("Cluster", `${clusters.length} CloudNativePG Clusters rendered, expected 1`);
    } else {
      const [db] = clusters;
      const app = `${db.metadata.name}-app`;
      if (secrets.size === 0 || [...secrets].some((n) => n !== app)) fail(what, `DATABASE_URL is made of Secrets ${[...secrets]}, expected ${app}`);
      if (!(db.spec?.instances >= 2)) fail(id(db), `instances ${db.spec?.instances}: no standby to fail over to`);
      const initdb = db.spec?.bootstrap?.initdb ?? {};
      if (initdb.database !== "finetune" || initdb.owner !== "finetune") fail(id(db), "initdb does not create database finetune owned by finetune");
    }
  }

  // One data volume, ReadWriteMany, read-write in every replica.
  const dataMount = (c.volumeMounts ?? []).find((m) => m.mountPath === "/var/lib/finetuned");
  const claimName = (pod.volumes ?? []).find((v) => v.name === dataMount?.name)?.persistentVolumeClaim?.claimName;
  const claim = claimName && one("PersistentVolumeClaim", claimName);
  if (!claim) fail(what, "no rendered PersistentVolumeClaim mounted at /var/lib/finetuned");
  else if (!(claim.spec.accessModes ?? []).includes("ReadWriteMany")) fail(id(claim), `accessModes ${claim.spec.accessModes}: replicas on different nodes need ReadWriteMany`);
  if (dataMount?.readOnly) fail(what, "the data volume is mounted read-only");

  // Replicas on different nodes; a rollout that can proceed under that rule.
  const anti = pod.affinity?.podAntiAffinity ?? {};
  const terms = [...(anti.requiredDuringSchedulingIgnoredDuringExecution ?? []),
    ...(anti.preferredDuringSchedulingIgnoredDuringExecution ?? []).map((t) => t.podAffinityTerm)];
  const spread = terms.filter((t) => t?.topologyKey === "kubernetes.io/hostname" && matches(t.labelSelector?.matchLabels, podLabels(server)));
  if (spread.length === 0) fail(what, "no podAntiAffinity on kubernetes.io/hostname against its own pods");
  if ((anti.requiredDuringSchedulingIgnoredDuringExecution ?? []).some((t) => spread.includes(t)) &&
      (spec.strategy?.rollingUpdate?.maxSurge ?? "25%") !== 0) {
    fail(what, "required anti-affinity with a surge pod: a rollout on 2 nodes stays Pending");
  }
  const pdbs = of("PodDisruptionBudget").filter((p) => matches(p.spec.selector?.matchLabels, podLabels(server)));
  if (!pdbs.some((p) => p.spec.minAvailable === 1)) fail(what, "no PodDisruptionBudget with minAvailable: 1");
}

// Server: the SQLite StatefulSet, or (postgres overlays) a Deployment of 2.
const server = one(replicated ? "Deployment" : "StatefulSet", "finetuned");
if (replicated && of("StatefulSet").length) fail("StatefulSet", `${overlay}: rendered, but the server is a Deployment here`);
if (server && !replicated) {
  const spec = server.spec;
  const c = spec.template.spec.containers.find((x) => x.name === "finetuned") ?? spec.template.spec.containers[0];
  if (spec.replicas !== 1) fail(id(server), `replicas is ${spec.replicas}; SQLite allows exactly 1`);
  if ((c.args ?? []).some((a) => a.startsWith("--database"))) fail(id(server), "SQLite StatefulSet has --database");
  const headless = one("Service", spec.serviceName);
  if (!headless || headless.spec.clusterIP !== "None" || !matches(headless.spec.selector, podLabels(server))) {
    fail(id(server), `serviceName ${spec.serviceName} is not a headless Service selecting its pods`);
  }
  const claims = (spec.volumeClaimTemplates ?? []).map((t) => t.metadata.name);
  const dataMount = (c.volumeMounts ?? []).find((m) => m.mountPath === "/var/lib/finetuned");
  if (!dataMount || !claims.includes(dataMount.name)) fail(id(server), "no volumeClaimTemplate mounted at /var/lib/finetuned");
}
if (server && replicated) checkReplicatedServer(server);
if (server) {
  const spec = server.spec;
  const c = spec.template.spec.containers.find((x) => x.name === "finetuned") ?? spec.template.spec.containers[0];
  for (const flag of ["--listen=0.0.0.0:50051", "--metrics-listen=0.0.0.0:9464", "--local-workers=0",
    "--data-dir=/var/lib/finetuned", "--dataset-roots=/datasets"]) {
    if (!(c.args ?? []).includes(flag)) fail(id(server), `args lack ${flag}`);
  }
  // Transport security and identities (docs/operations.md): never insecure.
  const args = c.args ?? [];
  const mountOf = (path) => (c.volumeMounts ?? []).find((m) => path.startsWith(m.mountPath + "/"));
  const secretOf = (path) => {
    const m = mountOf(path);
    return m ? (spec.template.spec.volumes ?? []).find((v) => v.name === m.name)?.secret?.secretName : undefined;
  };
  if (args.includes("--insecure")) fail(id(server), "runs with --insecure");
  for (const flag of ["--tls-cert", "--tls-key", "--auth-file"]) {
    const arg = args.find((a) => a.startsWith(`${flag}=`));
    if (!arg) {
      fail(id(server), `args lack ${flag}`);
    } else if (!secretOf(arg.split("=")[1])) {
      fail(id(server), `${arg} is not in a mounted Secret`);
    }
  }
  const tlsSecret = secretOf((args.find((a) => a.startsWith("--tls-cert=")) ?? "=").split("=")[1]);
  const certificate = of("Certificate").find((x) => x.spec?.secretName === tlsSecret);
  if (overlay !== "cpu" && !certificate) fail(id(server), `no cert-manager Certificate writes Secret ${tlsSecret}`);
  if (certificate && !(certificate.spec.dnsNames ?? []).includes("finetuned")) {
    fail(id(certificate), "dnsNames lack finetuned, the name the probes and workers check");
  }
  // The kubelet's grpc probes are plaintext; the port is TLS.
  for (const p of ["startupProbe", "readinessProbe"]) {
    const cmd = c[p]?.exec?.command ?? [];
    if (!cmd.includes("health") || !cmd.some((x) => x.startsWith("--tls-ca=")) || !cmd.includes("--server=127.0.0.1:50051")) {
      fail(id(server), `${p} is not \`ftctl --server=127.0.0.1:50051 --tls-ca=... health\``);
    }
  }
  if (c.livenessProbe?.tcpSocket?.port !== 50051) fail(id(server), "livenessProbe is not a tcpSocket probe on 50051");
  const ports = Object.fromEntries((c.ports ?? []).map((p) => [p.name, p.containerPort]));
  if (ports.grpc !== 50051 || ports.metrics !== 9464) fail(id(server), `container ports ${JSON.stringify(ports)}`);
}

// Workers.
const worker = one("Deployment", "finetune-worker");
if (worker) {
  const pod = worker.spec.template.spec;
  const c = pod.containers[0];
  const a = c.args ?? [];
  const serverArg = a.find((x) => x.startsWith("--server="));
  const [host, port] = (serverArg ?? "=:").split("=")[1].split(":");
  const svc = one("Service", host);
  if (!svc || !(svc.spec.ports ?? []).some((p) => p.port === Number(port)) || !server || !matches(svc.spec.selector, podLabels(server))) {
    fail(id(worker), `${serverArg} does not name a Service port that reaches the server`);
  }
  if (!a.includes("--metrics-listen=0.0.0.0:9465")) fail(id(worker), "args lack --metrics-listen=0.0.0.0:9465");
  const workerSecret = (flag) => {
    const path = (a.find((x) => x.startsWith(`${flag}=`)) ?? "=").split("=")[1];
    const m = (c.volumeMounts ?? []).find((v) => path && path.startsWith(v.mountPath + "/"));
    return m ? (pod.volumes ?? []).find((v) => v.name === m.name)?.secret?.secretName : undefined;
  };
  if (!workerSecret("--tls-ca")) fail(id(worker), "no --tls-ca from a mounted Secret");
  if (!workerSecret("--token-file")) fail(id(worker), "no --token-file from a mounted Secret");
  const gpuLimit = c.resources?.limits?.["nvidia.com/gpu"];
  if (overlay !== "gpu") {
    if (!a.includes("--device=cpu")) fail(id(worker), "cpu overlay: args lack --device=cpu");
    if (gpuLimit !== undefined) fail(id(worker), "cpu overlay asks for a GPU");
    if (/cuda/.test(c.image)) fail(id(worker), `cpu overlay uses image ${c.image}`);
  } else {
    if (!a.includes("--device=cuda")) fail(id(worker), "gpu overlay: args lack --device=cuda");
    if (!(Number(gpuLimit) >= 1)) fail(id(worker), "gpu overlay: no nvidia.com/gpu limit");
    const gpuReq = c.resources?.requests?.["nvidia.com/gpu"];
    if (gpuReq !== undefined && Number(gpuReq) !== Number(gpuLimit)) fail(id(worker), "nvidia.com/gpu request != limit");
    if (!pod.nodeSelector || Object.keys(pod.nodeSelector).length === 0) fail(id(worker), "gpu overlay: no nodeSelector");
    if (!(pod.tolerations ?? []).some((t) => t.key === "nvidia.com/gpu")) fail(id(worker), "gpu overlay: no nvidia.com/gpu toleration");
    if (!/cuda/.test(c.image)) fail(id(worker), `gpu overlay uses image ${c.image}, not the CUDA one`);
  }
  if ((a.filter((x) => x.startsWith("--device=")).length) !== 1) fail(id(worker), "exactly one --device flag expected");
}

// Services select pods and target their ports.
for (const svc of of("Service")) {
  const targets = workloads.filter((w) => matches(svc.spec.selector, podLabels(w)));
  if (targets.length === 0) {
    fail(id(svc), "selects no workload's pods");
    continue;
  }
  for (const p of svc.spec.ports ?? []) {
    const ok = targets.some((w) => w.spec.template.spec.containers.some((c) => (c.ports ?? []).some(
      (cp) => cp.name === p.targetPort || cp.containerPort === (p.targetPort ?? p.port))));
    if (!ok) fail(id(svc), `port ${p.name} targets ${p.targetPort}, which no selected container exposes`);
  }
}

// ServiceMonitors reach a Service's named port; server and workers are both scraped.
const scraped = new Set();
for (const sm of of("ServiceMonitor")) {
  const svcs = of("Service").filter((s) => matches(sm.spec.selector?.matchLabels, s.metadata.labels));
  if (svcs.length === 0) fail(id(sm), "selects no Service");
  for (const ep of sm.spec.endpoints ?? []) {
    for (const s of svcs) {
      if (!(s.spec.ports ?? []).some((p) => p.name === ep.port)) fail(id(sm), `Service ${s.metadata.name} has no port ${ep.port}`);
      else workloads.filter((w) => matches(s.spec.selector, podLabels(w))).forEach((w) => scraped.add(w.metadata.name));
    }
  }
}
for (const w of workloads) if (!scraped.has(w.metadata.name)) fail(id(w), "no ServiceMonitor scrapes its metrics");

// PrometheusRule = the rule file.
const rule = one("PrometheusRule", "finetune-alerts");
if (rule) {
  const fileGroups = yaml.load(readFileSync(args.rules, "utf8")).groups;
  if (!isDeepStrictEqual(rule.spec?.groups, fileGroups)) fail(id(rule), `groups differ from ${args.rules}; run deploy/k8s/gen-prometheusrule.py`);
}

// KEDA scales the worker Deployment on the queue.
for (const so of of("ScaledObject")) {
  const ref = so.spec.scaleTargetRef;
  if (!one(ref.kind ?? "Deployment", ref.name)) fail(id(so), `scaleTargetRef ${ref.kind ?? "Deployment"}/${ref.name} is not rendered`);
  const trig = (so.spec.triggers ?? []).find((t) => t.type === "prometheus");
  // Each queued job counts the workers it needs (JobSpec.workers).
  if (!trig || !/\bfinetune_queued_worker_demand\b/.test(trig.metadata?.query ?? "")) fail(id(so), "no prometheus trigger on finetune_queued_worker_demand");
  if (!trig?.metadata?.serverAddress || !trig?.metadata?.threshold) fail(id(so), "prometheus trigger lacks serverAddress or threshold");
  if ((so.spec.minReplicaCount ?? 0) > (so.spec.maxReplicaCount ?? 100)) fail(id(so), "minReplicaCount > maxReplicaCount");
}

// NetworkPolicies: every pod covered; metrics only from Prometheus; workers reach gRPC.
const policies = of("NetworkPolicy");
const isPrometheusPeer = (peer) =>
  peer.podSelector?.matchLabels?.["app.kubernetes.io/name"] === "prometheus" && peer.namespaceSelector !== undefined && !peer.ipBlock;
for (const w of workloads) {
  const mine = policies.filter((np) => matches(np.spec.podSelector?.matchLabels, podLabels(w)));
  if (mine.length === 0) {
    fail(id(w), "no NetworkPolicy selects its pods");
    continue;
  }
  const metricsPorts = new Set();
  w.spec.template.spec.containers.forEach((c) => (c.ports ?? []).filter((p) => p.name === "metrics").forEach((p) => metricsPorts.add(p.containerPort)));
  for (const np of mine) {
    for (const rule of np.spec.ingress ?? []) {
      const ports = rule.ports ?? [];
      const opensMetrics = ports.length === 0 || ports.some((p) => metricsPorts.has(p.port) || p.port === "metrics");
      if (opensMetrics && (!(rule.from?.length) || !rule.from.every(isPrometheusPeer))) {
        fail(id(np), `lets non-Prometheus peers reach the metrics port of ${id(w)}`);
      }
    }
  }
}
if (server && worker) {
  const open = policies.filter((np) => matches(np.spec.podSelector?.matchLabels, podLabels(server))).some((np) =>
    (np.spec.ingress ?? []).some((r) => (r.ports ?? []).some((p) => p.port === 50051) &&
      (r.from ?? []).some((peer) => !peer.namespaceSelector && matches(peer.podSelector?.matchLabels, podLabels(worker)))));
  if (!open) fail("NetworkPolicy", "no rule lets the workers reach the server on 50051");
  // Multi-worker jobs: the workers reach each other (c10d's rendezvous and Gloo's pairs).
  const peers = policies.filter((np) => matches(np.spec.podSelector?.matchLabels, podLabels(worker))).some((np) =>
    (np.spec.ingress ?? []).some((r) => (r.from ?? []).some((peer) => !peer.namespaceSelector &&
      matches(peer.podSelector?.matchLabels, podLabels(worker))) &&
      (r.ports ?? []).some((p) => p.port <= 29500 && (p.endPort ?? p.port) >= 29509)));
  if (!peers) fail("NetworkPolicy", "no rule lets the workers reach each other for c10d (29500-29509 and Gloo's ports)");
  const args = worker.spec.template.spec.containers[0].args ?? [];
  if (!args.some((a) => a.startsWith("--c10d-host="))) fail(id(worker), "no --c10d-host: its peers cannot reach it");
}

// PodDisruptionBudgets for server and workers.
for (const w of [server, worker].filter(Boolean)) {
  if (!of("PodDisruptionBudget").some((pdb) => matches(pdb.spec.selector?.matchLabels, podLabels(w)))) {
    fail(id(w), "no PodDisruptionBudget");
  }
}

if (errors.length) {
  for (const e of errors) console.log(`FAIL: ${e}`);
  process.exit(1);
}
console.log(`${overlay}: ${docs.length} objects valid (${[...new Set(docs.map((d) => d.kind))].join(", ")})`);
