#!/usr/bin/python3
"""Markdown table from the JSON lines step_time_compare.py --json-out wrote
(possibly several runs appended): per arch, the median over runs of each
run's median step time, and the number of runs per side.

  step_time_table.py FILE.jsonl
"""
import collections, json, statistics, sys

res = collections.defaultdict(lambda: {"finetuned": [], "pytorch": []})
order = []
for line in open(sys.argv[1]):
    r = json.loads(line)
    if r["arch"] not in res:
        order.append(r["arch"])
    res[r["arch"]][r["side"]].append(r["ms_median"])
print("| arch | input px | finetuned ms/step | PyTorch ms/step | ratio (PyTorch/finetuned) | runs per side |")
print("| --- | ---: | ---: | ---: | ---: | ---: |")
for arch in order:
    f, t = res[arch]["finetuned"], res[arch]["pytorch"]
    if not f or not t:
        continue
    mf, mt = statistics.median(f), statistics.median(t)
    px = 80 if arch == "inception_v3" else 64
    print(f"| {arch} | {px} | {mf:.0f} | {mt:.0f} | {mt / mf:.2f} | {min(len(f), len(t))} |")
