"""After a job with --freeze-depth all, the downloaded model.pt's features()
equal torchvision's eval-mode features for the same weights, through the
whole public path (submit, train, export, download, torch.jit.load). CTest
runs it for every architecture (parity.jobs.a and .b, from FT_PARITY_ARCHS in
CMakeLists.txt); without arguments it checks one architecture per family.

usage: FT_BIN_DIR=build/bin /usr/bin/python3 test_job_parity.py [ARCH[:SIZE] ...]
"""
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
import harness  # noqa: E402

ARCHS = ["resnet50", "resnext50_32x4d", "vgg11_bn", "inception_v3:80", "mobilenet_v3_large",
         "efficientnet_b0", "densenet121", "convnext_tiny"]


class JobParityTest(unittest.TestCase):
    archs = ARCHS

    def test_features_after_a_frozen_job(self):
        import torch
        tmp = tempfile.mkdtemp(prefix="ft-jobparity-")
        try:
            root = os.path.join(tmp, "data")
            data = harness.make_imagefolder(os.path.join(root, "tiny"), classes=2, train_per_class=4,
                                            val_per_class=2, size=64)
            server = harness.Server(os.path.join(tmp, "var"), [root]).start()
            try:
                for entry in self.archs:
                    arch, _, size = entry.partition(":")
                    size = int(size or 64)
                    with self.subTest(arch=arch):
                        subprocess.run(["/usr/bin/python3", os.path.join(HERE, "make_weights.py"), arch, root,
                                        "--image-size", str(size)], check=True, capture_output=True)
                        r, _, job = server.submit(
                            f"--dataset=file://{data}", f"--backbone={arch}", f"--weights=file://{root}/{arch}.pth",
                            "--freeze-depth=all", "--epochs=1", f"--image-size={size}", "--batch-size=4",
                            "--augment=none")
                        self.assertEqual(r.returncode, 0, r.stderr + server.log())
                        out = os.path.join(tmp, arch)
                        d = server.ftctl("models", "download", job["model_id"], f"--dir={out}")
                        self.assertEqual(d.returncode, 0, d.stderr)
                        io = torch.load(os.path.join(root, f"{arch}.io.pth"))
                        model = torch.jit.load(os.path.join(out, "model.pt")).eval()
                        with torch.no_grad():
                            got = model.features(io["input"])
                        want = io["features"]
                        err = ((got - want).abs().max() / want.abs().max()).item()
                        print(f"{arch}: relative max error {err:.3g}", flush=True)
                        self.assertLessEqual(err, 1e-4)
                        server.ftctl("models", "delete", job["model_id"])
                        shutil.rmtree(out, ignore_errors=True)
                        for ext in (".pth", ".safetensors", ".ts.pt", ".io.pth"):
                            os.remove(os.path.join(root, arch + ext))
            finally:
                server.stop()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1:
        JobParityTest.archs = sys.argv[1:]
        del sys.argv[1:]
    unittest.main(verbosity=2)
