"""The fine-tuning recipe through the public path: two-phase unfreezing,
early stopping with best-epoch export, the feature cache, the test split's
per-class metrics, and skipping or failing on corrupt images."""
import json
import os
import shutil
import tempfile
import unittest

import harness


class RecipeTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        import torch
        import torchvision
        cls.tmp = tempfile.mkdtemp(prefix="ft-recipe-")
        cls.root = os.path.join(cls.tmp, "data")
        cls.data = harness.make_imagefolder(os.path.join(cls.root, "shapes"), classes=3,
                                            train_per_class=16, val_per_class=8, size=32)
        # A test/ split too.
        harness.make_imagefolder(os.path.join(cls.root, "shapes_t"), classes=3, train_per_class=6,
                                 val_per_class=0, size=32, seed=9, split=False)
        shutil.move(os.path.join(cls.root, "shapes_t"), os.path.join(cls.data, "test"))
        torch.manual_seed(4)
        cls.net = torchvision.models.resnet18()
        cls.weights = os.path.join(cls.root, "r18.pth")
        torch.save(cls.net.state_dict(), cls.weights)
        cls.server = harness.Server(os.path.join(cls.tmp, "var"), [cls.root]).start()

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def run_job(self, *args, data=None):
        return self.server.submit(f"--dataset=file://{data or self.data}", "--backbone=resnet18",
                                  "--image-size=32", "--batch-size=8", "--seed=3", *args)

    def download(self, job):
        import torch
        out = os.path.join(self.tmp, "dl-" + job["id"])
        d = self.server.ftctl("models", "download", job["model_id"], f"--dir={out}")
        self.assertEqual(d.returncode, 0, d.stderr)
        model = torch.jit.load(os.path.join(out, "model.pt"))
        params = {k[len("backbone."):]: v for k, v in list(model.named_parameters()) + list(model.named_buffers())
                  if k.startswith("backbone.")}
        return out, params

    def test_two_phase_unfreezes_at_the_given_epoch(self):
        import torch
        r, events, job = self.run_job(f"--weights=file://{self.weights}", "--freeze-depth=all", "--epochs=3",
                                      "--unfreeze-at=2", "--finetune-freeze-depth=3", "--finetune-lr-mult=0.5",
                                      "--lr=0.002", "--export=last")
        self.assertEqual(r.returncode, 0, r.stderr + self.server.log())
        epochs = [e["epoch"] for e in events if "epoch" in e]
        self.assertEqual([e["freeze_depth"] for e in epochs], [-1, 3, 3])
        self.assertEqual(job["metrics"]["best_epoch"], 3)
        self.assertAlmostEqual(epochs[1]["learning_rate"], 0.001, places=6)
        _, params = self.download(job)
        original = self.net.state_dict()
        for k, v in original.items():
            if k.startswith("fc."):
                continue
            same = torch.equal(params[k], v)
            if k.startswith(("conv1.", "bn1.", "layer1.", "layer2.")):
                self.assertTrue(same, f"{k} should have stayed frozen")
        self.assertFalse(torch.equal(params["layer3.0.conv1.weight"], original["layer3.0.conv1.weight"]))
        self.assertFalse(torch.equal(params["layer4.1.bn2.running_mean"], original["layer4.1.bn2.running_mean"]))

    def test_early_stopping_exports_the_best_epoch(self):
        r, events, job = self.run_job("--epochs=30", "--early-stopping=2", "--optimizer=sgd", "--lr=0.2")
        self.assertEqual(r.returncode, 0, r.stderr + self.server.log())
        epochs = [e["epoch"] for e in events if "epoch" in e]
        m = job["metrics"]
        self.assertLess(m["epochs_completed"], 30, "the run should have stopped early")
        losses = [e["val_loss"] for e in epochs]
        best = min(range(len(losses)), key=lambda i: losses[i]) + 1
        self.assertEqual(m["best_epoch"], best)
        self.assertEqual(m["epochs_completed"], best + 2)
        self.assertAlmostEqual(m["val_loss"], losses[best - 1], places=5)
        # The exported weights are the best epoch's: Python reproduces its val accuracy.
        out, _ = self.download(job)
        acc, _ = harness.accuracy_in_python(out, os.path.join(self.data, "val"))
        self.assertAlmostEqual(acc, epochs[best - 1]["val_accuracy"], delta=0.01)
        # Test-split metrics.
        self.assertTrue(m["has_test"])
        self.assertEqual(len(m["test_per_class"]), 3)
        self.assertEqual(sum(int(c) for c in m["test_confusion"]), 18)
        self.assertEqual(sum(int(c["support"]) for c in m["test_per_class"]), 18)
        with open(os.path.join(out, "metadata.json")) as f:
            meta = json.load(f)
        self.assertEqual(meta["best_epoch"], best)
        self.assertIn("test_per_class", meta["metrics"])

    def test_feature_cache_matches_uncached(self):
        common = [f"--weights=file://{self.weights}", "--freeze-depth=all", "--augment=none", "--epochs=4",
                  "--lr=0.01"]
        r1, ev1, cached = self.run_job(*common)
        r2, ev2, plain = self.run_job(*common, "--cache-features=off")
        self.assertEqual(r1.returncode, 0, r1.stderr)
        self.assertEqual(r2.returncode, 0, r2.stderr)
        self.assertTrue(all(e["epoch"]["features_cached"] for e in ev1 if "epoch" in e))
        self.assertFalse(any(e["epoch"].get("features_cached") for e in ev2 if "epoch" in e))
        self.assertAlmostEqual(cached["metrics"]["val_accuracy"], plain["metrics"]["val_accuracy"], delta=0.01)
        r = self.server.ftctl("submit", f"--dataset=file://{self.data}", "--backbone=resnet18",
                              "--cache-features=on", "--freeze-depth=2")
        self.assertEqual(r.returncode, 2)
        self.assertIn("cache_features", r.stderr)

    def test_corrupt_images_skip_or_fail(self):
        bad = os.path.join(self.root, "bad")
        harness.make_imagefolder(bad, classes=2, train_per_class=6, val_per_class=3, size=32, seed=5)
        with open(os.path.join(bad, "train", "class_0", "broken.png"), "wb") as f:
            f.write(b"\x89PNG\r\n\x1a\nthis is not really a png")
        with open(os.path.join(bad, "train", "class_1", "notes.txt"), "w") as f:
            f.write("not an image, ignored")
        os.makedirs(os.path.join(bad, "train", "empty_class"))
        v = self.server.ftctl("validate", f"--dataset=file://{bad}", "--backbone=resnet18", json_output=True)
        self.assertEqual(v.returncode, 0, v.stderr)
        report = json.loads(v.stdout)
        self.assertEqual(int(report["undecodable"]), 1)
        self.assertTrue(report["undecodable_examples"][0].endswith("broken.png"))
        self.assertTrue(any("cannot be decoded" in w for w in report["warnings"]))
        r, events, job = self.run_job("--epochs=1", "--on-bad-image=skip", data=bad)
        self.assertEqual(r.returncode, 0, r.stderr + self.server.log())
        self.assertEqual(int(job["metrics"]["skipped_images"]), 1)
        warnings = [e["log"]["message"] for e in events if "log" in e and e["log"]["level"] == "warning"]
        self.assertTrue(any("broken.png" in w for w in warnings), warnings)
        r, events, job = self.run_job("--epochs=1", data=bad)
        self.assertEqual(r.returncode, 1)
        self.assertEqual(job["state"], "FAILED")
        self.assertIn("1 of 13 images could not be decoded", job["error"])
        self.assertIn("broken.png", job["error"])


if __name__ == "__main__":
    unittest.main(verbosity=2)
