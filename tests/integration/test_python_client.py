"""The `finetune` Python package (client/python) as a notebook user gets it:
`pip install --no-build-isolation` into a fresh venv over Debian's grpcio and
protobuf (the stubs generated at build time), then driving a real finetuned
with its local worker and tokens: a folder and a .tar.gz uploaded, a tiny job
submitted and waited on with progress, its history, metrics and replayed
events, the model downloaded and loaded with Debian's torch; errors as
FinetuneError with the gRPC code and the server's message, an unknown submit
keyword as TypeError, and no token as UNAUTHENTICATED.

Needs python3-venv, python3-pip, python3-setuptools, python3-wheel,
python3-grpcio, python3-protobuf, protobuf-compiler-grpc and libprotobuf-dev."""
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import unittest

import harness

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))

# Runs in the venv's python: uses the installed package as a notebook would,
# and prints what it saw as one JSON line after "RESULT ".
SCRIPT = r'''
import importlib.util, json, os, sys
import finetune

cfg = json.loads(sys.argv[1])
out = {"tqdm": importlib.util.find_spec("tqdm") is not None, "package": finetune.__file__}


def error(fn):
    try:
        fn()
    except finetune.FinetuneError as e:
        return {"code": e.code.name, "message": e.message, "str": str(e)}
    return None


os.environ.pop("FTCTL_TOKEN", None)
out["no_token"] = error(lambda: finetune.Client(cfg["address"]).list_jobs())
c = finetune.Client(cfg["address"], token=cfg["token"])
out["dataset"] = c.upload_dataset(cfg["folder"], name="shapes")
out["archive"] = c.upload_dataset(cfg["tgz"], name="shapes-tgz")
out["one_class"] = error(lambda: c.upload_dataset(cfg["one_class"], name="one-class"))

job = c.submit(dataset="dataset://shapes", backbone="resnet18", weights="none", epochs=1, image_size=32,
               batch_size=8, seed=3, name="from-python", augment="none")
out["submitted"] = job.state
final = job.wait(progress=True)
out["job"] = {"id": final.id, "state": final.state, "model_id": final.model_id, "error": final.error,
              "metrics": final.metrics, "spec": final.spec, "repr": repr(final)}
out["history"] = final.history
out["history_from_events"] = c.get_job(job.id).history  # replayed, not wait()'s
events = list(final.events(from_sequence=1))
out["sequences"] = [e["sequence"] for e in events]
out["payloads"] = [next(k for k in ("state_changed", "progress", "epoch", "log") if k in e) for e in events]
out["states"] = [e["state_changed"]["state"] for e in events if "state_changed" in e]
out["epoch_events"] = [e["epoch"] for e in events if "epoch" in e]
out["from_3"] = [e["sequence"] for e in c.events(job.id, from_sequence=3)]
out["files"] = sorted(os.path.basename(p) for p in c.download_model(final.model_id, cfg["model_dir"]))
out["model"] = c.get_model(final.model_id)

out["unknown_job"] = error(lambda: c.get_job("no-such-job"))
out["missing_dataset"] = error(lambda: c.submit(dataset="dataset://missing", backbone="resnet18"))
out["bad_backbone"] = error(lambda: c.submit(dataset="dataset://shapes", backbone="resnet9000"))
try:
    c.submit(dataset="dataset://shapes", backbone="resnet18", epochz=1)
except TypeError as e:
    out["typo"] = str(e)
os.environ["FTCTL_TOKEN"] = cfg["token"]
out["env_token"] = finetune.Client(cfg["address"]).get_job(job.id).state
del os.environ["FTCTL_TOKEN"]
out["token_file"] = finetune.Client(cfg["address"], token_file=cfg["token_file"]).get_job(job.id).state
os.environ["MPLBACKEND"] = "Agg"
try:
    out["plot"] = len(final.plot().axes)
except ImportError as e:
    out["plot"] = str(e)
print("RESULT " + json.dumps(out, default=str))
'''


class PythonClientTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="ft-python-")
        # Built from a copy, so that pip's in-tree build/ and *.egg-info stay
        # out of the source tree.
        src = os.path.join(cls.tmp, "src")
        skip = shutil.ignore_patterns("build", "*.egg-info", "__pycache__", "v1")
        shutil.copytree(os.path.join(ROOT, "proto"), os.path.join(src, "proto"))
        shutil.copytree(os.path.join(ROOT, "client", "python"), os.path.join(src, "client", "python"),
                        ignore=skip)
        venv = os.path.join(cls.tmp, "venv")
        subprocess.run(["/usr/bin/python3", "-m", "venv", "--system-site-packages", venv], check=True)
        cls.python = os.path.join(venv, "bin", "python")
        r = subprocess.run([cls.python, "-m", "pip", "install", "--no-build-isolation", "--no-index",
                            os.path.join(src, "client", "python")], capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            raise AssertionError("pip install failed:\n" + r.stdout[-3000:] + r.stderr[-3000:])

        cls.root = os.path.join(cls.tmp, "data")
        cls.shapes = harness.make_imagefolder(os.path.join(cls.root, "shapes"), classes=2, train_per_class=8,
                                              val_per_class=4, size=32)
        cls.tgz = os.path.join(cls.tmp, "shapes.tar.gz")
        with tarfile.open(cls.tgz, "w:gz") as t:
            t.add(cls.shapes, arcname="shapes")
        cls.one_class = harness.make_imagefolder(os.path.join(cls.tmp, "one"), classes=1, train_per_class=4,
                                                 val_per_class=2, size=32)
        r = subprocess.run([harness.FTCTL, "--output=json", "auth", "new-token", "--name=ana", "--tenant=lab",
                            "--role=user"], capture_output=True, text=True, check=True)
        cls.token, identity = json.loads(r.stdout)["token"], json.loads(r.stdout)["identity"]
        cls.token_file = os.path.join(cls.tmp, "token")
        with open(cls.token_file, "w") as f:
            f.write(cls.token + "\n")
        auth_file = os.path.join(cls.tmp, "auth.json")
        with open(auth_file, "w") as f:
            json.dump({"identities": [identity]}, f)
        cls.server = harness.Server(os.path.join(cls.tmp, "var"), [cls.root], auth_file=auth_file,
                                    client_args=[f"--token-file={cls.token_file}"]).start()
        cls.model_dir = os.path.join(cls.tmp, "model")
        cfg = {"address": cls.server.address, "token": cls.token, "token_file": cls.token_file,
               "folder": cls.shapes, "tgz": cls.tgz, "one_class": cls.one_class, "model_dir": cls.model_dir}
        try:
            cls.result = subprocess.run([cls.python, "-c", SCRIPT, json.dumps(cfg)], capture_output=True,
                                        text=True, timeout=600, cwd=cls.tmp)
        except BaseException:
            cls.tearDownClass()
            raise
        lines = [l for l in cls.result.stdout.splitlines() if l.startswith("RESULT ")]
        cls.out = json.loads(lines[-1][len("RESULT "):]) if lines else None

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def setUp(self):
        self.assertIsNotNone(self.out, f"script failed:\n{self.result.stdout[-4000:]}\n{self.result.stderr[-4000:]}\n"
                                       + self.server.log())

    def test_installed_from_the_venv_with_generated_stubs(self):
        self.assertTrue(self.out["package"].startswith(os.path.join(self.tmp, "venv")), self.out["package"])
        stubs = os.path.join(os.path.dirname(self.out["package"]), "v1")
        self.assertTrue(os.path.isfile(os.path.join(stubs, "finetune_pb2.py")))
        self.assertTrue(os.path.isfile(os.path.join(stubs, "finetune_pb2_grpc.py")))

    def test_uploads(self):
        d = self.out["dataset"]
        self.assertEqual((d["name"], d["state"], d["num_classes"], d["num_images"], d["archive_format"]),
                         ("shapes", "DATASET_READY", 2, 24, "tar"), d)
        a = self.out["archive"]
        self.assertEqual((a["state"], a["archive_format"], a["num_images"]), ("DATASET_READY", "tar.gz", 24), a)
        self.assertEqual(self.out["one_class"]["code"], "FAILED_PRECONDITION", self.out["one_class"])
        self.assertIn("at least 2", self.out["one_class"]["message"])

    def test_job_waited_on_with_progress(self):
        job = self.out["job"]
        self.assertEqual(self.out["submitted"], "QUEUED")
        self.assertEqual(job["state"], "SUCCEEDED", job)
        self.assertEqual(job["spec"]["dataset_uri"], "dataset://shapes")
        self.assertEqual(job["spec"]["augment"], "none")
        m = job["metrics"]
        self.assertEqual(m["epochs_completed"], 1)
        self.assertTrue(0.0 <= m["val_accuracy"] <= 1.0 and m["train_loss"] > 0 and m["val_loss"] > 0, m)
        self.assertIn(f"Job(id='{job['id']}', state=SUCCEEDED", self.result.stdout)
        self.assertIn("epoch 1: train_loss", self.result.stdout)
        self.assertIn("[SUCCEEDED]", self.result.stdout)
        # dev.sh installs python3-tqdm: the real bar, on stderr.
        self.assertTrue(self.out["tqdm"], "python3-tqdm is missing: run ./dev.sh deps")
        self.assertIn("epoch 1/1", self.result.stderr)

    def test_history_and_events(self):
        history = self.out["history"]
        self.assertEqual([h["epoch"] for h in history], [1], history)
        self.assertEqual(history[0]["val_loss"], self.out["job"]["metrics"]["val_loss"])
        # Each step's loss and learning rate, one point a step.
        self.assertGreater(history[0]["steps"], 0)
        self.assertEqual(len(history[0]["step_losses"]), history[0]["steps"])
        self.assertEqual(len(history[0]["step_learning_rates"]), history[0]["steps"])
        self.assertEqual(self.out["history_from_events"], history)
        self.assertEqual(self.out["epoch_events"], history)
        seq = self.out["sequences"]
        self.assertEqual(seq, list(range(1, len(seq) + 1)))
        self.assertEqual(self.out["payloads"][0], "state_changed")
        self.assertEqual(self.out["states"][0], "QUEUED")
        self.assertEqual(self.out["states"][-1], "SUCCEEDED")
        self.assertIn("progress", self.out["payloads"])
        self.assertEqual(self.out["from_3"], seq[2:])

    def test_downloaded_model_loads_in_torch(self):
        self.assertIn("model.pt", self.out["files"])
        self.assertIn("metadata.json", self.out["files"])
        self.assertIn("README.md", self.out["files"])
        self.assertFalse([f for f in os.listdir(self.model_dir) if f.endswith(".part")])
        self.assertEqual(self.out["model"]["job_id"], self.out["job"]["id"])
        r = subprocess.run(["/usr/bin/python3", "-c", f"""
import json, torch
m = torch.jit.load({os.path.join(self.model_dir, 'model.pt')!r}).eval()
meta = json.load(open({os.path.join(self.model_dir, 'metadata.json')!r}))
with torch.no_grad():
    print(json.dumps([list(m(torch.zeros(3, 3, 32, 32)).shape), meta["classes"]]))
"""], capture_output=True, text=True, timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        shape, classes = json.loads(r.stdout.splitlines()[-1])
        self.assertEqual(shape, [3, 2])
        self.assertEqual(classes, ["class_0", "class_1"])

    def test_errors_carry_the_code_and_the_servers_message(self):
        e = self.out["unknown_job"]
        self.assertEqual(e["code"], "NOT_FOUND", e)
        self.assertIn("no job with id no-such-job", e["message"])
        self.assertTrue(e["str"].startswith("NOT_FOUND: "), e)
        e = self.out["missing_dataset"]
        self.assertEqual(e["code"], "NOT_FOUND", e)
        self.assertIn("missing", e["message"])
        e = self.out["bad_backbone"]
        self.assertEqual(e["code"], "INVALID_ARGUMENT", e)
        self.assertIn("backbone", e["message"])
        self.assertIn("resnet9000", e["message"])
        self.assertIn("epochz", self.out["typo"])

    def test_tokens(self):
        self.assertEqual(self.out["no_token"]["code"], "UNAUTHENTICATED", self.out["no_token"])
        self.assertEqual(self.out["env_token"], "SUCCEEDED")
        self.assertEqual(self.out["token_file"], "SUCCEEDED")

    def test_plot(self):
        # dev.sh installs python3-matplotlib: a real figure, loss and accuracy
        # per epoch and the loss per step.
        self.assertEqual(self.out["plot"], 3, "python3-matplotlib is missing: run ./dev.sh deps")


if __name__ == "__main__":
    unittest.main()
