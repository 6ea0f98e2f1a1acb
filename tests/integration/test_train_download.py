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

        # The model shows in the list and can be deleted.
        lst = self.server.ftctl("models", "list", json_output=True)
        self.assertIn(job["model_id"], lst.stdout)
        g = self.server.ftctl("get", job["id"], json_output=True)
        self.assertEqual(json.loads(g.stdout)["model_id"], job["model_id"])

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
