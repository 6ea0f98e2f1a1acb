#!/usr/bin/python3
"""What checkpoints cost, and how soon a killed job trains again (issue 11's targets).

  (a) Overhead: a ResNet-50 job (everything trainable, Adam) through a real
      finetuned, run twice per repetition, alternating: --checkpoint-interval=0
      (epoch ends only) and a short interval (default 8 s) that forces several
      mid-epoch checkpoints. The worker logs what training waited for at each
      checkpoint ("checkpoint written": serialise_seconds + store_seconds, the
      upload and the server's fsync included). Reported: the median cost of one
      checkpoint, the median step time, and the overhead that cost means at the
      default 300 s interval (cost / 300 s) and at an epoch end (cost / epoch
      time). Side by side, the PyTorch reference: what a plain script pays for
      the same state, torch.save({"model", "optimizer"}) to a file, flushed and
      fsynced.
  (b) Time to training again: a resnet18 job on a server with --lease-ttl-seconds=60
      and one local worker; at a random moment of training the worker gets
      SIGKILL (or SIGTERM); the clock runs to the first training progress of the
      next attempt, as `ftctl watch` shows it. Targets: 30 s after SIGKILL, 20 s
      after SIGTERM.

  bench/checkpoints.py --bin build/bin [--parts a,b] [--reps 3]

JSON lines on stderr as it goes, a Markdown summary on stdout. Wall times are
what this machine gave on that run; nothing asserts them.
"""
import argparse
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))
harness = None  # imported once FT_BIN_DIR is set


def log(**kv):
    print(json.dumps(kv), file=sys.stderr, flush=True)


class Watch:
    """`ftctl watch` in the background; each event with its arrival time."""

    def __init__(self, server, job_id):
        self.events = []
        self.proc = subprocess.Popen([harness.FTCTL, f"--server={server.address}", "--output=json", "watch", job_id],
                                     stdout=subprocess.PIPE, text=True)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        for line in self.proc.stdout:
            if line.strip():
                self.events.append((time.time(), json.loads(line)))

    def wait(self, timeout=3600):
        self.proc.wait(timeout=timeout)
        self.thread.join()


def overhead(a, work, data):
    job = ["--backbone=resnet50", f"--image-size={a.px}", f"--batch-size={a.batch}", "--epochs=1",
           "--optimizer=adam", "--lr=0.0005", "--freeze-depth=0", "--seed=3", "--augment=none"]
    rows = []
    for rep in range(a.reps):
        order = [0, a.interval] if rep % 2 == 0 else [a.interval, 0]
        for interval in order:
            d = os.path.join(work, f"a-{rep}-{interval}")
            server = harness.Server(d, [data], extra=[f"--worker-threads={a.threads}"]).start()
            try:
                start = time.time()
                r, events, final = server.submit(f"--dataset=file://{data}", *job,
                                                 f"--checkpoint-interval={interval}", timeout=7200)
                wall = time.time() - start
                assert final and final["state"] == "SUCCEEDED", (r.stderr, server.log())
                written = [l for l in open(server.log_path, errors="replace") if "checkpoint written" in l]
            finally:
                server.stop()
            costs = [float(re.search(r"serialise_seconds=([\d.]+)", l).group(1)) +
                     float(re.search(r"store_seconds=([\d.]+)", l).group(1)) for l in written]
            summaries = [e["epoch"] for e in events if "epoch" in e]
            epoch_seconds = float(summaries[-1].get("epoch_seconds", 0)) if summaries else 0
            steps = [e["progress"] for e in events if "progress" in e and e["progress"].get("phase") == "train"]
            steps_per_epoch = int(steps[-1].get("steps_per_epoch", 0)) if steps else 0
            bytes_ = int(re.search(r"bytes=(\d+)", written[-1]).group(1)) if written else 0
            row = dict(part="a", side="finetuned", rep=rep, interval=interval, wall=wall, checkpoints=len(costs),
                       costs=costs, epoch_seconds=epoch_seconds, steps_per_epoch=steps_per_epoch, bytes=bytes_)
            log(**row)
            rows.append(row)
        py = subprocess.run(["/usr/bin/python3", "-c", PYTORCH_SAVE, str(a.px), str(a.batch), str(a.threads),
                             os.path.join(work, f"torch-{rep}.pt")], capture_output=True, text=True, check=True)
        row = dict(part="a", side="pytorch", rep=rep, **json.loads(py.stdout))
        log(**row)
        rows.append(row)
    return rows


# The reference: a plain script checkpointing the same state (ResNet-50, Adam
# after one step), the way PyTorch's docs save a general checkpoint.
PYTORCH_SAVE = r"""
import json, os, sys, time, torch, torchvision
px, batch, threads, path = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
torch.set_num_threads(threads)
m = torchvision.models.resnet50(num_classes=10)
opt = torch.optim.Adam(m.parameters(), lr=5e-4)
x, y = torch.randn(batch, 3, px, px), torch.randint(0, 10, (batch,))
torch.nn.functional.cross_entropy(m(x), y).backward()
opt.step()
times = []
for _ in range(3):
    t = time.time()
    with open(path, "wb") as f:
        torch.save({"epoch": 1, "model": m.state_dict(), "optimizer": opt.state_dict()}, f)
        f.flush()
        os.fsync(f.fileno())
    times.append(time.time() - t)
print(json.dumps({"save_seconds": sorted(times)[1], "bytes": os.path.getsize(path)}))
os.remove(path)
"""


