"""Shared helpers for the tests in tests/deploy: where the deployment files are
and every PromQL expression they contain."""
import json
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy/prometheus/rules/finetune-alerts.yml"
RULES_TEST = ROOT / "deploy/prometheus/rules/finetune-alerts.test.yml"
DASHBOARD = ROOT / "deploy/grafana/finetune-dashboard.json"
PROMETHEUSRULE = ROOT / "deploy/k8s/base/prometheusrule.yaml"
SCALEDOBJECT = ROOT / "deploy/k8s/base/keda-scaledobject.yaml"

SKIP = 77  # CTest SKIP_RETURN_CODE


def require_yaml():
    """PyYAML (Debian python3-yaml, a dependency of python3-torch) or skip."""
    try:
        import yaml  # noqa: F401
    except ImportError:
        print("SKIP: python3-yaml is not installed")
        sys.exit(SKIP)
    import yaml
    return yaml


def load_yaml_docs(path):
    yaml = require_yaml()
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def rule_expressions():
    """[(where, expr)] for every rule in the alert rule file."""
    out = []
    (doc,) = load_yaml_docs(RULES)
    for group in doc["groups"]:
        for rule in group["rules"]:
            name = rule.get("alert") or rule.get("record")
            out.append((f"{RULES.name}: {name}", rule["expr"]))
    return out


def dashboard_panels(dashboard=None):
    """Every panel, including those nested in collapsed rows."""
    dashboard = dashboard or json.loads(DASHBOARD.read_text())
    out = []
    for panel in dashboard.get("panels", []):
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def dashboard_expressions():
    """[(where, expr)] for every panel target of the dashboard."""
    out = []
    for panel in dashboard_panels():
        for target in panel.get("targets", []):
            if "expr" in target:
                out.append((f"{DASHBOARD.name}: panel '{panel.get('title')}' {target.get('refId')}", target["expr"]))
    return out


def dashboard_variable_queries():
    """[(where, query)] for templating queries such as label_values(metric, label)."""
    out = []
    dashboard = json.loads(DASHBOARD.read_text())
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") != "query":
            continue
        q = var.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        if q:
            out.append((f"{DASHBOARD.name}: variable ${var['name']}", q))
    return out


def keda_expressions():
    out = []
    for doc in load_yaml_docs(SCALEDOBJECT):
        for i, trig in enumerate(doc.get("spec", {}).get("triggers", [])):
            if trig.get("type") == "prometheus":
                out.append((f"{SCALEDOBJECT.name}: trigger {i}", trig["metadata"]["query"]))
    return out


# Grafana's variables, replaced by values that keep the expression valid PromQL.
GRAFANA_SUBSTITUTIONS = [
    (re.compile(r"\$__rate_interval|\$__interval|\$__range|\$\{__rate_interval\}|\$\{__interval\}|\$\{__range\}"), "5m"),
    (re.compile(r"\$\{?namespace\}?"), ".*"),
]


def as_promql(expr):
    for pattern, value in GRAFANA_SUBSTITUTIONS:
        expr = pattern.sub(value, expr)
    return expr
