#!/usr/bin/python3
"""The PrometheusRule in deploy/k8s/base carries exactly the alert rules of
deploy/prometheus/rules/finetune-alerts.yml (same groups, rules, expressions,
labels, annotations). Fix a failure with deploy/k8s/gen-prometheusrule.py.
Needs python3-yaml; skips (77) without it."""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import deploy_sources as ds  # noqa: E402


def main():
    (rules,) = ds.load_yaml_docs(ds.RULES)
    (crd,) = ds.load_yaml_docs(ds.PROMETHEUSRULE)
    failures = []
    if crd.get("apiVersion") != "monitoring.coreos.com/v1" or crd.get("kind") != "PrometheusRule":
        failures.append(f"{ds.PROMETHEUSRULE.name} is not a monitoring.coreos.com/v1 PrometheusRule")
    spec_groups = crd.get("spec", {}).get("groups")
    if spec_groups != rules["groups"]:
        ours = {r.get("alert"): r for g in rules["groups"] for r in g["rules"]}
        theirs = {r.get("alert"): r for g in spec_groups or [] for r in g.get("rules", [])}
        for name in sorted(set(ours) | set(theirs), key=str):
            if ours.get(name) != theirs.get(name):
                failures.append(f"alert {name} differs between the rule file and the PrometheusRule")
        if not failures:
            failures.append("the groups differ (names, order or intervals)")
        failures.append("run deploy/k8s/gen-prometheusrule.py to regenerate the PrometheusRule")
    for f in failures:
        print("FAIL:", f)
    if not failures:
        print(f"PrometheusRule matches {ds.RULES.name}: {sum(len(g['rules']) for g in spec_groups)} rules")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
