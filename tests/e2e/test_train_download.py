"""A user's whole path: submit with ftctl, follow live, download, and check
in plain PyTorch that model.pt reproduces the reported val accuracy."""
import json
import os
import shutil
import tempfile
import unittest

import harness


class TrainDownloadTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="ft-e2e-")
        cls.data = harness.make_imagefolder(os.path.join(cls.tmp, "data", "shapes"), classes=3,
                                            train_per_class=80, val_per_class=30, size=40)
        cls.server = harness.Server(os.path.join(cls.tmp, "var"), [os.path.join(cls.tmp, "data")]).start()

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_submit_follow_download_and_reproduce_accuracy(self):
        r, events, job = self.server.submit(
            f"--dataset=file://{self.data}", "--backbone=resnet18", "--epochs=2", "--image-size=32",
            "--batch-size=16", "--lr=0.002", "--seed=1", "--name=shapes")
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
