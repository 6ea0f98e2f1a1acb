#!/usr/bin/python3
"""The same fine-tuning job through finetuned (real server + local worker,
submitted with ftctl; time from submit to SUCCEEDED, model export included)
and through bench/job_pytorch.py, alternately, plus the input pipeline alone
(ft_bench_loader vs bench/loader_bench.py). Prints markdown tables.

Scenarios:
  a  frozen backbone: --freeze-depth all --augment none, 5 epochs (finetuned caches features)
  b  full fine-tune:  --freeze-depth 0 --augment standard, 1 epoch
  c  decode + augment alone: finetuned's DecodeSamples + BatchLoader vs ImageFolder + DataLoader
  d  partly frozen: --freeze-depth 4 (stem..layer3) --augment none, 5 epochs (finetuned caches layer3's output)
  e  partly frozen, augmented: --freeze-depth 4 --augment standard, 1 epoch (the frozen stages run without autograd)

  job_compare.py --bin build/bin --bench-bin build/bin [--scenarios a,b,c] [--reps 3] [--threads 2]
"""
import argparse, json, os, shutil, signal, statistics, subprocess, sys, tempfile, time

HERE = os.path.dirname(os.path.abspath(__file__))
PY = "/usr/bin/python3"
SCEN = {
    "a": dict(freeze="all", augment="none", epochs=5, title="frozen backbone, 5 epochs (--freeze-depth all --augment none)"),
    "b": dict(freeze="0", augment="standard", epochs=1, title="full fine-tune, 1 epoch (--freeze-depth 0 --augment standard)"),
    "d": dict(freeze="4", augment="none", epochs=5,
              title="partly frozen, 5 epochs (--freeze-depth 4: stem to layer3 frozen, --augment none)"),
    "e": dict(freeze="4", augment="standard", epochs=1,
              title="partly frozen, augmented, 1 epoch (--freeze-depth 4 --augment standard)"),
}


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def start_peakmem(pid, out):
    return subprocess.Popen([PY, os.path.join(HERE, "peakmem.py"), str(pid), out])


def stop_peakmem(proc, out):
    proc.send_signal(signal.SIGTERM)
    proc.wait()
    try:
        return json.load(open(out))
    except (OSError, ValueError):
        return {}


def vm_hwm_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def worker_pid(server_pid):
    # posix_spawn may run on any of the server's threads: look for a process whose parent is the server.
    for _ in range(600):
        for k in os.listdir("/proc"):
            if not k.isdigit():
                continue
            try:
                stat = open(f"/proc/{k}/stat").read()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                if ppid == server_pid and open(f"/proc/{k}/comm").read().startswith("finetune-worke"):
                    return int(k)
            except (OSError, ValueError, IndexError):
                pass
        time.sleep(0.1)
    raise RuntimeError("no finetune-worker child")


