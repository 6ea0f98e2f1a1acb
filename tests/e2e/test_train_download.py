"""A user's whole path: submit with ftctl, follow live, download, and check
in plain PyTorch that model.pt reproduces the reported val accuracy; that
the model card README.md states what metadata.json holds and its snippets
run; and that `models download --triton-repo` writes config.pbtxt files
that describe the files beside them."""
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import unittest

import harness


def parse_pbtxt(text):
    """The protobuf text format subset a Triton config.pbtxt uses: `key:
    scalar`, `key: [scalars]`, `key { message }` and `key [ {message}, ...
    ]`. Returns {key: [values]}, a message being such a dict."""
    tokens = re.findall(r'"(?:[^"\\]|\\.)*"|[{}\[\]:,]|[^\s{}\[\]:,"]+', re.sub(r"#[^\n]*", "", text))
    pos = 0

    def scalar(tok):
        if tok.startswith('"'):
            return json.loads(tok)
        return int(tok) if re.fullmatch(r"-?\d+", tok) else tok

    def message(end):
        nonlocal pos
        out = {}
        while tokens[pos] != end:
            key = tokens[pos]
            pos += 1
            if tokens[pos] == ":":
                pos += 1
            if tokens[pos] == "{":
                pos += 1
                values = [message("}")]
            elif tokens[pos] == "[":
                pos += 1
                values = []
                while tokens[pos] != "]":
                    if tokens[pos] == "{":
                        pos += 1
                        values.append(message("}"))
                    else:
                        values.append(scalar(tokens[pos]))
                        pos += 1
                    if tokens[pos] == ",":
                        pos += 1
                pos += 1
            else:
                values = [scalar(tokens[pos])]
                pos += 1
            out.setdefault(key, []).extend(values)
        pos += 1
        return out

    tokens.append("<end>")
    return message("<end>")


class TrainDownloadTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="ft-e2e-")
        cls.data = harness.make_imagefolder(os.path.join(cls.tmp, "data", "shapes"), classes=3,
                                            train_per_class=80, val_per_class=30, size=40)
        # A test split of fresh images, for the card's per-class table.
        extra = harness.make_imagefolder(os.path.join(cls.tmp, "extra"), classes=3, train_per_class=0,
                                         val_per_class=10, size=40, seed=7)
        shutil.move(os.path.join(extra, "val"), os.path.join(cls.data, "test"))
        # Starting weights from a file, for the card's weights sha256:
        # torchvision's own random initialisation, saved as users save theirs.
        cls.weights = os.path.join(cls.tmp, "data", "weights", "resnet18-random.pth")
        os.makedirs(os.path.dirname(cls.weights))
        subprocess.run(["/usr/bin/python3", "-c", "import sys, torch, torchvision; torch.manual_seed(0); "
                        "torch.save(torchvision.models.resnet18().state_dict(), sys.argv[1])", cls.weights],
                       check=True, timeout=300)
        cls.server = harness.Server(os.path.join(cls.tmp, "var"), [os.path.join(cls.tmp, "data")]).start()
        cls._trained = None

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def trained(self):
        """The suite's one trained model: (ftctl's result, events, final job)."""
        cls = type(self)
        if cls._trained is None:
            cls._trained = self.server.submit(
                f"--dataset=file://{self.data}", "--backbone=resnet18", f"--weights=file://{self.weights}",
                "--epochs=2", "--image-size=32", "--batch-size=16", "--lr=0.002", "--seed=1", "--name=shapes")
        return cls._trained

    def test_submit_follow_download_and_reproduce_accuracy(self):
        r, events, job = self.trained()
        self.assertEqual(r.returncode, 0, r.stderr + self.server.log())
        self.assertEqual(job["state"], "SUCCEEDED")
        self.assertTrue(job["model_id"])
        self.assertEqual(job["metrics"]["epochs_completed"], 2)

        # Events: numbered 1..N without gaps, progress mid-epoch, two epoch summaries.
        seqs = [int(e["sequence"]) for e in events]
        self.assertEqual(seqs, list(range(1, len(seqs) + 1)))
        progress = [e["progress"] for e in events if "progress" in e]
        train_progress = [p for p in progress if p["phase"] == "train"]
        self.assertTrue(train_progress)
        for p in train_progress:
            for key in ("epoch", "step", "loss", "images_per_second", "eta_seconds"):
                self.assertIn(key, p)
        self.assertEqual(len([e for e in events if "epoch" in e]), 2)
        states = [e["state_changed"]["state"] for e in events if "state_changed" in e]
        self.assertEqual(states[0], "QUEUED")
        self.assertEqual(states[-1], "SUCCEEDED")

        out = os.path.join(self.tmp, "download")
        d = self.server.ftctl("models", "download", job["model_id"], f"--dir={out}")
        self.assertEqual(d.returncode, 0, d.stderr)
        self.assertTrue(os.path.exists(os.path.join(out, "model.pt")))
        # Every file the model has, and nothing half-written.
        written = sorted(os.path.basename(p) for p in d.stdout.split())
        # resnet18's ops are all mapped: its download always has model.onnx.
        expected = ["README.md", "metadata.json", "model.onnx", "model.pt"]
        self.assertEqual(written, sorted(expected), d.stdout)
        self.assertEqual(sorted(os.listdir(out)), sorted(expected))
        record = json.loads(self.server.ftctl("models", "get", job["model_id"]).stdout)
        self.assertEqual(sorted(f["name"] for f in record["files"]), sorted(expected))
        for f in record["files"]:
            with open(os.path.join(out, f["name"]), "rb") as fh:
                self.assertEqual(hashlib.sha256(fh.read()).hexdigest(), f["sha256"], f["name"])
        self.assertEqual(int(record["size_bytes"]), sum(int(f["size_bytes"]) for f in record["files"]))
        acc, meta = harness.accuracy_in_python(out, os.path.join(self.data, "val"))
        reported = job["metrics"]["val_accuracy"]
        self.assertAlmostEqual(acc, reported, delta=0.01,
                               msg=f"python accuracy {acc} vs reported {reported}")
        self.assertGreater(acc, 0.5, "the model should learn these shapes")
        for key in ("classes", "image_size", "mean", "std", "backbone", "job_id", "metrics"):
            self.assertIn(key, meta)
        self.assertEqual(meta["job_id"], job["id"])
        self.assertEqual(meta["classes"], ["class_0", "class_1", "class_2"])

        # features() is the head's input.
        import torch
        m = torch.jit.load(os.path.join(out, "model.pt"))
        x = torch.randn(2, 3, 32, 32)
        f = m.features(x)
        self.assertEqual(tuple(f.shape), (2, 512))
        torch.testing.assert_close(m(x), m.head(f))

        # ftctl predict runs the stored model on the server and agrees with it in Python.
        val_dir = os.path.join(self.data, "val")
        images = [os.path.join(val_dir, c, f) for c in sorted(os.listdir(val_dir))
                  for f in sorted(os.listdir(os.path.join(val_dir, c)))[:3]]
        p = self.server.ftctl("predict", job["model_id"], *images, "--top-k=2", json_output=True)
        self.assertEqual(p.returncode, 0, p.stderr)
        predictions = json.loads(p.stdout)["predictions"]
        self.assertEqual(len(predictions), len(images))
        from PIL import Image
        tf = harness.eval_transform(32)
        with torch.no_grad():
            probs = torch.softmax(m(torch.stack([tf(Image.open(f).convert("RGB")) for f in images])), 1)
        for pred, row in zip(predictions, probs):
            self.assertEqual(len(pred["top"]), 2)
            self.assertEqual(pred["top"][0]["label"], meta["classes"][int(row.argmax())])
            self.assertAlmostEqual(pred["top"][0]["probability"], float(row.max()), delta=0.02)
        bad = self.server.ftctl("predict", job["model_id"], os.path.join(self.tmp, "nope.png"))
        self.assertEqual(bad.returncode, 2)
        bad = self.server.ftctl("predict", "mdl-unknown", images[0])
        self.assertEqual(bad.returncode, 2)
        self.assertIn("NOT_FOUND", bad.stderr)

        # The model shows in the list and can be deleted.
        lst = self.server.ftctl("models", "list", json_output=True)
        self.assertIn(job["model_id"], lst.stdout)
        g = self.server.ftctl("get", job["id"], json_output=True)
        self.assertEqual(json.loads(g.stdout)["model_id"], job["model_id"])

    def test_model_card(self):
        r, _, job = self.trained()
        self.assertEqual(r.returncode, 0, r.stderr + self.server.log())
        out = os.path.join(self.tmp, "card")
        d = self.server.ftctl("models", "download", job["model_id"], f"--dir={out}")
        self.assertEqual(d.returncode, 0, d.stderr)
        with open(os.path.join(out, "README.md")) as f:
            card = f.read()
        with open(os.path.join(out, "metadata.json")) as f:
            meta = json.load(f)
        # The classes, in logit order.
        for i, c in enumerate(meta["classes"]):
            self.assertIn(f"| {i} | {c} |", card)
        # The metrics, with the test split's per-class table (protobuf JSON
        # leaves zeros out).
        metrics = meta["metrics"]
        self.assertTrue(metrics["has_test"])
        self.assertIn(f"| validation ({meta['val_source']}) | {meta['val_images']} | "
                      f"{metrics['val_accuracy']:.4f} |", card)
        self.assertIn(f"| test ({meta['test_source']}) | 30 | {metrics.get('test_accuracy', 0):.4f} |", card)
        self.assertEqual(len(metrics["test_per_class"]), 3)
        for c in metrics["test_per_class"]:
            self.assertIn(f"| {c['name']} | {c.get('precision', 0):.4f} | {c.get('recall', 0):.4f} | "
                          f"{c.get('f1', 0):.4f} | {int(c['support'])} |", card)
        # The dataset: a folder has no archive digest, and its listing digest is metadata.json's.
        listing = hashlib.sha256()
        for split in ("train", "val", "test"):
            for c in sorted(os.listdir(os.path.join(self.data, split))):
                for f in sorted(os.listdir(os.path.join(self.data, split, c))):
                    listing.update(f"{split}\t{c}\t{split}/{c}/{f}\t-1\n".encode())
        self.assertEqual(meta["dataset"]["listing_sha256"], listing.hexdigest())
        self.assertIn(f"Listing sha256: `{meta['dataset']['listing_sha256']}`", card)
        self.assertIn("Archive sha256: none", card)
        self.assertIn("240 train, 90 validation (", card)
        # The weights' sha256 is the file's.
        with open(self.weights, "rb") as f:
            weights_sha256 = hashlib.sha256(f.read()).hexdigest()
        self.assertEqual(meta["weights"]["sha256"], weights_sha256)
        self.assertIn(f"Weights sha256: `{weights_sha256}`", card)
        self.assertIn("file `resnet18-random.pth`", card)
        # Seed and versions.
        self.assertIn("- Seed: 1\n", card)
        sw = meta["software"]
        self.assertIn(f"LibTorch {sw['libtorch']}, OpenCV {sw['opencv']}, BLAS {sw['blas']}", card)
        self.assertTrue(sw["libtorch"].startswith("1.13"), sw)
        # The preprocessing numbers are metadata.json's.
        self.assertEqual(int(re.search(r"Resize the shorter side to (\d+) pixels", card).group(1)),
                         meta["resize_size"])
        self.assertEqual(int(re.search(r"Centre-crop (\d+) x (\d+)", card).group(1)), meta["image_size"])
        m = re.search(r"mean = \[([^\]]*)\] and std = \[([^\]]*)\]", card)
        for text, want in ((m.group(1), meta["mean"]), (m.group(2), meta["std"])):
            got = [float(v) for v in text.split(",")]
            self.assertEqual(len(got), 3)
            for g, w in zip(got, want):
                self.assertAlmostEqual(g, w, delta=1e-6)
        # ONNX: the section when metadata.json says there is a file, else why not.
        onnx = meta.get("onnx", {})
        self.assertEqual(onnx.get("file"), "model.onnx", onnx)
        if onnx.get("file"):
            self.assertTrue(os.path.exists(os.path.join(out, onnx["file"])), "metadata.json names a missing model.onnx")
            self.assertIn(f"opset {onnx['opset']}", card)
            self.assertIn(onnx["verified_with"], card)
        else:
            self.assertIn("no model.onnx: ", card)
            self.assertFalse(os.path.exists(os.path.join(out, "model.onnx")))
        # The card's own snippets run: its torchvision transform and its
        # PyTorch lines give the class that model.pt gives.
        blocks = re.findall(r"```python\n(.*?)```", card, re.S)
        image = os.path.join(self.data, "val", "class_1", "0003.png")
        shutil.copy(image, os.path.join(out, "image.jpg"))
        run = subprocess.run(["/usr/bin/python3", "-c", blocks[0] + blocks[1]], cwd=out, capture_output=True,
                             text=True, timeout=300)
        self.assertEqual(run.returncode, 0, run.stderr + "\n" + blocks[0] + blocks[1])
        import torch
        from PIL import Image
        model = torch.jit.load(os.path.join(out, "model.pt"))
        with torch.no_grad():
            expected = meta["classes"][int(model(harness.eval_transform(32)(
                Image.open(image).convert("RGB")).unsqueeze(0)).argmax(1))]
        self.assertEqual(run.stdout.strip(), expected)

    def test_model_stored_before_file_lists_downloads(self):
        # What an older server stored: model.pt, metadata.json and a record without "files".
        r, _, job = self.trained()
        self.assertEqual(r.returncode, 0, r.stderr + self.server.log())
        models = os.path.join(self.tmp, "var", "models")
        legacy = os.path.join(models, "mdl-legacy0")
        os.makedirs(legacy)
        for f in ("model.pt", "metadata.json"):
            shutil.copy(os.path.join(models, job["model_id"], f), legacy)
        with open(os.path.join(legacy, "model.pt"), "rb") as f:
            pt = f.read()
        with open(os.path.join(legacy, "model.json"), "w") as f:
            json.dump({"id": "mdl-legacy0", "job_id": job["id"], "backbone": "resnet18", "image_size": 32,
                       "classes": ["class_0", "class_1", "class_2"], "size_bytes": str(len(pt)),
                       "sha256": hashlib.sha256(pt).hexdigest()}, f)
        out = os.path.join(self.tmp, "legacy")
        d = self.server.ftctl("models", "download", "mdl-legacy0", f"--dir={out}")
        self.assertEqual(d.returncode, 0, d.stderr)
        self.assertEqual(sorted(os.listdir(out)), ["metadata.json", "model.pt"])
        with open(os.path.join(out, "model.pt"), "rb") as f:
            self.assertEqual(f.read(), pt)
        # A Triton repository needs only those two.
        t = self.server.ftctl("models", "download", "mdl-legacy0", f"--triton-repo={out}-triton")
        self.assertEqual(t.returncode, 0, t.stderr)
        self.assertTrue(os.path.exists(os.path.join(f"{out}-triton", "mdl-legacy0", "1", "model.pt")))
        self.assertEqual(self.server.ftctl("models", "delete", "mdl-legacy0").returncode, 0)

    def test_triton_repo(self):
        r, _, job = self.trained()
        self.assertEqual(r.returncode, 0, r.stderr + self.server.log())
        model_id = job["model_id"]
        repo = os.path.join(self.tmp, "triton")
        d = self.server.ftctl("models", "download", model_id, f"--triton-repo={repo}")
        self.assertEqual(d.returncode, 0, d.stderr)
        meta_path = os.path.join(repo, model_id, "metadata.json")
        with open(meta_path) as f:
            meta = json.load(f)
        size, classes = meta["image_size"], meta["classes"]
        # Nothing else in the repository: no staging folder left behind.
        onnx_exported = bool(meta.get("onnx", {}).get("file"))
        self.assertTrue(onnx_exported, meta.get("onnx"))
        self.assertEqual(sorted(os.listdir(repo)), [model_id] + ([model_id + "-onnx"] if onnx_exported else []))
        self.assertEqual(sorted(p for p in d.stdout.split()), sorted(
            os.path.join(dp, f) for dp, _, fs in os.walk(repo) for f in fs))

        # TorchScript: the config against model.pt run on a batch of 2.
        pt_dir = os.path.join(repo, model_id)
        with open(os.path.join(pt_dir, "config.pbtxt")) as f:
            config = parse_pbtxt(f.read())
        self.assertEqual(config["name"], [model_id])
        self.assertEqual(config["platform"], ["pytorch_libtorch"])
        self.assertGreater(config["max_batch_size"][0], 0)
        self.assertEqual(len(config["input"]), 1)
        self.assertEqual(len(config["output"]), 1)
        inp, outp = config["input"][0], config["output"][0]
        self.assertEqual((inp["name"], inp["data_type"], inp["dims"]), (["INPUT__0"], ["TYPE_FP32"], [3, size, size]))
        self.assertEqual((outp["name"], outp["data_type"], outp["dims"]), (["OUTPUT__0"], ["TYPE_FP32"], [len(classes)]))
        self.assertEqual(outp["label_filename"], ["labels.txt"])
        with open(os.path.join(pt_dir, "labels.txt")) as f:
            self.assertEqual(f.read().splitlines(), classes)
        model_file = os.path.join(pt_dir, "1", config.get("default_model_filename", ["model.pt"])[0])
        self.assertTrue(os.path.exists(model_file))
        check = subprocess.run(["/usr/bin/python3", "-c", """
import json, sys, torch
m = torch.jit.load(sys.argv[1]).eval()
x = torch.randn([2] + json.loads(sys.argv[2]))
with torch.no_grad():
    y = m(x)
print(json.dumps({"dtype": str(y.dtype), "shape": list(y.shape)}))
""", model_file, json.dumps(inp["dims"])], capture_output=True, text=True, timeout=300)
        self.assertEqual(check.returncode, 0, check.stderr)
        self.assertEqual(json.loads(check.stdout), {"dtype": "torch.float32", "shape": [2] + outp["dims"]})

        # ONNX: the config against model.onnx's graph, whenever the model has one.
        onnx_dir = os.path.join(repo, model_id + "-onnx")
        if onnx_exported:
            self.assertTrue(os.path.exists(os.path.join(onnx_dir, "1", "model.onnx")),
                            "metadata.json says model.onnx was exported, but the repository has none")
        if os.path.exists(onnx_dir):
            with open(os.path.join(onnx_dir, "config.pbtxt")) as f:
                oc = parse_pbtxt(f.read())
            self.assertEqual(oc["platform"], ["onnxruntime_onnx"])
            self.assertGreater(oc["max_batch_size"][0], 0)
            check = subprocess.run(["/usr/bin/python3", "-c", """
import json, sys, onnx
g = onnx.load(sys.argv[1]).graph
inits = {i.name for i in g.initializer}
def describe(values):
    return [{"name": v.name, "elem_type": v.type.tensor_type.elem_type,
             "dims": [d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim]}
            for v in values if v.name not in inits]
print(json.dumps({"inputs": describe(g.input), "outputs": describe(g.output)}))
""", os.path.join(onnx_dir, "1", "model.onnx")], capture_output=True, text=True, timeout=300)
            self.assertEqual(check.returncode, 0, check.stderr)
            graph = json.loads(check.stdout)
            float32 = 1  # onnx.TensorProto.FLOAT
            for kind, tensors in (("inputs", oc["input"]), ("outputs", oc["output"])):
                self.assertEqual([t["name"] for t in graph[kind]], [t["name"][0] for t in tensors], kind)
                for g, t in zip(graph[kind], tensors):
                    self.assertEqual(t["data_type"], ["TYPE_FP32"])
                    self.assertEqual(g["elem_type"], float32, g)
                    self.assertEqual(g["dims"][0], -1, f"{g['name']}: the batch dimension must be dynamic")
                    self.assertEqual(g["dims"][1:], t["dims"], g["name"])
            self.assertEqual([t["name"][0] for t in oc["input"]], ["input"])
            self.assertEqual([t["name"][0] for t in oc["output"]], ["logits", "features"])
            self.assertEqual(oc["output"][0]["dims"], [len(classes)])
            self.assertEqual(oc["output"][1]["dims"], [meta["feature_dim"]])

        # An existing model folder is refused unless --force; --name names it.
        again = self.server.ftctl("models", "download", model_id, f"--triton-repo={repo}")
        self.assertEqual(again.returncode, 2)
        self.assertIn("already exists", again.stderr)
        self.assertIn("--force", again.stderr)
        forced = self.server.ftctl("models", "download", model_id, f"--triton-repo={repo}", "--force")
        self.assertEqual(forced.returncode, 0, forced.stderr)
        named = self.server.ftctl("models", "download", model_id, f"--triton-repo={repo}", "--name=shapes")
        self.assertEqual(named.returncode, 0, named.stderr)
        with open(os.path.join(repo, "shapes", "config.pbtxt")) as f:
            self.assertEqual(parse_pbtxt(f.read())["name"], ["shapes"])
        self.assertFalse([e for e in os.listdir(repo) if e.startswith(".")])
        bad = self.server.ftctl("models", "download", model_id, f"--triton-repo={repo}", "--name=../x")
        self.assertEqual(bad.returncode, 2)
        self.assertIn("--name", bad.stderr)
        neither = self.server.ftctl("models", "download", model_id)
        self.assertEqual(neither.returncode, 2)
        self.assertIn("--triton-repo", neither.stderr)

    def test_validate_is_a_dry_run(self):
        before = self.server.ftctl("list", json_output=True).stdout
        r = self.server.ftctl("validate", f"--dataset=file://{self.data}", "--backbone=resnet18",
                              "--image-size=32", "--freeze-depth=2", json_output=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        report = json.loads(r.stdout)
        self.assertEqual([(c["name"], int(c["train"]), int(c["val"])) for c in report["classes"]],
                         [(f"class_{i}", 80, 30) for i in range(3)])
        self.assertEqual(report["imbalance_ratio"], 1.0)
        self.assertEqual(int(report["undecodable"]), 0)
        self.assertEqual(report["image_sizes"]["min_width"], 40)
        self.assertGreater(int(report["trainable_parameters"]), 0)
        self.assertGreater(int(report["frozen_parameters"]), 0)
        self.assertGreater(report["estimated_epoch_seconds"], 0)
        self.assertGreaterEqual(report["queue_position"], 1)
        self.assertEqual(self.server.ftctl("list", json_output=True).stdout, before, "validate must not queue")
        t = self.server.ftctl("validate", f"--dataset=file://{self.data}", "--backbone=resnet18")
        self.assertEqual(t.returncode, 0, t.stderr)
        self.assertIn("class_2", t.stdout)
        self.assertIn("per epoch", t.stdout)
        bad = self.server.ftctl("validate", f"--dataset=file://{self.data}", "--backbone=nope")
        self.assertEqual(bad.returncode, 2)
        self.assertIn("backbone", bad.stderr)

    def test_text_output_and_exit_codes(self):
        r = self.server.ftctl("get", "job-doesnotexist")
        self.assertEqual(r.returncode, 2)
        self.assertIn("NOT_FOUND", r.stderr)
        r = self.server.ftctl("frobnicate")
        self.assertEqual(r.returncode, 2)
        r = self.server.ftctl("submit", "--dataset=x", "--backbone=resnet18", "--bogus=1")
        self.assertEqual(r.returncode, 2)
        self.assertIn("--bogus", r.stderr)
        r = harness.subprocess.run([harness.FTCTL, f"--server=127.0.0.1:{harness.free_port()}", "list"],
                                   capture_output=True, text=True, timeout=120)
        self.assertEqual(r.returncode, 3, r.stderr)
        h = self.server.ftctl("health")
        self.assertEqual(h.returncode, 0, h.stderr)
        self.assertIn("SERVING", h.stdout)


if __name__ == "__main__":
    unittest.main(verbosity=2)
