"""The activation cache of a partly frozen backbone: with --freeze-depth 4
(ResNet's stem to layer3 frozen) and --augment none, the worker computes
layer3's output once and trains layer4 and the head on it every epoch. With
the same seed and threads, the exported weights are bit-identical to a run
with --cache-features off, which decodes and runs every image every epoch;
the epoch events say what was cached. --cache-dtype float16 halves the
cache. Past the worker's --decode-cache-mb the cache goes to a memory-mapped
file in its work dir, and the weights are still the same bit for bit. With
augmentation on, nothing is cached, and the job still trains."""
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
        cls.root = root
        # The harness gives local workers 2 threads, as the external worker
        # below has: the same sums in the same order.
        cls.server = harness.Server(os.path.join(cls.tmp, "var"), [root]).start()
        cls.runs = {}
        cls.spec = [f"--dataset=file://{cls.data}", "--backbone=resnet18", "--image-size=32", "--epochs=3",
                    "--batch-size=16", "--freeze-depth=4", "--seed=7", "--lr=0.01"]
        cls.spec.remove("--epochs=3")

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def train(self, *flags, server=None):
        server = server or self.server
        r, events, job = server.submit(*self.spec, *flags, timeout=900)
        self.assertEqual(r.returncode, 0, r.stderr + server.log())
        self.assertEqual(job["state"], "SUCCEEDED", job)
        out = os.path.join(self.tmp, job["id"])
        d = server.ftctl("models", "download", job["model_id"], f"--dir={out}")
        self.assertEqual(d.returncode, 0, d.stderr)
        return events, out

    def cached_run(self):
        """The float32 cached run, trained once for the tests that compare with it."""
        if "cached" not in self.runs:
            self.runs["cached"] = self.train("--augment=none", "--cache-features=auto", "--epochs=3")
        return self.runs["cached"]

    def test_cached_run_exports_the_same_weights_bit_for_bit(self):
        cached_events, cached = self.cached_run()
        plain_events, plain = self.train("--augment=none", "--cache-features=off", "--epochs=3")
        epochs = [e["epoch"] for e in cached_events if "epoch" in e]
        self.assertEqual(len(epochs), 3, cached_events)
        for e in epochs:
            self.assertTrue(e["features_cached"], e)
            self.assertEqual(e["cache_stage"], "layer3")
            # 48 images (33 + 15), 256x2x2 float32 each.
            self.assertEqual(int(e["cache_bytes"]), 48 * 256 * 2 * 2 * 4)
            self.assertEqual(e["cache_dtype"], "float32")
            self.assertFalse(e.get("cache_on_disk", False), e)
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

    def test_float16_halves_the_cache(self):
        cached_events, _ = self.cached_run()
        events, _ = self.train("--augment=none", "--cache-dtype=float16", "--epochs=3")
        epochs = [e["epoch"] for e in events if "epoch" in e]
        self.assertEqual(len(epochs), 3, events)
        for e in epochs:
            self.assertTrue(e["features_cached"], e)
            self.assertEqual(e["cache_dtype"], "float16")
            self.assertEqual(int(e["cache_bytes"]), 48 * 256 * 2 * 2 * 2)
        logs = [e["log"]["message"] for e in events if "log" in e]
        self.assertTrue(any("cached the output of layer3" in m and "float16" in m for m in logs), logs)
        # Rounded activations, not the same run: the first epoch's loss agrees to float16's precision.
        first = [e["epoch"]["train_loss"] for e in cached_events if "epoch" in e][0]
        self.assertAlmostEqual(epochs[0]["train_loss"], first, delta=2e-3 * abs(first))

    def test_past_the_budget_the_cache_is_a_mapped_file(self):
        _, cached = self.cached_run()
        server = harness.Server(os.path.join(self.tmp, "var-spill"), [self.root], local_workers=0).start()
        work = os.path.join(self.tmp, "spill-worker")
        worker = harness.Worker(server, work, "--decode-cache-mb=0")
        try:
            events, spilled = self.train("--augment=none", "--epochs=3", server=server)
        finally:
            worker.stop()
            server.stop()
        epochs = [e["epoch"] for e in events if "epoch" in e]
        self.assertEqual(len(epochs), 3, events)
        for e in epochs:
            self.assertTrue(e["features_cached"], e)
            self.assertTrue(e["cache_on_disk"], e)
            self.assertEqual(int(e["cache_bytes"]), 48 * 256 * 2 * 2 * 4)
        logs = [e["log"]["message"] for e in events if "log" in e]
        self.assertTrue(any("in a memory-mapped file in " + work in m for m in logs), logs)
        # Unlinked once mapped: nothing is left behind in the work dir.
        left = [n for _, _, names in os.walk(work) for n in names if n.startswith("activation-cache")]
        self.assertEqual(left, [])
        import torch
        a, b = tensors(cached), tensors(spilled)
        for name in a:
            self.assertTrue(torch.equal(a[name], b[name]), f"{name} differs between the in-memory and the mapped cache")

    def test_augmentation_caches_nothing(self):
        events, _ = self.train("--augment=standard", "--epochs=1")
        for e in (e["epoch"] for e in events if "epoch" in e):
            self.assertFalse(e["features_cached"], e)


if __name__ == "__main__":
    unittest.main(verbosity=2)