def time_to_training(a, work, data):
    job = ["--backbone=resnet18", "--image-size=48", "--batch-size=8", "--epochs=20", "--optimizer=sgd",
           "--lr=0.002", "--checkpoint-interval=5", "--seed=1"]
    rows = []
    rng = random.Random(7)
    for rep in range(a.reps):
        for sig in (signal.SIGKILL, signal.SIGTERM):
            d = os.path.join(work, f"b-{rep}-{sig}")
            server = harness.Server(d, [data], extra=["--lease-ttl-seconds=60"]).start()
            try:
                r = server.ftctl("submit", f"--dataset=file://{data}", *job, json_output=True)
                job_id = json.loads(r.stdout)["id"]
                w = Watch(server, job_id)
                while not any("progress" in e and e["progress"].get("phase") == "train" for _, e in w.events):
                    time.sleep(0.2)
                time.sleep(rng.uniform(3, 10))
                pids = harness.worker_pids(server.proc.pid)
                killed_at = time.time()
                for p in pids:
                    os.kill(p, sig)
                again = None
                deadline = time.time() + 300
                while again is None and time.time() < deadline:
                    attempts = [t for t, e in w.events if t > killed_at and e.get("state_changed", {}).get("state")
                                == "RUNNING"]
                    if attempts:
                        later = [t for t, e in w.events if t > attempts[0] and "progress" in e and
                                 e["progress"].get("phase") == "train"]
                        again = later[0] if later else None
                    time.sleep(0.1)
                server.ftctl("cancel", job_id)
                w.wait(timeout=120)
            finally:
                server.stop()
            row = dict(part="b", signal=signal.Signals(sig).name, rep=rep,
                       seconds=None if again is None else again - killed_at)
            log(**row)
            rows.append(row)
    return rows


def med(values):
    return statistics.median(values) if values else float("nan")


def main():
    global harness
    p = argparse.ArgumentParser()
    p.add_argument("--bin", default="build/bin")
    p.add_argument("--parts", default="a,b")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--interval", type=int, default=8, help="part a's short interval, seconds")
    p.add_argument("--train-per-class", type=int, default=40)
    p.add_argument("--px", type=int, default=64)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--work", default=None)
    a = p.parse_args()
    os.environ["FT_BIN_DIR"] = os.path.abspath(a.bin)
    import harness as h
    harness = h
    work = a.work or tempfile.mkdtemp(prefix="ft-bench-ckpt-")
    data = os.path.join(work, "data", "fmnist")
    subprocess.run(["/usr/bin/python3", os.path.join(HERE, "make_dataset.py"), data, "--train-per-class",
                    str(a.train_per_class), "--val-per-class", "10", "--px", str(a.px)], check=True)
    rows = []
    parts = a.parts.split(",")
    try:
        if "a" in parts:
            rows += overhead(a, work, data)
        if "b" in parts:
            rows += time_to_training(a, work, data)
    finally:
        if a.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print("## Checkpoints (bench/checkpoints.py)\n")
    ours = [r for r in rows if r.get("part") == "a" and r.get("side") == "finetuned"]
    if ours:
        costs = [c for r in ours for c in r["costs"]]
        torch_saves = [r["save_seconds"] for r in rows if r.get("side") == "pytorch"]
        epoch = med([r["epoch_seconds"] for r in ours if r["interval"] == 0])
        epoch_short = med([r["epoch_seconds"] for r in ours if r["interval"] > 0])
        cost = med(costs)
        steps = med([r["steps_per_epoch"] for r in ours])
        print(f"(a) ResNet-50, {a.px} px, batch {a.batch}, Adam, all trainable, {a.threads} threads, "
              f"{int(steps)} steps per epoch, {a.reps} reps:")
        print(f"- one checkpoint ({med([r['bytes'] for r in ours]) / 1e6:.0f} MB): median {cost:.2f} s "
              f"over {len(costs)} (min {min(costs):.2f}, max {max(costs):.2f}); PyTorch's torch.save + fsync "
              f"of model and optimizer: median {med(torch_saves):.2f} s; ratio {med(torch_saves) / cost:.2f}")
        print(f"- epoch time, median: {epoch:.1f} s at interval 0, {epoch_short:.1f} s at interval "
              f"{a.interval} s (median {med([r['checkpoints'] for r in ours if r['interval'] > 0]):.0f} checkpoints)")
        print(f"- overhead at the default 300 s interval: {cost / 300 * 100:.2f}% of training time; "
              f"the epoch-end checkpoint adds {cost / epoch * 100:.1f}% to a {epoch:.0f} s epoch")
    kills = [r for r in rows if r.get("part") == "b"]
    if kills:
        for name in ("SIGKILL", "SIGTERM"):
            got = [r["seconds"] for r in kills if r["signal"] == name and r["seconds"] is not None]
            missing = sum(1 for r in kills if r["signal"] == name and r["seconds"] is None)
            print(f"(b) {name} to training again (lease TTL 60 s, 1 local worker): median {med(got):.1f} s, "
                  f"max {max(got) if got else float('nan'):.1f} s over {len(got)} (never: {missing})")


if __name__ == "__main__":
    main()
