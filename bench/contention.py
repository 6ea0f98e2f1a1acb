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
import argparse, json, os, shutil, signal, statistics, subprocess, sys, tempfile, time

HERE = os.path.dirname(os.path.abspath(__file__))
PY = "/usr/bin/python3"


def run(a, ds, work, threads, policy):
    d = tempfile.mkdtemp(prefix="ct-", dir=work)
    port_file = os.path.join(d, "port")
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)
    if policy != "default":
        env["OMP_WAIT_POLICY"] = policy
    log = open(os.path.join(d, "server.log"), "wb")
    srv = subprocess.Popen([os.path.join(a.bin, "finetuned"), "--listen=127.0.0.1:0", f"--port-file={port_file}",
                            f"--data-dir={d}/var", f"--dataset-roots={work}", "--local-workers=2",
                            f"--worker-threads={threads}"], stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        for _ in range(300):
            if os.path.exists(port_file) and open(port_file).read().strip():
                break
            time.sleep(0.1)
        port = open(port_file).read().strip()
        # Both workers dialled in (their banners), then a second.
        for _ in range(300):
            if open(os.path.join(d, "server.log")).read().count("finetune-worker local-") >= 2:
                break
            time.sleep(0.1)
        time.sleep(1.0)
        cmd = [os.path.join(a.bin, "ftctl"), "--server", f"127.0.0.1:{port}", "--output", "json", "submit",
               "--dataset", f"file://{ds}", "--backbone", "resnet18", "--weights", "none", "--epochs",
               str(a.epochs), "--batch-size", "32", "--image-size", "64", "--freeze-depth", "0", "--augment",
               "standard", "--seed", "0", "--follow"]
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
        srv.send_signal(signal.SIGTERM)
        try:
            srv.wait(timeout=30)
        except subprocess.TimeoutExpired:
            srv.kill()
            srv.wait()
        log.close()
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
    a.bin = os.path.abspath(a.bin)
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
