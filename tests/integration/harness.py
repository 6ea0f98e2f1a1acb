"""Shared helpers for the integration and end-to-end tests.

They start the real `finetuned` (with its real local `finetune-worker`) on
port 0 in a temporary directory, and drive it with the real `ftctl`, as a
user would. Run with /usr/bin/python3 (Debian's torch and torchvision).
"""
import glob
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time

BIN = os.environ.get("FT_BIN_DIR", os.path.join(os.path.dirname(__file__), "../../build/bin"))
FINETUNED = os.path.join(BIN, "finetuned")
FTCTL = os.path.join(BIN, "ftctl")
WORKER = os.path.join(BIN, "finetune-worker")


def make_imagefolder(root, classes=3, train_per_class=60, val_per_class=20, size=40, seed=0,
                     split=True):
    """Writes a small, learnable ImageFolder: each class is a coloured shape
    at a random place on a noisy background."""
    from PIL import Image, ImageDraw
    rng = random.Random(seed)
    palette = [(220, 40, 40), (40, 200, 60), (50, 80, 230), (230, 200, 40), (200, 60, 200)]

    def draw(label, path):
        img = Image.new("RGB", (size, size),
                        tuple(rng.randint(0, 70) for _ in range(3)))
        d = ImageDraw.Draw(img)
        r = rng.randint(size // 5, size // 3)
        cx, cy = rng.randint(r, size - r), rng.randint(r, size - r)
        colour = palette[label % len(palette)]
        if label % 3 == 0:
            d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
        elif label % 3 == 1:
            d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=colour)
        else:
            d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
        img.save(path)

    splits = [("train", train_per_class), ("val", val_per_class)] if split else [("", train_per_class)]
    for split_name, n in splits:
        for c in range(classes):
            d = os.path.join(root, split_name, f"class_{c}")
            os.makedirs(d, exist_ok=True)
            for i in range(n):
                draw(c, os.path.join(d, f"{i:04d}.png"))
    return root


class Server:
    """A real finetuned on port 0 with its data under `data_dir`."""

    def __init__(self, data_dir, dataset_roots, local_workers=1, extra=(), tls_cert=None, tls_key=None,
                 tls_client_ca=None, auth_file=None, client_args=()):
        """tls_*/auth_file become finetuned's --tls-cert, --tls-key,
        --tls-client-ca and --auth-file; client_args go on every ftctl
        command line (e.g. --tls-ca=..., --token-file=...)."""
        self.data_dir = data_dir
        self.dataset_roots = dataset_roots
        self.local_workers = local_workers
        self.extra = list(extra)
        for flag, value in (("tls-cert", tls_cert), ("tls-key", tls_key), ("tls-client-ca", tls_client_ca),
                            ("auth-file", auth_file)):
            if value:
                self.extra.append(f"--{flag}={value}")
        self.client_args = list(client_args)
        self.proc = None
        self.port = None
        self.log_path = os.path.join(data_dir, "server.log")

    def start(self):
        os.makedirs(self.data_dir, exist_ok=True)
        port_file = os.path.join(self.data_dir, "port")
        if os.path.exists(port_file):
            os.remove(port_file)
        # The child keeps its own copy of the descriptor.
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [FINETUNED, "--listen=127.0.0.1:0", f"--port-file={port_file}",
                 f"--data-dir={self.data_dir}", f"--dataset-roots={','.join(self.dataset_roots)}",
                 f"--local-workers={self.local_workers}", "--worker-threads=2",
                 "--lease-ttl-seconds=10"] + self.extra,
                stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("finetuned exited:\n" + self.log())
            if os.path.exists(port_file):
                with open(port_file) as f:
                    text = f.read().strip()
                if text:
                    self.port = int(text)
                    return self
            time.sleep(0.05)
        raise RuntimeError("finetuned did not start:\n" + self.log())

    @property
    def address(self):
        return f"127.0.0.1:{self.port}"

    def log(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()[-8000:]
        except OSError:
            return ""

    def stop(self, sig=signal.SIGTERM):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def ftctl(self, *args, json_output=False, timeout=600, client_args=None, env=None):
        """client_args replaces the server's own for this one command."""
        cmd = [FTCTL, f"--server={self.address}"]
        cmd += self.client_args if client_args is None else list(client_args)
        if json_output:
            cmd.append("--output=json")
        cmd += list(args)
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)

    def submit(self, *args, timeout=600):
        """Submits and follows; returns (rc, events, final job)."""
        r = self.ftctl("submit", *args, "--follow", json_output=True, timeout=timeout)
        lines = [json.loads(l) for l in r.stdout.splitlines() if l.strip()]
        events = [l for l in lines if "sequence" in l]
        job = lines[-1] if lines and "sequence" not in lines[-1] else None
        return r, events, job


def wait_for(predicate, timeout, interval=0.2):
    """predicate()'s first truthy value within `timeout` seconds, else None."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return None


class Worker:
    """A real finetune-worker outside the server's pool."""

    def __init__(self, server, work_dir, *flags):
        os.makedirs(work_dir, exist_ok=True)
        self.work_dir = work_dir
        self.log_path = os.path.join(work_dir, "worker.log")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [WORKER, f"--server={server.address}", f"--work-dir={work_dir}", "--threads=2",
                 "--device=cpu"] + list(flags),
                stdout=log, stderr=subprocess.STDOUT)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()[-4000:]


def worker_pids(parent_pid):
    """The finetune-worker processes whose parent is `parent_pid` (a server's local workers)."""
    out = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as f:
                text = f.read()
        except OSError:
            continue
        comm = text[text.index("(") + 1:text.rindex(")")]  # truncated to 15 characters
        ppid = int(text[text.rindex(")") + 2:].split()[1])
        if ppid == parent_pid and comm == "finetune-worker"[:15]:
            out.append(int(stat.split("/")[2]))
    return out


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def eval_transform(image_size):
    import torchvision.transforms as T
    resize = image_size * 256 // 224
    return T.Compose([
        T.Resize(resize), T.CenterCrop(image_size), T.ToTensor(),
        T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    ])


def accuracy_in_python(model_dir, val_dir):
    """Top-1 of the downloaded model.pt on an ImageFolder split, in plain PyTorch."""
    import torch
    import torchvision
    with open(os.path.join(model_dir, "metadata.json")) as f:
        meta = json.load(f)
    model = torch.jit.load(os.path.join(model_dir, "model.pt"))
    model.eval()
    ds = torchvision.datasets.ImageFolder(
        val_dir, transform=eval_transform(meta["image_size"]),
        loader=lambda p: __import__("PIL.Image").Image.open(p).convert("RGB"))
    assert ds.classes == meta["classes"], (ds.classes, meta["classes"])
    loader = torch.utils.data.DataLoader(ds, batch_size=64)
    correct = total = 0
    with torch.no_grad():
        for x, y in loader:
            correct += (model(x).argmax(1) == y).sum().item()
            total += len(y)
    return correct / total, meta
