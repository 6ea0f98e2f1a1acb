"""Weight files through the public path: `pretrained` found in --weights-dir,
.safetensors and TorchScript backbones giving torchvision's features after a
job with --freeze-depth all, and bad weight files failing the job with a
clear error while the server and its worker stay up."""
import json
import os
import shutil
import sys
import tempfile
import unittest

import harness

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "parity"))
from make_weights import save_safetensors  # noqa: E402  (one writer of the format for all tests)


class WeightsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        import torch
        import torchvision
        cls.tmp = tempfile.mkdtemp(prefix="ft-weights-")
        cls.root = os.path.join(cls.tmp, "data")
        cls.weights_dir = os.path.join(cls.tmp, "weights")
        os.makedirs(cls.weights_dir)
        cls.data = harness.make_imagefolder(os.path.join(cls.root, "shapes"), classes=2,
                                            train_per_class=8, val_per_class=4, size=32)
        torch.manual_seed(11)
        cls.net = torchvision.models.resnet18()
        with torch.no_grad():
            for m in cls.net.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.3, 0.3)
                    m.running_var.uniform_(0.5, 1.5)
        sd = cls.net.state_dict()
        torch.save(sd, os.path.join(cls.weights_dir, "resnet18-f37072fd.pth"))
        torch.save(torchvision.models.efficientnet_b0().state_dict(),
                   os.path.join(cls.weights_dir, "efficientnet_b0_rwightman-3dd342df.pth"))
        # Weights can say how their inputs are normalised.
        save_safetensors(sd, os.path.join(cls.root, "resnet18.safetensors"),
                         metadata={"mean": "[0.5, 0.5, 0.5]", "std": "0.25,0.25,0.25"})
        headless = torchvision.models.resnet18()
        headless.load_state_dict(sd)
        headless.fc = torch.nn.Identity()
        headless.eval()
        scripted = torch.jit.script(headless)
        torch.jit.save(scripted, os.path.join(cls.root, "resnet18-backbone.pt"))
        headless.mean, headless.std = [0.1, 0.2, 0.3], [0.4, 0.5, 0.6]
        torch.jit.save(torch.jit.script(headless), os.path.join(cls.root, "resnet18-backbone-norm.pt"))
        del headless.mean, headless.std
        cls.reference = headless
        # Bad files.
        full = open(os.path.join(cls.weights_dir, "resnet18-f37072fd.pth"), "rb").read()
        open(os.path.join(cls.root, "truncated.pth"), "wb").write(full[: len(full) // 2])
        open(os.path.join(cls.root, "random.pth"), "wb").write(os.urandom(100000))
        torch.save(torchvision.models.resnet34().state_dict(), os.path.join(cls.root, "resnet34.pth"))
        cls.server = harness.Server(os.path.join(cls.tmp, "var"), [cls.root],
                                    extra=[f"--weights-dir={cls.weights_dir}"]).start()

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def run_job(self, *args):
        return self.server.submit(f"--dataset=file://{self.data}", "--epochs=1", "--image-size=32",
                                  "--batch-size=8", *args)

    def download(self, job):
        """The job's model.pt (loaded) and metadata.json."""
        import torch
        out = os.path.join(self.tmp, "dl-" + job["id"])
        d = self.server.ftctl("models", "download", job["model_id"], f"--dir={out}")
        self.assertEqual(d.returncode, 0, d.stderr)
        with open(os.path.join(out, "metadata.json")) as f:
            return torch.jit.load(os.path.join(out, "model.pt")), json.load(f)

    def features_match(self, job):
        import torch
        model, meta = self.download(job)
        x = torch.randn(3, 3, 48, 48, generator=torch.Generator().manual_seed(2))
        with torch.no_grad():
            got, want = model.features(x), self.reference(x)
        err = ((got - want).abs().max() / want.abs().max()).item()
        self.assertLessEqual(err, 1e-4)
        return model, meta

    def assert_normalisation(self, job, mean, std):
        """metadata.json and the model's mean/std attributes both say it."""
        model, meta = self.download(job)
        for got in (meta["mean"], list(model.mean)):
            self.assertEqual(len(got), 3)
            for g, w in zip(got, mean):
                self.assertAlmostEqual(g, w, places=5)
        for got in (meta["std"], list(model.std)):
            for g, w in zip(got, std):
                self.assertAlmostEqual(g, w, places=5)

    def test_pretrained_from_weights_dir(self):
        r, events, job = self.run_job("--backbone=resnet18", "--weights=pretrained", "--freeze-depth=all")
        self.assertEqual(r.returncode, 0, r.stderr + self.server.log())
        logs = [e["log"]["message"] for e in events if "log" in e]
        self.assertTrue(any("resnet18-f37072fd.pth" in m for m in logs), logs)
        self.features_match(job)

    def test_efficientnet_b0_pretrained_trains_and_downloads(self):
        r, events, job = self.run_job("--backbone=efficientnet_b0", "--weights=pretrained")
        self.assertEqual(r.returncode, 0, r.stderr + self.server.log())
        logs = [e["log"]["message"] for e in events if "log" in e]
        self.assertTrue(any("efficientnet_b0_rwightman-3dd342df.pth" in m for m in logs), logs)
        out = os.path.join(self.tmp, "effnet")
        d = self.server.ftctl("models", "download", job["model_id"], f"--dir={out}")
        self.assertEqual(d.returncode, 0, d.stderr)
        import torch
        m = torch.jit.load(os.path.join(out, "model.pt"))
        self.assertEqual(tuple(m.features(torch.randn(1, 3, 32, 32)).shape), (1, 1280))

    def test_pretrained_missing_is_not_found(self):
        r = self.server.ftctl("submit", f"--dataset=file://{self.data}", "--backbone=resnet50",
                              "--weights=pretrained")
        self.assertEqual(r.returncode, 2)
        self.assertIn("NOT_FOUND", r.stderr)
        self.assertIn("resnet50-11ad3fa6.pth", r.stderr)

    def test_safetensors(self):
        r, _, job = self.run_job("--backbone=resnet18", f"--weights=file://{self.root}/resnet18.safetensors",
                                 "--freeze-depth=all")
        self.assertEqual(r.returncode, 0, r.stderr + self.server.log())
        self.features_match(job)
        # Its __metadata__ mean/std replace ImageNet's, and a model:// job
        # from that model inherits them.
        self.assert_normalisation(job, [0.5] * 3, [0.25] * 3)
        r, _, chained = self.run_job("--backbone=resnet18", f"--weights=model://{job['model_id']}")
        self.assertEqual(r.returncode, 0, r.stderr + self.server.log())
        self.assert_normalisation(chained, [0.5] * 3, [0.25] * 3)

    def test_normalisation_defaults_overrides_and_bad_values(self):
        imagenet = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
        r, _, job = self.run_job("--backbone=resnet18", "--weights=pretrained", "--freeze-depth=all")
        self.assertEqual(r.returncode, 0, r.stderr + self.server.log())
        self.assert_normalisation(job, *imagenet)
        r, events, job = self.run_job("--backbone=torchscript",
                                      f"--weights=file://{self.root}/resnet18-backbone-norm.pt",
                                      "--freeze-depth=all")
        self.assertEqual(r.returncode, 0, r.stderr + self.server.log())
        self.assert_normalisation(job, [0.1, 0.2, 0.3], [0.4, 0.5, 0.6])
        logs = [e["log"]["message"] for e in events if "log" in e]
        self.assertTrue(any("normalisation" in m and "resnet18-backbone-norm.pt" in m for m in logs), logs)
        # The job's own values win over the weights'.
        r, _, job = self.run_job("--backbone=resnet18", f"--weights=file://{self.root}/resnet18.safetensors",
                                 "--mean=0.2,0.3,0.4", "--std=0.9,0.8,0.7", "--augment=standard",
                                 "--color-jitter=0.4", "--rotation=15")
        self.assertEqual(r.returncode, 0, r.stderr + self.server.log())
        self.assert_normalisation(job, [0.2, 0.3, 0.4], [0.9, 0.8, 0.7])
        for flags, needle in [(["--mean=0.5,0.5"], "mean"), (["--mean=0.5,0.5,0.5", "--std=1,0,1"], "std"),
                              (["--mean=1,2,x"], "--mean"), (["--color-jitter=2"], "color_jitter"),
                              (["--rotation=-5"], "rotation_degrees"),
                              (["--augment=none", "--color-jitter=0.2"], "augment")]:
            r = self.server.ftctl("submit", f"--dataset=file://{self.data}", "--backbone=resnet18", *flags)
            self.assertEqual(r.returncode, 2, f"{flags}: {r.stderr}")
            self.assertIn(needle, r.stderr, flags)

    def test_torchscript_backbone(self):
        r, events, job = self.run_job("--backbone=torchscript",
                                      f"--weights=file://{self.root}/resnet18-backbone.pt", "--freeze-depth=all")
        self.assertEqual(r.returncode, 0, r.stderr + self.server.log())
        self.features_match(job)
        # Freeze depth counts the module's top-level children.
        r, _, job = self.run_job("--backbone=torchscript",
                                 f"--weights=file://{self.root}/resnet18-backbone.pt", "--freeze-depth=99")
        self.assertEqual(r.returncode, 1)
        self.assertEqual(job["state"], "FAILED")
        self.assertIn("top-level children", job["error"])

    def test_bad_weight_files_fail_clearly_and_nothing_goes_down(self):
        cases = [("truncated.pth", "truncated"), ("random.pth", "not a zip"),
                 ("resnet34.pth", "layer1.2")]
        for name, needle in cases:
            r, events, job = self.run_job("--backbone=resnet18", f"--weights=file://{self.root}/{name}")
            self.assertEqual(r.returncode, 1, f"{name}: {r.stderr}")
            self.assertEqual(job["state"], "FAILED")
            self.assertIn(name, job["error"])
            self.assertIn(needle, job["error"].lower())
            self.assertEqual(job["attempts"], 1, "a bad file is the job's failure, not a worker crash")
        self.assertIsNone(self.server.proc.poll())
        r, _, job = self.run_job("--backbone=resnet18")
        self.assertEqual(r.returncode, 0, "the worker must still take jobs")


if __name__ == "__main__":
    unittest.main(verbosity=2)
