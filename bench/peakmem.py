#!/usr/bin/python3
"""Samples the memory of a process tree (PID and its descendants) every
--interval seconds until the root exits or this gets SIGTERM, and keeps
OUT (JSON) up to date with the peaks: rss_sum_mb (sum of RSS over the tree,
counts shared pages once per process), pss_sum_mb (proportional set size,
shared pages split: the honest total) and root_hwm_mb (the root's VmHWM, the
kernel's exact peak RSS of that one process).

  peakmem.py PID OUT [--interval 0.2]
"""
import json, os, signal, sys, time


def children(pid):
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    out += [int(c) for c in f.read().split()]
            except OSError:
                pass
    except OSError:
        pass
    return out


def tree(pid):
    todo, seen = [pid], []
    while todo:
        p = todo.pop()
        seen.append(p)
        todo += children(p)
    return seen


def field(path, name):
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(name + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def main():
    pid, out = int(sys.argv[1]), sys.argv[2]
    interval = float(sys.argv[4]) if len(sys.argv) > 4 else 0.2
    peak = dict(rss_sum_mb=0.0, pss_sum_mb=0.0, root_hwm_mb=0.0, max_procs=0)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    while not stop and os.path.exists(f"/proc/{pid}"):
        procs = tree(pid)
        rss = sum(field(f"/proc/{p}/status", "VmRSS") for p in procs)
        pss = sum(field(f"/proc/{p}/smaps_rollup", "Pss") for p in procs)
        hwm = field(f"/proc/{pid}/status", "VmHWM")
        new = dict(rss_sum_mb=max(peak["rss_sum_mb"], rss), pss_sum_mb=max(peak["pss_sum_mb"], pss),
                   root_hwm_mb=max(peak["root_hwm_mb"], hwm), max_procs=max(peak["max_procs"], len(procs)))
        if new != peak:
            peak = new
            with open(out + ".tmp", "w") as f:
                json.dump({k: round(v, 1) for k, v in peak.items()}, f)
            os.replace(out + ".tmp", out)
        time.sleep(interval)


if __name__ == "__main__":
    main()
