#!/usr/bin/python3
"""Every PromQL expression shipped in deploy/ parses, and every alert is unit-tested.

- Expressions of the alert rules, the Grafana dashboard (with Grafana's
  $__rate_interval / $namespace replaced by literal values) and the KEDA
  trigger are each written as a recording rule and parsed by `promtool check
  rules`, so a typo in a dashboard query fails here rather than in Grafana.
- finetune-alerts.test.yml must have, for every alert, a case where it fires
  (non-empty exp_alerts) and one where it must not (empty exp_alerts).

Needs promtool (Debian package prometheus) and python3-yaml; skips (77) without.
"""
import pathlib
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import deploy_sources as ds  # noqa: E402


def check_syntax(failures):
    promtool = shutil.which("promtool")
    if not promtool:
        print("SKIP: promtool is not installed (Debian package prometheus)")
        sys.exit(ds.SKIP)
    yaml = ds.require_yaml()
    exprs = ds.rule_expressions() + ds.dashboard_expressions() + ds.keda_expressions()
    if len(ds.dashboard_expressions()) < 10:
        failures.append("the dashboard has fewer than 10 PromQL targets; did the JSON layout change?")
    with tempfile.TemporaryDirectory() as tmp:
        files = {}
        for i, (where, expr) in enumerate(exprs):
            promql = ds.as_promql(expr)
            if "$" in promql:
                failures.append(f"{where}: unknown Grafana variable left in {promql!r}")
                continue
            path = pathlib.Path(tmp) / f"expr_{i:03d}.yml"
            path.write_text(yaml.safe_dump(
                {"groups": [{"name": "syntax", "rules": [{"record": "syntax:check", "expr": promql}]}]}))
            files[str(path)] = (where, promql)
        proc = subprocess.run([promtool, "check", "rules", *files], capture_output=True, text=True)
        if proc.returncode != 0:
            # promtool's error lines start with the file they are about.
            for line in (proc.stdout + proc.stderr).splitlines():
                for path, (where, promql) in files.items():
                    if path in line and not line.lstrip().startswith("Checking"):
                        failures.append(f"{where}: {line.strip()}\n    {promql}")
            if not failures:
                failures.append("promtool check rules failed:\n" + proc.stdout + proc.stderr)
    print(f"parsed {len(exprs)} PromQL expressions with promtool")


def check_alert_tests(failures):
    (rules,) = ds.load_yaml_docs(ds.RULES)
    (tests,) = ds.load_yaml_docs(ds.RULES_TEST)
    if ds.RULES.name not in tests.get("rule_files", []):
        failures.append(f"{ds.RULES_TEST.name} does not load {ds.RULES.name}")
    before = len(failures)
    fires, silent = set(), set()
    for case in tests.get("tests", []):
        for t in case.get("alert_rule_test", []):
            (fires if t.get("exp_alerts") else silent).add(t["alertname"])
    alerts = [r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r]
    for alert in alerts:
        if alert not in fires:
            failures.append(f"{alert}: no promtool test case where it fires")
        if alert not in silent:
            failures.append(f"{alert}: no promtool test case where it must not fire")
    unknown = (fires | silent) - set(alerts)
    if unknown:
        failures.append(f"tests name alerts that do not exist: {sorted(unknown)}")
    if len(failures) == before:
        print(f"{len(alerts)} alerts, each tested firing and not firing")


def main():
    failures = []
    check_syntax(failures)
    check_alert_tests(failures)
    for f in failures:
        print("FAIL:", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
