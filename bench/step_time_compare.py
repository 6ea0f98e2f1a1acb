#!/usr/bin/python3
"""Runs ft_bench_step_time (finetuned) and step_time.py (torchvision)
alternately, one process per architecture per side per repetition (the
side that goes first alternates), and prints a markdown table of the medians
over repetitions of each run's median step time.

  step_time_compare.py --bench-bin DIR [--arch LIST|priority|all] [--reps 3] [--threads 2] ...
"""
import argparse, json, os, statistics, subprocess, sys

PRIORITY = ["resnet18", "resnet50", "mobilenet_v2", "efficientnet_b0", "vgg11", "densenet121",
            "convnext_tiny", "inception_v3"]
HERE = os.path.dirname(os.path.abspath(__file__))


def all_archs(bench_bin):
    # The catalog is the source of truth; ask the C++ side for nothing, parse the catalog file.
    src = os.path.join(HERE, "..", "worker", "catalog", "catalog.cc")
    import re
    # An entry is {"name", {"stage", ...}, ...}; the name is what a stage list follows.
    names = re.findall(r'\{"([a-z0-9_]+)",\s*\{"', open(src).read())
    return [n for n in names if n != "torchscript"]


def run(cmd):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return [json.loads(l) for l in out.splitlines() if l.startswith("{")]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bench-bin", required=True, help="dir holding ft_bench_step_time")
    p.add_argument("--arch", default="priority")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--inception-size", type=int, default=80)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--json-out", help="append raw JSON lines here")
    a = p.parse_args()
    if a.arch == "priority":
        archs = PRIORITY
    elif a.arch == "all":
        archs = all_archs(a.bench_bin)
    elif a.arch == "rest":
        archs = [x for x in all_archs(a.bench_bin) if x not in PRIORITY]
    else:
        archs = a.arch.split(",")
    common = ["--batch", str(a.batch), "--size", str(a.size), "--inception-size", str(a.inception_size),
              "--threads", str(a.threads), "--warmup", str(a.warmup), "--iters", str(a.iters)]
    cpp = [os.path.join(a.bench_bin, "ft_bench_step_time")] + common
    py = ["/usr/bin/python3", os.path.join(HERE, "step_time.py")] + common
    res = {arch: {"finetuned": [], "pytorch": []} for arch in archs}
    sink = open(a.json_out, "a") if a.json_out else None
    for rep in range(a.reps):
        for i, arch in enumerate(archs):
            order = [("finetuned", cpp), ("pytorch", py)]
            if (rep + i) % 2:
                order.reverse()
            for side, cmd in order:
                for r in run(cmd + ["--arch", arch]):
                    res[arch][side].append(r["ms_median"])
                    if sink:
                        sink.write(json.dumps(dict(r, rep=rep)) + "\n")
                        sink.flush()
                print(f"rep {rep} {arch} {side}: {res[arch][side][-1]:.1f} ms", file=sys.stderr, flush=True)
    print(f"\nbatch {a.batch}, {a.size} px ({a.inception_size} px for inception_v3), {a.threads} threads, "
          f"Adam, {a.warmup} warm-up + {a.iters} timed steps per run, median of {a.reps} runs per side\n")
    print("| arch | finetuned ms/step | PyTorch ms/step | ratio (PyTorch/finetuned) |")
    print("| --- | ---: | ---: | ---: |")
    for arch in archs:
        f = statistics.median(res[arch]["finetuned"])
        t = statistics.median(res[arch]["pytorch"])
        print(f"| {arch} | {f:.1f} | {t:.1f} | {t / f:.2f} |")


if __name__ == "__main__":
    main()
