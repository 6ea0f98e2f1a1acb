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
                 tls_client_ca=None, auth_file=None, client_args=(), name=""):
        """tls_*/auth_file become finetuned's --tls-cert, --tls-key,
        --tls-client-ca and --auth-file; client_args go on every ftctl
        command line (e.g. --tls-ca=..., --token-file=...). `name` tells
        the port and log files of servers sharing one data_dir (replicas)
        apart."""
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
        suffix = f"-{name}" if name else ""
        self.log_path = os.path.join(data_dir, f"server{suffix}.log")
        self.port_file = os.path.join(data_dir, f"port{suffix}")

    def start(self):
        os.makedirs(self.data_dir, exist_ok=True)
        port_file = self.port_file
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


def _postgres_bindir():
    """The folder of initdb and pg_ctl, found as tests/unit/postgres_fixture.cc finds it."""
    env = os.environ.get("FT_POSTGRES_BINDIR")
    if env:
        if os.path.exists(os.path.join(env, "initdb")):
            return env
        raise RuntimeError(f"$FT_POSTGRES_BINDIR ({env}) holds no initdb")
    try:
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True).stdout.strip()
        if out and os.path.exists(os.path.join(out, "initdb")):
            return out
    except OSError:
        pass
    versions = sorted((int(v), v) for v in os.listdir("/usr/lib/postgresql")
                      if v.isdigit() and os.path.exists(f"/usr/lib/postgresql/{v}/bin/initdb")) \
        if os.path.isdir("/usr/lib/postgresql") else []
    if versions:
        return f"/usr/lib/postgresql/{versions[-1][1]}/bin"
    raise RuntimeError("no PostgreSQL server binaries (initdb) found; install Debian's postgresql package")


class Postgres:
    """A real PostgreSQL server of the test's own, in `dir`, on a free
    loopback port (trust authentication). As root it runs as the `postgres`
    user, since PostgreSQL refuses root. Anything that keeps it from starting
    raises: a test that needs it fails, it never skips."""

    def __init__(self, dir):
        self.dir = dir
        self.bindir = _postgres_bindir()
        self.port = None
        self.running = False

    def _as_server_user(self, args):
        return (["runuser", "-u", "postgres", "--"] + args) if os.geteuid() == 0 else args

    def _run(self, args):
        r = subprocess.run(self._as_server_user(args), capture_output=True, text=True, cwd=self.dir)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({r.returncode}):\n{r.stdout}{r.stderr}")
        return r

    def start(self):
        os.makedirs(os.path.join(self.dir, "sock"), exist_ok=True)
        if os.geteuid() == 0:
            import pwd
            pw = pwd.getpwnam("postgres")  # KeyError: no user to run it as
            for p in (self.dir, os.path.join(self.dir, "sock")):
                os.chown(p, pw.pw_uid, pw.pw_gid)
            # runuser needs to reach the folder.
            parent = os.path.dirname(os.path.abspath(self.dir))
            os.chmod(parent, os.stat(parent).st_mode | 0o011)
        data = os.path.join(self.dir, "data")
        self._run([f"{self.bindir}/initdb", "-D", data, "-A", "trust", "-U", "postgres", "-E", "UTF8",
                   "--no-locale", "--no-sync"])
        last = None
        # Another process may take the free port first: try a few.
        for _ in range(3):
            self.port = free_port()
            try:
                self._run([f"{self.bindir}/pg_ctl", "-D", data, "-l", os.path.join(self.dir, "log"), "-w",
                           "-t", "120", "-o",
                           f"-p {self.port} -k '{self.dir}/sock' -c listen_addresses=127.0.0.1 "
                           "-c fsync=off -c full_page_writes=off", "start"])
                self.running = True
                return self
            except RuntimeError as e:
                last = e
        try:
            with open(os.path.join(self.dir, "log"), errors="replace") as f:
                log = f.read()[-4000:]
        except OSError:
            log = ""
        raise RuntimeError(f"PostgreSQL did not start: {last}\nserver log:\n{log}")

    def psql(self, sql, db="postgres"):
        r = self._run([f"{self.bindir}/psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                       "-d", db, "-v", "ON_ERROR_STOP=1", "-At", "-c", sql])
        return r.stdout.strip()

    def create_database(self, name):
        self.psql(f"CREATE DATABASE {name}")
        return self.url(name)

    def url(self, db):
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"

    def stop(self):
        if self.running:
            subprocess.run(self._as_server_user([f"{self.bindir}/pg_ctl", "-D", os.path.join(self.dir, "data"),
                                                 "-m", "immediate", "-w", "stop"]),
                           capture_output=True, cwd=self.dir)
            self.running = False
