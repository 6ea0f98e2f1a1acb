#!/usr/bin/python3
"""Runs ft_bench_step_time (finetuned) and step_time.py (torchvision)
alternately, one process per architecture per side per repetition (the
side that goes first alternates), and prints a markdown table of the medians
over repetitions of each run's median step time.

  step_time_compare.py --bench-bin DIR [--arch LIST|priority|all] [--reps 3] [--threads 2] ...
                       [--blas system|ref,blis,openblas]

--blas runs every (architecture, side) under each named BLAS in turn, in the
same repetition, by pointing LD_LIBRARY_PATH at a folder of two links,
libblas.so.3 and liblapack.so.3 (see BLAS below; Debian's packages
libblas3/liblapack3, libblis4-pthread, libopenblas0-pthread provide them).
Both sides load libblas.so.3 through LibTorch, so both get the same one.

Our side runs on tcmalloc, preloaded, as finetune-worker links it
(worker/CMakeLists.txt); PyTorch runs as a user's script does, on glibc's
malloc. --also-glibc adds a third side, ours on glibc's malloc, to show
what the allocator gives (bench/README.md, "Allocator").
"""
import argparse, json, os, statistics, subprocess, sys, tempfile

PRIORITY = ["resnet18", "resnet50", "mobilenet_v2", "efficientnet_b0", "vgg11", "densenet121",
            "convnext_tiny", "inception_v3"]
HERE = os.path.dirname(os.path.abspath(__file__))


def all_archs(bench_bin):
    # The catalog is the source of truth; ask the C++ side for nothing, parse the catalog file.
    src = os.path.join(HERE, "..", "common", "catalog", "catalog.cc")
    import re
    # An entry is {"name", {"stage", ...}, ...}; the name is what a stage list follows.
    names = re.findall(r'\{"([a-z0-9_]+)",\s*\{"', open(src).read())
    return [n for n in names if n != "torchscript"]


LIB = "/usr/lib/x86_64-linux-gnu"
TCMALLOC = f"{LIB}/libtcmalloc_minimal.so.4"
# name -> (libblas.so.3, liblapack.so.3). BLIS has no LAPACK: the reference
# LAPACK on top of it, as Debian's alternatives give.
BLAS = {
    "ref": (f"{LIB}/blas/libblas.so.3", f"{LIB}/lapack/liblapack.so.3"),
    "blis": (f"{LIB}/blis-pthread/libblas.so.3", f"{LIB}/lapack/liblapack.so.3"),
    "openblas": (f"{LIB}/openblas-pthread/libblas.so.3", f"{LIB}/openblas-pthread/liblapack.so.3"),
}


def blas_env(name, scratch):
    """The environment that makes a process load BLAS `name` (None: as installed)."""
    if name == "system":
        return None
    blas, lapack = BLAS[name]
    for f in (blas, lapack):
        if not os.path.exists(f):
            sys.exit(f"--blas {name}: {f} is missing (install its Debian package)")
    d = os.path.join(scratch, name)
    os.makedirs(d, exist_ok=True)
    for link, target in (("libblas.so.3", blas), ("liblapack.so.3", lapack)):
        if not os.path.lexists(os.path.join(d, link)):
            os.symlink(target, os.path.join(d, link))
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = d + (":" + env["LD_LIBRARY_PATH"] if env.get("LD_LIBRARY_PATH") else "")
    return env


def with_tcmalloc(env):
    if not os.path.exists(TCMALLOC):
        sys.exit(f"{TCMALLOC} is missing (apt install libtcmalloc-minimal4)")
    env = dict(env or os.environ)
    env["LD_PRELOAD"] = TCMALLOC + (":" + env["LD_PRELOAD"] if env.get("LD_PRELOAD") else "")
    return env


def run(cmd, env=None):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
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
    p.add_argument("--blas", default="system", help="comma list of system, ref, blis, openblas")
    p.add_argument("--also-glibc", action="store_true", help="also run our side on glibc's malloc")
    a = p.parse_args()
    blases = a.blas.split(",")
    scratch = tempfile.mkdtemp(prefix="ft-blas-")
    envs = {b: blas_env(b, scratch) for b in blases}
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
    sides = ["finetuned", "pytorch"] + (["finetuned-glibc"] if a.also_glibc else [])
    res = {(arch, b): {side: [] for side in sides} for arch in archs for b in blases}
    sink = open(a.json_out, "a") if a.json_out else None
    for rep in range(a.reps):
        for i, arch in enumerate(archs):
            for j, b in enumerate(blases):
                order = [("finetuned", cpp, with_tcmalloc(envs[b])), ("pytorch", py, envs[b])]
                if a.also_glibc:
                    order.append(("finetuned-glibc", cpp, envs[b]))
                if (rep + i + j) % 2:
                    order.reverse()
                for side, cmd, env in order:
                    for r in run(cmd + ["--arch", arch], env):
                        res[(arch, b)][side].append(r["ms_median"])
                        if sink:
                            sink.write(json.dumps(dict(r, rep=rep, side=side, blas=b)) + "\n")
                            sink.flush()
                    print(f"rep {rep} {arch} {b} {side}: {res[(arch, b)][side][-1]:.1f} ms", file=sys.stderr,
                          flush=True)
    print(f"\nbatch {a.batch}, {a.size} px ({a.inception_size} px for inception_v3), {a.threads} threads, "
          f"Adam, {a.warmup} warm-up + {a.iters} timed steps per run, median of {a.reps} runs per side\n")
    if blases == ["system"]:
        glibc_head = " finetuned on glibc malloc ms/step | tcmalloc's speed-up (ours) |" if a.also_glibc else ""
        print("| arch | finetuned ms/step | PyTorch ms/step | ratio (PyTorch/finetuned) |" + glibc_head)
        print("| --- | ---: | ---: | ---: |" + (" ---: | ---: |" if a.also_glibc else ""))
        for arch in archs:
            f = statistics.median(res[(arch, "system")]["finetuned"])
            t = statistics.median(res[(arch, "system")]["pytorch"])
            row = f"| {arch} | {f:.1f} | {t:.1f} | {t / f:.2f} |"
            if a.also_glibc:
                g = statistics.median(res[(arch, "system")]["finetuned-glibc"])
                row += f" {g:.1f} | {g / f:.2f}x |"
            print(row)
        return
    # One row per architecture: finetuned / PyTorch ms per BLAS, the ratio
    # PyTorch/finetuned, and each BLAS's speed-up over ref on our side.
    head = ["arch"] + [f"{b} ours / PyTorch ms (ratio)" for b in blases]
    if "ref" in blases:
        head += [f"{b} vs ref (ours)" for b in blases if b != "ref"]
    print("| " + " | ".join(head) + " |")
    print("| --- |" + " ---: |" * (len(head) - 1))
    for arch in archs:
        cells = [arch]
        med = {b: (statistics.median(res[(arch, b)]["finetuned"]), statistics.median(res[(arch, b)]["pytorch"]))
               for b in blases}
        for b in blases:
            f, t = med[b]
            cells.append(f"{f:.0f} / {t:.0f} ({t / f:.2f})")
        if "ref" in blases:
            cells += [f"{med['ref'][0] / med[b][0]:.2f}x" for b in blases if b != "ref"]
        print("| " + " | ".join(cells) + " |")

if __name__ == "__main__":
    main()
