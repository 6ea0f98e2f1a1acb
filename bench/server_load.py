#!/usr/bin/python3
"""Server responsiveness under load, through a real finetuned (issue 10's targets).

  (a) 8 `ftctl validate` in flight (real tool processes, --max-tool-processes 2):
      latency of `ftctl get` and `ftctl list` meanwhile. Target: each within 1 s.
  (b) 1000 concurrent WatchJob streams on one job (bench/watch_fanout.cc, a fake
      worker over WorkerGateway): same gap-free sequence everywhere, p99 delay of
      live events. Target: p99 <= 250 ms.
  (c) 500 SubmitJob calls from 50 concurrent gRPC clients (bench/submit_load.cc; no
      workers, so the jobs stay queued): all succeed; ListJobs latency beside them.

  bench/server_load.py --bin build/bin [--parts a,b,c] [--streams 1000]

Prints JSON lines on stderr as it goes and a Markdown summary on stdout. Wall
times are what this machine gave on that run; they are not asserted anywhere.
"""
import argparse
import concurrent.futures
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))
harness = None  # tests/integration/harness.py, imported once FT_BIN_DIR is set


def log(**kv):
    print(json.dumps(kv), file=sys.stderr, flush=True)


def pct(values, p):
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, int(p * (len(v) - 1) + 0.5))]


def summary(name, values):
    return (f"{name}: n={len(values)}, median {statistics.median(values) * 1000:.0f} ms, "
            f"p99 {pct(values, 0.99) * 1000:.0f} ms, max {max(values) * 1000:.0f} ms, "
            f"over 1 s: {sum(v > 1 for v in values)}")


class Finetuned:
    """A real finetuned without local workers (harness.Server), with timed ftctl calls."""

    def __init__(self, work, roots, extra=()):
        self.server = harness.Server(os.path.join(work, "var"), [roots], local_workers=0, extra=extra).start()
        self.addr = self.server.address

    def ftctl(self, *args, timeout=120):
        t0 = time.perf_counter()
        r = self.server.ftctl(*args, timeout=timeout)
        return r, time.perf_counter() - t0

    def close(self):
        self.server.stop()


def timed_loop(srv, stop, args, out):
    while not stop.is_set():
        r, secs = srv.ftctl(*args)
        if r.returncode != 0:
            out.append(float("inf"))
        else:
            out.append(secs)


def part_a(a, work, data):
    srv = Finetuned(work, os.path.dirname(data), ["--max-tool-processes=2", "--max-queued-tools=8"])
    lines = []
    try:
        r, _ = srv.ftctl("--output", "json", "submit", f"--dataset=file://{data}", "--backbone=resnet18")
        job = json.loads(r.stdout)["id"]
        stop = threading.Event()
        gets, lists = [], []
        pollers = [threading.Thread(target=timed_loop, args=(srv, stop, ("get", job), gets)),
                   threading.Thread(target=timed_loop, args=(srv, stop, ("list",), lists))]
        t0 = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(srv.ftctl, "validate", f"--dataset=file://{data}", "--backbone=resnet18",
                                   "--image-size=64", timeout=900) for _ in range(8)]
            for p in pollers:
                p.start()
            results = [f.result() for f in futures]
        stop.set()
        for p in pollers:
            p.join()
        wall = time.perf_counter() - t0
        ok = sum(r.returncode == 0 for r, _ in results)
        log(part="a", validates_ok=ok, validate_wall_s=wall, validate_s=[s for _, s in results],
            get_s=gets, list_s=lists)
        lines += [f"**(a) 8 `ftctl validate` in flight** ({ok}/8 succeeded, {wall:.1f} s for all 8; "
                  "2 tool processes at once, 6 waiting in the tool queue)", "",
                  "- " + summary("`ftctl get`", gets), "- " + summary("`ftctl list`", lists), ""]
    finally:
        srv.close()
    return lines


