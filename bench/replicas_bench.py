#!/usr/bin/python3
"""The job store under load: SQLite behind one server against PostgreSQL behind
two replicas sharing one database and one --data-dir (issue 15).

Per run, on fresh servers without local workers:
  - submits: bench/submit_load.cc, 20 clients x 25 SubmitJob calls, spread
    over the servers (over both replicas on PostgreSQL); submits/s;
  - leases: then 8 fake workers (WorkerGateway clients, also spread) lease
    the 500 queued jobs as fast as they can; leases/s, and jobs leased twice
    (must be 0);
  - watch: bench/watch_fanout.cc, 200 WatchJob streams of one job whose fake
    worker sends 100 events every 20 ms; on PostgreSQL the worker talks to
    replica A and the watchers to replica B (LISTEN/NOTIFY between them).
    p50/p99 delay from send to receive.
Runs alternate SQLite and PostgreSQL, --reps times each; the table gives
medians.

  bench/replicas_bench.py --bin build/bin [--reps 3]

Prints JSON lines on stderr as it goes and a Markdown table on stdout. Wall
times are what this machine gave on that run; nothing asserts them.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))


def log(**kv):
    print(json.dumps(kv), file=sys.stderr, flush=True)


def run_json(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed ({r.returncode}): {r.stdout}\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bin", required=True)
    p.add_argument("--reps", type=int, default=3)
    a = p.parse_args()
    bindir = os.path.abspath(a.bin)
    os.environ["FT_BIN_DIR"] = bindir
    import harness

    tmp = tempfile.mkdtemp(prefix="ft-bench-replicas-")
    pg = harness.Postgres(os.path.join(tmp, "pg"))
    os.makedirs(pg.dir)
    pg.start()
    rows = {"sqlite": [], "postgres": []}
    try:
        data = harness.make_imagefolder(os.path.join(tmp, "data"), classes=2, train_per_class=4, val_per_class=2,
                                        size=16)
        for rep in range(a.reps):
            for backend in ("sqlite", "postgres"):
                def start(phase):
                    var = os.path.join(tmp, f"var-{backend}-{rep}-{phase}")
                    if backend == "sqlite":
                        return [harness.Server(var, [tmp], local_workers=0).start()]
                    url = pg.create_database(f"bench{rep}{phase}")
                    return [harness.Server(var, [tmp], local_workers=0, name=n,
                                           extra=[f"--database={url}", f"--replica-id={n}"]).start()
                            for n in ("a", "b")]
                # Each phase on fresh servers and a fresh store: the submit
                # phase's 500 leased jobs would come back to the queue when
                # their leases lapse, and the watch phase's worker lease one.
                servers = start("load")
                try:
                    addrs = ",".join(s.address for s in servers)
                    load = run_json([os.path.join(bindir, "ft_bench_submit_load"), f"--server={addrs}",
                                     f"--dataset=file://{data}", "--clients=20", "--per_client=25", "--leasers=8"])
                finally:
                    for s in servers:
                        s.stop()
                servers = start("watch")
                try:
                    watch = run_json([os.path.join(bindir, "ft_bench_watch_fanout"), f"--server={servers[0].address}",
                                      f"--watch_server={servers[-1].address}", f"--dataset=file://{data}",
                                      "--streams=200", "--events=100", "--interval_ms=20"])
                finally:
                    for s in servers:
                        s.stop()
                row = {"rep": rep, "backend": backend, "servers": len(servers), **load,
                       **{f"watch_{k}": v for k, v in watch.items()}}
                rows[backend].append(row)
                log(**row)
    finally:
        pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    def med(backend, key):
        return statistics.median(r[key] for r in rows[backend])

    print(f"| store | servers | submits/s | submit p99 ms | leases/s | leased twice | watch p50 ms | watch p99 ms |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for backend, label in (("sqlite", "SQLite"), ("postgres", "PostgreSQL")):
        print(f"| {label} | {rows[backend][0]['servers']} | {med(backend, 'submits_per_s'):.0f} | "
              f"{med(backend, 'submit_ms_p99'):.0f} | {med(backend, 'leases_per_s'):.0f} | "
              f"{max(r['leased_twice'] for r in rows[backend])} | {med(backend, 'watch_delay_ms_p50'):.1f} | "
              f"{med(backend, 'watch_delay_ms_p99'):.1f} |")
    print(f"\nMedians of {a.reps} alternating runs; 500 submits from 20 clients, 8 leasers, 200 watchers of 100 "
          "events (on PostgreSQL the watchers on replica B, the worker on replica A).")


if __name__ == "__main__":
    main()
