"""The activation cache of a partly frozen backbone: with --freeze-depth 4
(ResNet's stem to layer3 frozen) and --augment none, the worker computes
layer3's output once and trains layer4 and the head on it every epoch. With
the same seed and threads, the exported weights are bit-identical to a run
with --cache-features off, which decodes and runs every image every epoch;
the epoch events say what was cached. With augmentation on, nothing is
cached, and the job still trains."""
import json
import os
import shutil
import tempfile
import unittest

import harness


def tensors(model_dir):
    import torch
    m = torch.jit.load(os.path.join(model_dir, "model.pt"))
    out = {n: t for n, t in m.named_parameters()}
    out.update({n: t for n, t in m.named_buffers()})
    return out


class ActivationCacheTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="ft-cache-")
        root = os.path.join(cls.tmp, "data")
        # 33 training images: with batch 16 the last batch would hold one,
        # which layer4's train-mode BatchNorm cannot take at 32 px, so it is
        # merged into the one before: the cached batches must do the same.
        cls.data = harness.make_imagefolder(os.path.join(root, "shapes"), classes=3, train_per_class=11,
                                            val_per_class=5, size=32)
        cls.server = harness.Server(os.path.join(cls.tmp, "var"), [root]).start()
        cls.spec = [f"--dataset=file://{cls.data}", "--backbone=resnet18", "--image-size=32", "--epochs=3",
                    "--batch-size=16", "--freeze-depth=4", "--seed=7", "--lr=0.01"]
        cls.spec.remove("--epochs=3")

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def train(self, *flags):
        r, events, job = self.server.submit(*self.spec, *flags, timeout=900)
        self.assertEqual(r.returncode, 0, r.stderr + self.server.log())
        self.assertEqual(job["state"], "SUCCEEDED", job)
        out = os.path.join(self.tmp, job["id"])
        d = self.server.ftctl("models", "download", job["model_id"], f"--dir={out}")
        self.assertEqual(d.returncode, 0, d.stderr)
        return events, out

    def test_cached_run_exports_the_same_weights_bit_for_bit(self):
        cached_events, cached = self.train("--augment=none", "--cache-features=auto", "--epochs=3")
        plain_events, plain = self.train("--augment=none", "--cache-features=off", "--epochs=3")
        epochs = [e["epoch"] for e in cached_events if "epoch" in e]
        self.assertEqual(len(epochs), 3, cached_events)
        for e in epochs:
            self.assertTrue(e["features_cached"], e)
            self.assertEqual(e["cache_stage"], "layer3")
            # 48 images (33 + 15), 256x2x2 float32 each.
            self.assertEqual(int(e["cache_bytes"]), 48 * 256 * 2 * 2 * 4)
        logs = [e["log"]["message"] for e in cached_events if "log" in e]
        self.assertTrue(any("cached the output of layer3" in m for m in logs), logs)
        self.assertTrue(any("merges that image into the batch before it" in m for m in logs), logs)
        for e in (e["epoch"] for e in plain_events if "epoch" in e):
            self.assertFalse(e["features_cached"], e)
        a, b = tensors(cached), tensors(plain)
        self.assertEqual(sorted(a), sorted(b))
        import torch
        changed = 0
        for name in a:
            self.assertTrue(torch.equal(a[name], b[name]), f"{name} differs between the cached and the plain run")
            changed += name.startswith("backbone.layer4.")
        self.assertGreater(changed, 0)
        # The same epochs, figure for figure.
        self.assertEqual([e["train_loss"] for e in epochs],
                         [e["epoch"]["train_loss"] for e in plain_events if "epoch" in e])

    def test_augmentation_caches_nothing(self):
        events, _ = self.train("--augment=standard", "--epochs=1")
        for e in (e["epoch"] for e in events if "epoch" in e):
            self.assertFalse(e["features_cached"], e)


if __name__ == "__main__":
    unittest.main(verbosity=2)
