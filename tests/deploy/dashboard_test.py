#!/usr/bin/python3
"""deploy/grafana/finetune-dashboard.json is a well-formed Grafana dashboard
that shows what operators need: queue depth and wait (p50/p95), trained
images/s, jobs finished by state, worker idle/busy, gRPC latency (p50/p99 by
method) and request rate by code, worker step time and loader wait.

Only Python's standard library; the PromQL itself is parsed by promql_test.py
and its metric names are checked by metric_names_test.py.
"""
import json
import pathlib
import re
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import deploy_sources as ds  # noqa: E402


def has(*patterns):
    """A predicate: the expression matches every regex."""
    compiled = [re.compile(p) for p in patterns]
    return lambda expr: all(c.search(expr) for c in compiled)


QUANTILE = r"histogram_quantile\(\s*0?\.{q}\b"
REQUIRED = [
    ("queue depth", has(r"\bfinetune_queue_depth\b")),
    ("queue wait p50", has(QUANTILE.format(q="5"), r"\bfinetune_queue_wait_seconds_bucket\b")),
    ("queue wait p95", has(QUANTILE.format(q="95"), r"\bfinetune_queue_wait_seconds_bucket\b")),
    ("trained images per second", has(r"rate\(\s*finetune_(trained|worker)_images_total\b")),
    ("jobs finished by state", has(r"by \(state\)", r"\bfinetune_jobs_finished_total\b")),
    ("workers idle/busy", has(r"by \(state\)", r"\bfinetune_workers\b")),
    ("worker utilisation (busy / all)", has(r'finetune_workers\{[^}]*state="busy"[^}]*\}\s*\)\s*/')),
    ("gRPC latency p50 by method", has(QUANTILE.format(q="5"), r"by \(method, le\)", r"\bfinetune_grpc_request_duration_seconds_bucket\b")),
    ("gRPC latency p99 by method", has(QUANTILE.format(q="99"), r"by \(method, le\)", r"\bfinetune_grpc_request_duration_seconds_bucket\b")),
    ("gRPC request rate by code", has(r"by \(code\)", r"rate\(\s*finetune_grpc_requests_total\b")),
    ("worker step time", has(r"histogram_quantile", r"\bfinetune_worker_step_seconds_bucket\b")),
    ("worker loader wait", has(r"rate\(\s*finetune_worker_loader_wait_seconds_total\b")),
]


def main():
    failures = []
    dashboard = json.loads(ds.DASHBOARD.read_text())
    for key in ("title", "uid", "panels", "schemaVersion", "templating"):
        if key not in dashboard:
            failures.append(f"dashboard has no {key!r}")
    variables = {v["name"]: v for v in dashboard.get("templating", {}).get("list", [])}
    if variables.get("datasource", {}).get("type") != "datasource":
        failures.append("no $datasource variable: panels would be bound to one Grafana's data source uid")

    panels = ds.dashboard_panels(dashboard)
    ids = [p.get("id") for p in panels]
    if len(ids) != len(set(ids)) or None in ids:
        failures.append(f"panel ids must be present and unique: {ids}")
    occupied = {}
    for p in panels:
        title = p.get("title", "?")
        g = p.get("gridPos", {})
        if not all(isinstance(g.get(k), int) for k in "hwxy") or g["x"] + g["w"] > 24:
            failures.append(f"panel '{title}': bad gridPos {g}")
            continue
        if p.get("collapsed"):
            continue
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                if (x, y) in occupied:
                    failures.append(f"panel '{title}' overlaps '{occupied[(x, y)]}' at x={x} y={y}")
                    break
                occupied[(x, y)] = title
            else:
                continue
            break
        if p.get("type") == "row":
            continue
        if not p.get("targets"):
            failures.append(f"panel '{title}' has no query")
        for t in p.get("targets", []):
            ds_ref = t.get("datasource") or p.get("datasource") or {}
            if ds_ref.get("uid") != "${datasource}":
                failures.append(f"panel '{title}' {t.get('refId')}: datasource is not ${{datasource}}")
            if not t.get("expr", "").strip():
                failures.append(f"panel '{title}' {t.get('refId')}: empty expr")

    exprs = [e for _, e in ds.dashboard_expressions()]
    for what, predicate in REQUIRED:
        if not any(predicate(e) for e in exprs):
            failures.append(f"no panel shows {what}")

    for f in failures:
        print("FAIL:", f)
    if not failures:
        print(f"{len(panels)} panels, {len(exprs)} queries; all {len(REQUIRED)} required views present")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