def part_b(a, work, data):
    srv = Finetuned(work, os.path.dirname(data))
    try:
        r = subprocess.run([os.path.join(a.bin, "ft_bench_watch_fanout"), f"--server={srv.addr}",
                            f"--dataset=file://{data}", f"--streams={a.streams}", f"--events={a.events}",
                            f"--interval_ms={a.interval_ms}"], capture_output=True, text=True, timeout=1200)
        res = json.loads(r.stdout.strip().splitlines()[-1]) if r.stdout.strip() else {"error": r.stderr[-2000:]}
        log(part="b", rc=r.returncode, **res)
        if "error" in res:
            return [f"**(b) WatchJob fan-out** failed: {res['error']}", ""]
        return [f"**(b) {res['streams']} concurrent WatchJob streams on one job**, {res['live_events']} live "
                f"events 20 ms apart", "",
                f"- every stream finished OK: {res['all_finished_ok']}; all saw the same sequence: "
                f"{res['same_sequence']}; gap-free: {res['gap_free']} ({res['events_per_stream']} events each)",
                f"- delay from the worker's send to each watcher: median {res['delay_ms_p50']:.1f} ms, "
                f"p99 {res['delay_ms_p99']:.1f} ms, max {res['delay_ms_max']:.1f} ms "
                f"({res['samples']} samples)", ""]
    finally:
        srv.close()


def part_c(a, work, data):
    srv = Finetuned(work, os.path.dirname(data))
    try:
        r = subprocess.run([os.path.join(a.bin, "ft_bench_submit_load"), f"--server={srv.addr}",
                            f"--dataset=file://{data}", "--clients=50", "--per_client=10"],
                           capture_output=True, text=True, timeout=1200)
        res = json.loads(r.stdout.strip().splitlines()[-1]) if r.stdout.strip() else {"error": r.stderr[-2000:]}
        log(part="c", rc=r.returncode, **res)
        if "error" in res:
            return [f"**(c) submits** failed: {res['error']}", ""]
        listed, _ = srv.ftctl("--output", "json", "list", "--limit=1000")
        queued = len(json.loads(listed.stdout).get("jobs", []))
        return [f"**(c) {res['submits']} SubmitJob calls from 50 concurrent gRPC clients**: {res['ok']} succeeded, "
                f"{queued} jobs listed after, {res['wall_s']:.1f} s ({res['submits_per_s']:.0f} submits/s; each "
                "scans the dataset and commits to SQLite with fsync)", "",
                f"- SubmitJob: median {res['submit_ms_p50']:.0f} ms, p99 {res['submit_ms_p99']:.0f} ms, "
                f"max {res['submit_ms_max']:.0f} ms",
                f"- ListJobs (limit 20) beside them: {res['lists']} calls, median {res['list_ms_p50']:.1f} ms, "
                f"p99 {res['list_ms_p99']:.1f} ms, max {res['list_ms_max']:.1f} ms", ""]
    finally:
        srv.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="build/bin")
    ap.add_argument("--parts", default="a,b,c")
    ap.add_argument("--streams", type=int, default=1000)
    ap.add_argument("--events", type=int, default=200)
    ap.add_argument("--interval-ms", dest="interval_ms", type=int, default=100)
    a = ap.parse_args()
    a.bin = os.path.abspath(a.bin)
    global harness
    os.environ["FT_BIN_DIR"] = a.bin
    import harness as h
    harness = h
    tmp = tempfile.mkdtemp(prefix="ft-load-")
    try:
        data = harness.make_imagefolder(os.path.join(tmp, "data", "shapes"), classes=3, train_per_class=40,
                                        val_per_class=10, size=64)
        out = [f"cores: {os.cpu_count()}; binaries: {a.bin}", ""]
        for part in a.parts.split(","):
            work = os.path.join(tmp, part)
            os.makedirs(work)
            out += {"a": part_a, "b": part_b, "c": part_c}[part](a, work, data)
            print("\n".join(out), flush=True)
            out = []
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
