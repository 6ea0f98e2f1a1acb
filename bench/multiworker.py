#!/usr/bin/python3
"""Scaling efficiency of one job on several workers (issue 15).

One worker of one thread against N workers of one thread each (--workers N),
on the same job, through a real finetuned (SQLite, no local workers) and real
finetune-workers started by hand, alternating: 1, N, 1, N, ... Reported per
run: the epochs' training throughput (EpochSummary.images_per_second: the
whole global batch's images over the steps' time, rank 0's clock) and the
wall time from submit to SUCCEEDED. Efficiency = throughput(N) / (N x
throughput(1)), from the medians.

  bench/multiworker.py --bin build/bin [--workers 2] [--reps 3] [--backbone resnet18]

Prints JSON lines on stderr as it goes and a Markdown summary on stdout. Wall
times are what this machine gave on that run; nothing asserts them.
"""
import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))


def log(**kv):
    print(json.dumps(kv), file=sys.stderr, flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bin", required=True)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--train-per-class", type=int, default=200)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    a = p.parse_args()
    os.environ["FT_BIN_DIR"] = os.path.abspath(a.bin)
    import harness

    tmp = tempfile.mkdtemp(prefix="ft-bench-mw-")
    try:
        data = harness.make_imagefolder(os.path.join(tmp, "data"), classes=4, train_per_class=a.train_per_class,
                                        val_per_class=a.train_per_class // 4, size=a.image_size)
        server = harness.Server(os.path.join(tmp, "var"), [tmp], local_workers=0).start()
        workers = [harness.Worker(server, os.path.join(tmp, f"w{i}"), "--threads=1", "--c10d-host=127.0.0.1",
                                  f"--worker-id=w{i}") for i in range(a.workers)]
        results = {1: [], a.workers: []}
        try:
            for rep in range(a.reps):
                for n in (1, a.workers):
                    start = time.time()
                    r, events, job = server.submit(
                        f"--dataset=file://{data}", f"--backbone={a.backbone}", "--weights=none",
                        f"--image-size={a.image_size}", f"--epochs={a.epochs}", f"--batch-size={a.batch_size}",
                        "--augment=standard", f"--workers={n}", "--seed=1", timeout=3600)
                    wall = time.time() - start
                    if r.returncode != 0 or not job or job["state"] != "SUCCEEDED":
                        raise SystemExit(f"job failed: {r.stderr}\n{json.dumps(job)[:2000]}\n{server.log()}")
                    epochs = [e["epoch"] for e in events if "epoch" in e]
                    ips = statistics.median(e["images_per_second"] for e in epochs)
                    row = {"rep": rep, "workers": n, "images_per_second": round(ips, 2), "wall_seconds": round(wall, 1),
                           "val_accuracy": job["metrics"]["val_accuracy"]}
                    results[n].append(row)
                    log(**row)
        finally:
            for w in workers:
                w.stop()
            server.stop()
        one = statistics.median(r["images_per_second"] for r in results[1])
        many = statistics.median(r["images_per_second"] for r in results[a.workers])
        wall1 = statistics.median(r["wall_seconds"] for r in results[1])
        walln = statistics.median(r["wall_seconds"] for r in results[a.workers])
        print(f"| workers (1 thread each) | training images/s (median of {a.reps}) | submit to SUCCEEDED, s |")
        print("| --- | --- | --- |")
        print(f"| 1 | {one:.1f} | {wall1:.1f} |")
        print(f"| {a.workers} | {many:.1f} | {walln:.1f} |")
        print()
        print(f"Scaling efficiency (training throughput): {many / (a.workers * one):.2f}; "
              f"speed-up {many / one:.2f}x in training, {wall1 / walln:.2f}x end to end. "
              f"{a.backbone}, {a.image_size} px, batch {a.batch_size}, {a.epochs} epochs of "
              f"{4 * a.train_per_class} images, augment standard.")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