def run_finetuned(a, s, ds, work, rep):
    d = tempfile.mkdtemp(prefix=f"ft-{rep}-", dir=work)
    port_file = os.path.join(d, "port")
    errlog = open(os.path.join(d, "server.log"), "w")
    srv = subprocess.Popen([os.path.join(a.bin, "finetuned"), "--listen=127.0.0.1:0", f"--port-file={port_file}",
                            f"--data-dir={d}/var", f"--dataset-roots={work}", "--local-workers=1",
                            f"--worker-threads={a.threads}"], stdout=errlog, stderr=subprocess.STDOUT)
    try:
        for _ in range(300):
            if os.path.exists(port_file) and open(port_file).read().strip():
                break
            time.sleep(0.1)
        port = open(port_file).read().strip()
        wpid = worker_pid(srv.pid)
        # Let the worker finish starting (LibTorch load) and dial in: its banner, then a second.
        for _ in range(300):
            if "finetune-worker" in open(os.path.join(d, "server.log")).read():
                break
            time.sleep(0.1)
        time.sleep(1.0)
        pm_out = os.path.join(d, "peak.json")
        pm = start_peakmem(wpid, pm_out)
        cmd = [os.path.join(a.bin, "ftctl"), "--server", f"127.0.0.1:{port}", "--output", "json", "submit",
               "--dataset", f"file://{ds}", "--backbone", "resnet18", "--weights", "none",
               "--epochs", str(s["epochs"]), "--batch-size", "32", "--image-size", "64", "--lr", "0.001",
               "--optimizer", "adam", "--freeze-depth", s["freeze"], "--augment", s["augment"], "--seed", "0",
               "--follow"]
        t0 = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True)
        secs = time.perf_counter() - t0
        hwm = vm_hwm_mb(wpid)
        peak = stop_peakmem(pm, pm_out)
        if out.returncode != 0:
            raise RuntimeError(f"ftctl exit {out.returncode}: {out.stderr[-2000:]}")
        lines = [json.loads(l) for l in out.stdout.splitlines() if l.startswith("{")]
        job = lines[-1]
        m = job.get("metrics", {})
        epochs = [l["epoch"] for l in lines if isinstance(l.get("epoch"), dict)]
        logs = [l["log"]["message"] for l in lines if isinstance(l.get("log"), dict)]
        cached = any(e.get("features_cached") for e in epochs)
        wait = sum(float(e.get("loader_wait_seconds", 0)) for e in epochs)
        return dict(side="finetuned", seconds=round(secs, 2), val_accuracy=m.get("val_accuracy"),
                    worker_hwm_mb=round(hwm, 1), worker_pss_peak_mb=peak.get("pss_sum_mb"),
                    features_cached=cached, loader_wait_s=round(wait, 2),
                    epoch_seconds=[round(float(e.get("epoch_seconds", 0)), 2) for e in epochs],
                    logs=[x for x in logs if "decoded" in x or "cached" in x])
    finally:
        srv.send_signal(signal.SIGTERM)
        try:
            srv.wait(timeout=20)
        except subprocess.TimeoutExpired:
            srv.kill()
            srv.wait()
        errlog.close()
        if not a.keep:
            shutil.rmtree(d, ignore_errors=True)


def run_pytorch(a, s, ds, work, rep):
    d = tempfile.mkdtemp(prefix=f"py-{rep}-", dir=work)
    cmd = [PY, os.path.join(HERE, "job_pytorch.py"), "--dataset", ds, "--arch", "resnet18",
           "--epochs", str(s["epochs"]), "--batch", "32", "--size", "64", "--lr", "0.001",
           "--freeze-depth", s["freeze"], "--augment", s["augment"], "--threads", str(a.threads),
           "--workers", str(a.py_workers), "--seed", "0", "--out", os.path.join(d, "model")]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    pm_out = os.path.join(d, "peak.json")
    pm = start_peakmem(proc.pid, pm_out)
    stdout, _ = proc.communicate()
    wall = time.perf_counter() - t0
    peak = stop_peakmem(pm, pm_out)
    if proc.returncode != 0:
        raise RuntimeError(f"job_pytorch.py exit {proc.returncode}")
    r = json.loads(stdout.strip().splitlines()[-1])
    r.update(process_wall_s=round(wall, 2), root_hwm_mb=peak.get("root_hwm_mb"),
             tree_pss_peak_mb=peak.get("pss_sum_mb"), tree_rss_peak_mb=peak.get("rss_sum_mb"))
    if not a.keep:
        shutil.rmtree(d, ignore_errors=True)
    return r


