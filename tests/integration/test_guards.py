"""No job ends SUCCEEDED with a non-finite number in its metrics or model.

- 25 training images at batch 8 and 32 px leave a last batch of one image,
  and ResNet's layer4 (MobileNet's last stages) runs at 1x1 there: without
  the batch rule its train-mode BatchNorm's running variance turns NaN. Each
  such job, from scratch and from model://, must succeed with a finite model.
- An absurd learning rate fails the job with a reason naming the divergence,
  and stores nothing.
- Batch size 1 where a BatchNorm would see one value is refused before
  training, naming the layer.
"""
import math
import os
import shutil
import tempfile
import unittest

import harness

MERGE_LOG = "merges that image into the batch before it"


class GuardsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="ft-guards-")
        cls.root = os.path.join(cls.tmp, "data")
        # 5 classes, 5 training images each: 25 = 8 + 8 + 8 + 1.
        cls.few = harness.make_imagefolder(os.path.join(cls.root, "few"), classes=5, train_per_class=5,
                                           val_per_class=4, size=32, seed=2)
        harness.make_imagefolder(os.path.join(cls.root, "few_test"), classes=5, train_per_class=4,
                                 val_per_class=0, size=32, seed=8, split=False)
        shutil.move(os.path.join(cls.root, "few_test"), os.path.join(cls.few, "test"))
        cls.source_data = harness.make_imagefolder(os.path.join(cls.root, "source"), classes=3,
                                                   train_per_class=16, val_per_class=4, size=32, seed=4)
        cls.server = harness.Server(os.path.join(cls.tmp, "var"), [cls.root]).start()
        cls.sources = {}

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def submit(self, backbone, *args, data=None):
        return self.server.submit(f"--dataset=file://{data or self.few}", f"--backbone={backbone}",
                                  "--image-size=32", "--batch-size=8", "--seed=5", *args)

    def source_model(self, backbone):
        if backbone not in self.sources:
            r, _, job = self.submit(backbone, "--epochs=2", "--lr=0.002", data=self.source_data)
            self.assertEqual(r.returncode, 0, r.stderr + self.server.log())
            self.sources[backbone] = job["model_id"]
        return self.sources[backbone]

    def assert_finite_model(self, job):
        import torch
        out = os.path.join(self.tmp, "dl-" + job["id"])
        d = self.server.ftctl("models", "download", job["model_id"], f"--dir={out}")
        self.assertEqual(d.returncode, 0, d.stderr)
        model = torch.jit.load(os.path.join(out, "model.pt"))
        tensors = list(model.named_parameters()) + list(model.named_buffers())
        self.assertGreater(len(tensors), 10)
        for name, t in tensors:
            if t.is_floating_point():
                self.assertTrue(bool(torch.isfinite(t).all()), f"{name} is not finite in model.pt")
        with torch.no_grad():
            logits = model(torch.randn(2, 3, 32, 32))
        self.assertTrue(bool(torch.isfinite(logits).all()))

    def assert_single_tail_job_is_healthy(self, backbone, *args):
        r, events, job = self.submit(backbone, "--epochs=3", "--lr=0.002", *args)
        self.assertEqual(r.returncode, 0, r.stderr + self.server.log())
        self.assertEqual(job["state"], "SUCCEEDED")
        logs = [e["log"]["message"] for e in events if "log" in e]
        merged = [m for m in logs if MERGE_LOG in m]
        self.assertEqual(len(merged), 1, logs)
        self.assertIn("the last of 9 images", merged[0])
        epochs = [e["epoch"] for e in events if "epoch" in e]
        self.assertEqual(len(epochs), 3)
        for e in epochs:
            self.assertTrue(math.isfinite(e["val_loss"]), e)
            self.assertTrue(math.isfinite(e["train_loss"]), e)
        progress = [e["progress"] for e in events if "progress" in e and e["progress"].get("phase") == "train"]
        self.assertTrue(all(int(p["steps_per_epoch"]) == 3 for p in progress), progress)
        m = job["metrics"]
        for key in ("val_loss", "train_loss", "test_loss", "val_accuracy", "test_accuracy"):
            self.assertTrue(math.isfinite(float(m[key])), (key, m))
        self.assertTrue(m["has_test"])
        self.assert_finite_model(job)

    def test_resnet18_from_scratch(self):
        self.assert_single_tail_job_is_healthy("resnet18", "--weights=none", "--freeze-depth=0")

    def test_resnet18_from_model(self):
        source = self.source_model("resnet18")
        self.assert_single_tail_job_is_healthy("resnet18", f"--weights=model://{source}", "--freeze-depth=0")

    def test_mobilenet_v2_from_scratch(self):
        self.assert_single_tail_job_is_healthy("mobilenet_v2", "--weights=none", "--freeze-depth=0")

    def test_mobilenet_v2_from_model(self):
        source = self.source_model("mobilenet_v2")
        self.assert_single_tail_job_is_healthy("mobilenet_v2", f"--weights=model://{source}", "--freeze-depth=2")

    def test_no_merge_when_no_batchnorm_trains(self):
        # The whole backbone frozen: its BatchNorm layers stay in eval mode,
        # so the batches stay as they are (4 a epoch, the last of 1 image).
        r, events, job = self.submit("resnet18", "--epochs=1", "--freeze-depth=all", "--cache-features=off")
        self.assertEqual(r.returncode, 0, r.stderr + self.server.log())
        self.assertFalse(any(MERGE_LOG in e["log"]["message"] for e in events if "log" in e))
        progress = [e["progress"] for e in events if "progress" in e and e["progress"].get("phase") == "train"]
        self.assertTrue(progress and all(int(p["steps_per_epoch"]) == 4 for p in progress), progress)

    def test_absurd_learning_rate_fails_and_stores_nothing(self):
        before = self.server.ftctl("models", "list", json_output=True)
        self.assertEqual(before.returncode, 0, before.stderr)
        r, events, job = self.submit("resnet18", "--epochs=3", "--lr=10", "--optimizer=sgd", "--weights=none",
                                     data=self.source_data)
        self.assertEqual(r.returncode, 1, r.stderr + self.server.log())
        self.assertEqual(job["state"], "FAILED")
        self.assertIn("training diverged at epoch", job["error"])
        self.assertIn("learning rate 10", job["error"])
        self.assertIn("try a lower --lr", job["error"])
        self.assertFalse(job.get("model_id"))
        after = self.server.ftctl("models", "list", json_output=True)
        self.assertEqual(after.stdout, before.stdout)

    def test_batch_size_one_is_refused_naming_the_layer(self):
        r, events, job = self.server.submit(f"--dataset=file://{self.few}", "--backbone=resnet18",
                                            "--image-size=32", "--batch-size=1", "--epochs=1", "--weights=none")
        self.assertEqual(r.returncode, 1, r.stderr + self.server.log())
        self.assertEqual(job["state"], "FAILED")
        self.assertIn("batch_size 1", job["error"])
        self.assertIn("backbone.layer4.0.bn1", job["error"])
        self.assertIn("32 px", job["error"])
        # Refused before any training step.
        self.assertFalse([e for e in events if "epoch" in e])
        self.assertFalse([e for e in events if "progress" in e and e["progress"].get("phase") == "train"])


if __name__ == "__main__":
    unittest.main(verbosity=2)
