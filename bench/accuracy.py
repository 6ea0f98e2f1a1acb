#!/usr/bin/python3
"""Accuracy through finetuned (real server + one local worker, ftctl jobs).

 (i)  Fashion-MNIST, 10 classes, resnet18 from random init at 32 px, with the
      IDX files read directly (train-* = train, t10k-* = validation, so val
      accuracy is the 10,000-image test set). Goal: >= 0.90.
 (ii) transfer: a source resnet18 on classes 0-4, then classes 5-9 from 5
      images a class, fine-tuned from the source (--weights model://ID
      --freeze-depth 3) vs the same from scratch (--weights none
      --freeze-depth 0); mean over seeds. val=split: 400 validation images a
      class are held out of the train file and choose the exported epoch; the
      figure reported is the test accuracy on all t10k images of classes 5-9,
      which neither train nor choose anything.

  accuracy.py --bin build/bin [--parts i,ii] [--per-class 3000] [--epochs 4] [--seeds 0,1,2]
"""
import argparse, json, os, shutil, signal, statistics, subprocess, sys, tempfile, time

FMNIST = "/usr/share/datasets/fashion-mnist"


def log(*a):
    print(*a, file=sys.stderr, flush=True)


class Server:
    def __init__(self, bin_dir, threads, work):
        self.bin, self.work = bin_dir, work
        port_file = os.path.join(work, "port")
        self.log = open(os.path.join(work, "server.log"), "w")
        self.proc = subprocess.Popen([os.path.join(bin_dir, "finetuned"), "--listen=127.0.0.1:0",
                                      f"--port-file={port_file}", f"--data-dir={work}/var",
                                      f"--dataset-roots={os.path.dirname(FMNIST)}", "--local-workers=1",
                                      f"--worker-threads={threads}"], stdout=self.log, stderr=subprocess.STDOUT)
        for _ in range(300):
            if os.path.exists(port_file) and open(port_file).read().strip():
                break
            time.sleep(0.1)
        self.addr = "127.0.0.1:" + open(port_file).read().strip()

    def submit(self, *args):
        cmd = [os.path.join(self.bin, "ftctl"), "--server", self.addr, "--output", "json", "submit",
               "--backbone", "resnet18", "--follow", *args]
        t0 = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True)
        secs = time.perf_counter() - t0
        if out.returncode != 0:
            raise RuntimeError(f"ftctl exit {out.returncode}: {out.stderr[-2000:]} {out.stdout[-2000:]}")
        lines = [json.loads(l) for l in out.stdout.splitlines() if l.startswith("{")]
        job = lines[-1]
        hist = [l["epoch"] for l in lines if isinstance(l.get("epoch"), dict)]
        return job, hist, secs

    def close(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bin", default="build/bin")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--parts", default="ii,i")
    p.add_argument("--per-class", type=int, default=3000)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--augment", default="light")
    p.add_argument("--lr", default="0.001")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--source-per-class", type=int, default=600)
    p.add_argument("--shots", type=int, default=5)
    a = p.parse_args()
    a.bin = os.path.abspath(a.bin)
    work = tempfile.mkdtemp(prefix="ftacc-")
    srv = Server(a.bin, a.threads, work)
    out = []
    try:
        parts = a.parts.split(",")
        for part in parts:
            if part == "i":
                job, hist, secs = srv.submit(
                    "--dataset", f"file://{FMNIST}?max_per_class={a.per_class}", "--weights", "none",
                    "--image-size", "32", "--batch-size", "32", "--epochs", str(a.epochs), "--lr", a.lr,
                    "--lr-schedule", "cosine", "--augment", a.augment, "--seed", "0")
                m = job["metrics"]
                log(json.dumps(dict(part="i", secs=secs, metrics=m)))
                out.append(f"**(i) Fashion-MNIST, 10 classes, resnet18 (random init), 32 px, {a.per_class} train "
                           f"images a class, {a.epochs} epochs, Adam lr {a.lr} cosine, --augment {a.augment}, "
                           f"{a.threads} threads; validation = the 10,000 t10k test images**\n")
                out.append("| epoch | train loss | train acc | val loss | val acc | epoch s |")
                out.append("| ---: | ---: | ---: | ---: | ---: | ---: |")
                for e in hist:
                    out.append(f"| {e['epoch']} | {e.get('train_loss', 0):.3f} | {e.get('train_accuracy', 0):.3f} | "
                               f"{e.get('val_loss', 0):.3f} | {e.get('val_accuracy', 0):.4f} | {e.get('epoch_seconds', 0):.0f} |")
                out.append(f"\nexported (best epoch {m.get('best_epoch')}): val accuracy **{m.get('val_accuracy', 0):.4f}**, "
                           f"job wall time {secs:.0f} s (submit to SUCCEEDED)\n")
            elif part == "ii":
                common = ["--image-size", "32", "--batch-size", "32", "--augment", "light"]
                src, _, src_secs = srv.submit(
                    "--dataset", f"file://{FMNIST}?classes=0,1,2,3,4&max_per_class={a.source_per_class}"
                    "&max_val_per_class=200", "--weights", "none", "--epochs", "3", "--lr", "0.002",
                    "--seed", "1", *common)
                log(json.dumps(dict(part="ii-source", secs=src_secs, metrics=src["metrics"])))
                target = (f"file://{FMNIST}?classes=5,6,7,8,9&max_per_class={a.shots}&max_val_per_class=400"
                          "&val=split")
                res = {"transfer": [], "scratch": []}
                for seed in a.seeds.split(","):
                    for kind in ("transfer", "scratch"):
                        extra = (["--weights", f"model://{src['model_id']}", "--freeze-depth", "3"]
                                 if kind == "transfer" else ["--weights", "none", "--freeze-depth", "0"])
                        job, _, secs = srv.submit("--dataset", target, "--epochs", "15", "--lr", "0.001",
                                                  "--seed", seed, *common, *extra)
                        acc = job["metrics"].get("test_accuracy", 0)
                        res[kind].append(acc)
                        log(json.dumps(dict(part="ii", kind=kind, seed=seed, secs=secs, test_accuracy=acc,
                                            val_accuracy=job["metrics"].get("val_accuracy", 0))))
                out.append(f"**(ii) transfer: source resnet18 on classes 0-4 ({a.source_per_class} a class, 3 epochs, "
                           f"val acc {src['metrics'].get('val_accuracy', 0):.3f}); target classes 5-9 from "
                           f"{a.shots} images a class, 15 epochs, lr 0.001, --augment light, 32 px; val = 400 images a "
                           f"class held out of the train file (val=split); test = all 5000 t10k images of "
                           f"classes 5-9; seeds {a.seeds}**\n")
                out.append("| | test accuracy per seed | mean |")
                out.append("| --- | --- | ---: |")
                for kind, label in (("transfer", "fine-tuned from source (`--weights model://ID --freeze-depth 3`)"),
                                    ("scratch", "from scratch (`--weights none --freeze-depth 0`)")):
                    out.append(f"| {label} | {', '.join(f'{x:.3f}' for x in res[kind])} | "
                               f"**{statistics.mean(res[kind]):.3f}** |")
                out.append("")
            print("\n".join(out), flush=True)
            out = []
    finally:
        srv.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