def run_loader(a, ds, side):
    if side == "finetuned":
        cmd = [os.path.join(a.bench_bin, "ft_bench_loader")]
    else:
        cmd = [PY, os.path.join(HERE, "loader_bench.py")]
    cmd += ["--dataset", ds, "--threads", str(a.threads), "--epochs", "3", "--batch", "32", "--size", "64"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def med(rs, key):
    v = [r[key] for r in rs if r.get(key) is not None]
    return statistics.median(v) if v else float("nan")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bin", default="build/bin")
    p.add_argument("--bench-bin", default=None)
    p.add_argument("--scenarios", default="a,b,c")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--py-workers", type=int, default=1,
                   help="DataLoader num_workers for job_pytorch.py (finetuned uses threads/2 loader threads)")
    p.add_argument("--train-per-class", type=int, default=300)
    p.add_argument("--val-per-class", type=int, default=100)
    p.add_argument("--px", type=int, default=96)
    p.add_argument("--work", default=None, help="scratch dir (default: a new temp dir)")
    p.add_argument("--keep", action="store_true")
    p.add_argument("--json-out")
    a = p.parse_args()
    a.bin = os.path.abspath(a.bin)
    a.bench_bin = os.path.abspath(a.bench_bin or a.bin)
    work = os.path.realpath(a.work or tempfile.mkdtemp(prefix="ftbench-"))
    ds = os.path.join(work, "ds")
    subprocess.run([PY, os.path.join(HERE, "make_dataset.py"), ds, "--train-per-class", str(a.train_per_class),
                    "--val-per-class", str(a.val_per_class), "--px", str(a.px)], check=True)
    sink = open(a.json_out, "a") if a.json_out else None
    results = {}
    for sc in a.scenarios.split(","):
        rs = {"finetuned": [], "pytorch": []}
        for rep in range(a.reps):
            order = ["finetuned", "pytorch"] if rep % 2 == 0 else ["pytorch", "finetuned"]
            for side in order:
                if sc == "c":
                    r = run_loader(a, ds, side)
                elif side == "finetuned":
                    r = run_finetuned(a, SCEN[sc], ds, work, rep)
                else:
                    r = run_pytorch(a, SCEN[sc], ds, work, rep)
                r.update(scenario=sc, rep=rep)
                rs[side].append(r)
                log(json.dumps(r))
                if sink:
                    sink.write(json.dumps(r) + "\n")
                    sink.flush()
        results[sc] = rs
    ntrain, nval = 10 * a.train_per_class, 10 * a.val_per_class
    print(f"\nresnet18 (random init), batch 32, {a.threads} threads, {ntrain} train + {nval} val PNGs "
          f"({a.px}x{a.px} RGB from Fashion-MNIST) at 64 px, Adam lr 1e-3; PyTorch DataLoader num_workers="
          f"{a.py_workers}; median of {a.reps} alternating runs\n")
    for sc in [s for s in a.scenarios.split(",") if s != "c"]:
        f, t = results[sc]["finetuned"], results[sc]["pytorch"]
        print(f"**({sc}) {SCEN[sc]['title']}**\n")
        print("| | finetuned (submit to SUCCEEDED) | PyTorch script (after imports) | ratio (PyTorch/finetuned) |")
        print("| --- | ---: | ---: | ---: |")
        print(f"| time, s | {med(f, 'seconds'):.1f} | {med(t, 'seconds'):.1f} | {med(t, 'seconds') / med(f, 'seconds'):.2f} |")
        print(f"| PyTorch incl. interpreter + imports, s | | {med(t, 'seconds_with_imports'):.1f} | |")
        print(f"| peak RSS, MB (worker VmHWM / Python main VmHWM) | {med(f, 'worker_hwm_mb'):.0f} | {med(t, 'root_hwm_mb'):.0f} | |")
        print(f"| peak PSS of the process tree (sampled), MB | {med(f, 'worker_pss_peak_mb'):.0f} | {med(t, 'tree_pss_peak_mb'):.0f} | |")
        print(f"| val accuracy (last run) | {f[-1]['val_accuracy']:.3f} | {t[-1]['val_accuracy']:.3f} | |")
        print(f"| features cached | {f[-1]['features_cached']} | no | |\n")
    if "c" in results:
        f, t = results["c"]["finetuned"], results["c"]["pytorch"]
        print(f"**(c) decode + train transform alone, {ntrain} images, batch 32, 64 px, {a.threads} threads "
              f"(finetuned: {a.threads} decode + {a.threads} loader threads; torchvision: num_workers={a.threads})**\n")
        print("| | finetuned | torchvision | ratio (torchvision/finetuned) |")
        print("| --- | ---: | ---: | ---: |")
        print(f"| one-off scan + decode, s | {med(f, 'scan_s') + med(f, 'decode_s'):.2f} | {med(t, 'scan_s'):.2f} (scan only; decodes every epoch) | |")
        print(f"| one epoch (median of 3), s | {med(f, 'epoch_s_median'):.2f} | {med(t, 'epoch_s_median'):.2f} | {med(t, 'epoch_s_median') / med(f, 'epoch_s_median'):.2f} |")
        print(f"| first epoch incl. scan + decode, s | {med(f, 'first_epoch_s'):.2f} | {med(t, 'first_epoch_s'):.2f} | {med(t, 'first_epoch_s') / med(f, 'first_epoch_s'):.2f} |")
        print(f"| images/s, steady epochs | {ntrain / med(f, 'epoch_s_median'):.0f} | {ntrain / med(t, 'epoch_s_median'):.0f} | |\n")
    if not a.work and not a.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
