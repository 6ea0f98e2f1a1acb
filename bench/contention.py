#!/usr/bin/python3
"""Two jobs at once on one machine: how OpenMP's wait policy and the threads
each local worker gets change the time until both are done.

For each configuration (worker threads x OMP_WAIT_POLICY), a fresh
finetuned --local-workers=2 --worker-threads=T runs with OMP_WAIT_POLICY in
its environment (its workers inherit it; "default" leaves it unset, GNU
OpenMP then spins a while at every barrier before it sleeps); two identical
jobs are submitted together and the clock runs until both have SUCCEEDED.
Configurations alternate within each repetition; medians over repetitions.

  contention.py --bin build/bin [--reps 3] [--train-per-class 100] [--epochs 1]
"""
import argparse, json, os, shutil, statistics, subprocess, sys, tempfile, time

HERE = os.path.dirname(os.path.abspath(__file__))
PY = "/usr/bin/python3"
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))
harness = None  # imported once FT_BIN_DIR is set


def run(a, ds, work, threads, policy):
    d = tempfile.mkdtemp(prefix="ct-", dir=work)
    # The server's workers inherit the environment it starts with.
    os.environ.pop("OMP_WAIT_POLICY", None)
    if policy != "default":
        os.environ["OMP_WAIT_POLICY"] = policy
    srv = harness.Server(os.path.join(d, "var"), [work], local_workers=2,
                         extra=[f"--worker-threads={threads}"]).start()
    try:
        # Both workers dialled in (their banners), then a second.
        harness.wait_for(lambda: srv.log().count("finetune-worker local-") >= 2, 30)
        time.sleep(1.0)
        args = ["submit", "--dataset", f"file://{ds}", "--backbone", "resnet18", "--weights", "none", "--epochs",
                str(a.epochs), "--batch-size", "32", "--image-size", "64", "--freeze-depth", "0", "--augment",
                "standard", "--seed", "0", "--follow"]
        cmd = [harness.FTCTL, f"--server={srv.address}", "--output=json"] + args
        t0 = time.perf_counter()
        procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
        outs = [p.communicate() for p in procs]
        secs = time.perf_counter() - t0
        ips = []
        for p, (out, err) in zip(procs, outs):
            if p.returncode != 0:
                raise RuntimeError(f"ftctl exit {p.returncode}: {err[-2000:]}")
            lines = [json.loads(l) for l in out.splitlines() if l.startswith("{")]
            ips += [float(l["epoch"]["images_per_second"]) for l in lines if isinstance(l.get("epoch"), dict)]
        return dict(threads=threads, policy=policy, seconds=round(secs, 2),
                    images_per_second=round(statistics.median(ips), 1))
    finally:
        srv.stop()
        os.environ.pop("OMP_WAIT_POLICY", None)
        shutil.rmtree(d, ignore_errors=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bin", default="build/bin")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--train-per-class", type=int, default=100)
    p.add_argument("--val-per-class", type=int, default=20)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--threads", default="1,2", help="worker threads to try")
    p.add_argument("--policies", default="default,passive,active")
    p.add_argument("--json-out")
    a = p.parse_args()
    global harness
    os.environ["FT_BIN_DIR"] = os.path.abspath(a.bin)
    import harness as h
    harness = h
    work = os.path.realpath(tempfile.mkdtemp(prefix="ftcontention-"))
    ds = os.path.join(work, "ds")
    subprocess.run([PY, os.path.join(HERE, "make_dataset.py"), ds, "--train-per-class", str(a.train_per_class),
                    "--val-per-class", str(a.val_per_class), "--px", "96"], check=True)
    configs = [(int(t), pol) for t in a.threads.split(",") for pol in a.policies.split(",")]
    res = {c: [] for c in configs}
    sink = open(a.json_out, "a") if a.json_out else None
    for rep in range(a.reps):
        order = configs if rep % 2 == 0 else list(reversed(configs))
        for c in order:
            r = run(a, ds, work, *c)
            r["rep"] = rep
            res[c].append(r)
            print(json.dumps(r), file=sys.stderr, flush=True)
            if sink:
                sink.write(json.dumps(r) + "\n")
                sink.flush()
    base = statistics.median(r["seconds"] for r in res[configs[0]])
    print(f"\ntwo resnet18 jobs at once (random init, 64 px, batch 32, {a.epochs} epoch(s) of "
          f"{10 * a.train_per_class} images, --augment standard), --local-workers=2, {os.cpu_count()} cores; "
          f"median of {a.reps} alternating runs\n")
    print("| worker threads | OMP_WAIT_POLICY | both done, s | images/s per job | vs first row |")
    print("| ---: | --- | ---: | ---: | ---: |")
    for c in configs:
        s = statistics.median(r["seconds"] for r in res[c])
        ips = statistics.median(r["images_per_second"] for r in res[c])
        print(f"| {c[0]} | {c[1]} | {s:.1f} | {ips:.0f} | {base / s:.2f}x |")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
