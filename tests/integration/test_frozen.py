"""Frozen stages stay frozen: with torchvision weights loaded and
--freeze-depth 2, the stem and layer1 (weights and BatchNorm running
statistics) are bit-identical after training, and deeper stages changed."""
import json
import os
import shutil
import tempfile
import unittest

import harness


class FrozenStagesTest(unittest.TestCase):
    def test_frozen_stages_bit_identical(self):
        import torch
        import torchvision
        tmp = tempfile.mkdtemp(prefix="ft-frozen-")
        try:
            root = os.path.join(tmp, "data")
            data = harness.make_imagefolder(os.path.join(root, "shapes"), classes=2,
                                            train_per_class=32, val_per_class=8, size=32)
            torch.manual_seed(3)
            net = torchvision.models.resnet18()
            with torch.no_grad():
                for m in net.modules():
                    if isinstance(m, torch.nn.BatchNorm2d):
                        m.running_mean.uniform_(-0.5, 0.5)
                        m.running_var.uniform_(0.5, 2.0)
                        m.num_batches_tracked.fill_(100)
            weights = os.path.join(root, "resnet18-random.pth")
            torch.save(net.state_dict(), weights)  # an OrderedDict with _metadata, as torchvision writes
            server = harness.Server(os.path.join(tmp, "var"), [root]).start()
            try:
                r, events, job = server.submit(
                    f"--dataset=file://{data}", "--backbone=resnet18", f"--weights=file://{weights}",
                    "--freeze-depth=2", "--epochs=2", "--image-size=32", "--batch-size=8", "--lr=0.01")
                self.assertEqual(r.returncode, 0, r.stderr + server.log())
                out = os.path.join(tmp, "model")
                d = server.ftctl("models", "download", job["model_id"], f"--dir={out}")
                self.assertEqual(d.returncode, 0, d.stderr)
            finally:
                server.stop()
            model = torch.jit.load(os.path.join(out, "model.pt"))
            trained = {k[len("backbone."):]: v for k, v in
                       list(model.named_parameters()) + list(model.named_buffers())
                       if k.startswith("backbone.")}
            original = net.state_dict()
            frozen = [k for k in original if k.startswith(("conv1.", "bn1.", "layer1."))]
            unfrozen = [k for k in original if k.startswith(("layer2.", "layer3.", "layer4."))]
            self.assertTrue(frozen and unfrozen)
            for k in frozen:
                self.assertTrue(torch.equal(trained[k], original[k]), f"frozen {k} changed")
            changed = [k for k in unfrozen if not torch.equal(trained[k], original[k])]
            self.assertIn("layer2.0.conv1.weight", changed)
            self.assertIn("layer4.1.bn2.running_mean", changed)
            self.assertIn("layer4.1.bn2.weight", changed)
            # The exported features equal torchvision's with the same weights where frozen:
            # check the whole backbone against torchvision loaded with the trained tensors.
            ref = torchvision.models.resnet18()
            ref.fc = torch.nn.Identity()
            sd = {k: v for k, v in trained.items()}
            ref.load_state_dict(sd)
            ref.eval()
            x = torch.randn(2, 3, 32, 32)
            torch.testing.assert_close(model.features(x), ref(x), rtol=1e-4, atol=1e-5)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    unittest.main(verbosity=2)
