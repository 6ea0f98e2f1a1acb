#!/usr/bin/python3
"""Every metric that deploy/ queries is one the service exports.

The names the service exports are read from its C++ sources, where each metric
is registered with a "finetune_..." string literal:
  server/metrics/*.cc, *.h          (finetuned)
  worker/agent/*metrics*.cc, *.h    (finetune-worker)
A literal registered through prometheus-cpp's BuildHistogram() also exports
NAME_bucket, NAME_sum and NAME_count (BuildSummary(): NAME_sum, NAME_count);
counters are named with their _total suffix in the source, so the literal is the
exported name. When the builder cannot be seen in the same statement (e.g. the
name is a constant), the suffixes are allowed and a note is printed.

The queries checked are those of the alert rules, the Grafana dashboard
(panels and variables) and the KEDA trigger. A histogram's own name is not a
series, so using it without a suffix is an error too.

Fails, on purpose, while those C++ sources do not exist: there is then nothing
that exports the metrics the dashboard and alerts rely on.
"""
import pathlib
import re
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import deploy_sources as ds  # noqa: E402

SOURCE_GLOBS = [
    "server/metrics/*.cc", "server/metrics/*.h",
    "worker/agent/*metrics*.cc", "worker/agent/*metrics*.h",
]
LITERAL = re.compile(r'"(finetune_[a-z0-9_]+)"')
BUILDER = re.compile(r"\bBuild(Counter|Gauge|Histogram|Summary|Info)\s*\(")
# A metric name in PromQL (label names and values never start with finetune_).
USED = re.compile(r"(?<![A-Za-z0-9_:\"])(finetune_[a-z0-9_]+)")
SUFFIXES = {"Histogram": ("_bucket", "_sum", "_count"), "Summary": ("_sum", "_count")}


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    return re.sub(r"//[^\n]*", " ", text)


def exported_metrics():
    """{series name: (base name, type or None, source file)}"""
    exported = {}
    files = sorted({p for g in SOURCE_GLOBS for p in ds.ROOT.glob(g)})
    for path in files:
        text = strip_comments(path.read_text(errors="replace"))
        for m in LITERAL.finditer(text):
            name = m.group(1)
            # The statement holding the literal: from the previous ';' or '{' or '}'.
            start = max(text.rfind(c, 0, m.start()) for c in ";{}") + 1
            builders = BUILDER.findall(text[start:m.start()])
            kind = builders[-1] if builders else None
            rel = path.relative_to(ds.ROOT)
            exported[name] = (name, kind, rel)
            suffixes = SUFFIXES.get(kind) if kind else ("_bucket", "_sum", "_count")
            for s in suffixes or ():
                exported.setdefault(name + s, (name, kind, rel))
    return files, exported


def main():
    files, exported = exported_metrics()
    if not files:
        print("FAIL: none of " + ", ".join(SOURCE_GLOBS) + " exists: the metrics that deploy/ queries are"
              " not exported by any source yet")
        return 1
    bases = {v[0]: v for v in exported.values()}
    print("exported by the sources:")
    for base, (_, kind, rel) in sorted(bases.items()):
        note = kind or "type not seen: _bucket/_sum/_count allowed"
        print(f"  {base:48s} {note:12s} {rel}")

    queries = (ds.rule_expressions() + ds.dashboard_expressions() + ds.dashboard_variable_queries()
               + ds.keda_expressions())
    failures = []
    used = set()
    for where, expr in queries:
        for name in sorted(set(USED.findall(expr))):
            used.add(name)
            if name not in exported:
                failures.append(f"{where}: {name} is not exported (no \"{name}\" in {', '.join(SOURCE_GLOBS)})")
            elif bases.get(name, (None, None))[1] in SUFFIXES:
                failures.append(f"{where}: {name} is a {bases[name][1].lower()}; query {name}_bucket/_sum/_count")
    for f in failures:
        print("FAIL:", f)
    unused = sorted(set(bases) - {exported[u][0] for u in used if u in exported})
    if unused:
        print("note: exported but shown nowhere in deploy/: " + ", ".join(unused))
    if not failures:
        print(f"all {len(used)} metric names used by {len(queries)} queries are exported")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
