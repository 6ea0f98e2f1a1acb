"""Bad input at submit: exit code 2 and a message naming the problem; random
bytes on the gRPC port leave the server serving."""
import os
import shutil
import socket
import tempfile
import unittest

import harness


class BadInputTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="ft-bad-")
        cls.root = os.path.join(cls.tmp, "data")
        cls.good = harness.make_imagefolder(os.path.join(cls.root, "good"), classes=2,
                                            train_per_class=4, val_per_class=2, size=16)
        cls.single = harness.make_imagefolder(os.path.join(cls.root, "single"), classes=1,
                                              train_per_class=4, val_per_class=2, size=16)
        os.makedirs(os.path.join(cls.tmp, "outside", "cls_a"))
        os.makedirs(os.path.join(cls.root, "empty", "cls_a"))
        os.makedirs(os.path.join(cls.root, "empty", "cls_b"))
        os.symlink(os.path.join(cls.tmp, "outside"), os.path.join(cls.root, "escape"))
        cls.server = harness.Server(os.path.join(cls.tmp, "var"), [cls.root], local_workers=0).start()

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def refused(self, code, *needles, dataset=None, backbone="resnet18", extra=()):
        args = [f"--dataset={dataset or 'file://' + self.good}", f"--backbone={backbone}"] + list(extra)
        r = self.server.ftctl("submit", *args)
        self.assertEqual(r.returncode, 2, f"{args}: rc={r.returncode} out={r.stdout} err={r.stderr}")
        self.assertIn(code, r.stderr)
        for n in needles:
            self.assertIn(n, r.stderr)
        return r

    def test_missing_dataset(self):
        self.refused("NOT_FOUND", "does not exist", dataset=f"file://{self.root}/nope")

    def test_outside_roots(self):
        self.refused("PERMISSION_DENIED", "outside", dataset="file:///etc")
        self.refused("PERMISSION_DENIED", "outside", dataset=f"file://{self.root}/../outside")
        self.refused("PERMISSION_DENIED", "outside", dataset=f"file://{self.root}/good/../../outside")
        self.refused("PERMISSION_DENIED", "outside", dataset=f"file://{self.root}/escape")
        # A path outside that does not exist must not reveal that it is missing.
        self.refused("PERMISSION_DENIED", dataset="file:///nonexistent/dir")

    def test_invalid_fields(self):
        self.refused("INVALID_ARGUMENT", "epochs", extra=["--epochs=-3"])
        self.refused("INVALID_ARGUMENT", "backbone", "resnet9000", backbone="resnet9000")
        self.refused("INVALID_ARGUMENT", "freeze_depth", extra=["--freeze-depth=9"])
        self.refused("INVALID_ARGUMENT", "learning_rate", extra=["--lr=-1"])
        self.refused("INVALID_ARGUMENT", "optimizer", extra=["--optimizer=rmsprop"])
        self.refused("INVALID_ARGUMENT", "image_size", extra=["--image-size=4"])
        self.refused("INVALID_ARGUMENT", "dataset_uri", dataset="s3://bucket/x")
        self.refused("INVALID_ARGUMENT", "weights_uri", extra=["--weights=http://x"])

    def test_untrainable_datasets(self):
        r = self.refused("FAILED_PRECONDITION", "at least 2", dataset=f"file://{self.single}")
        self.refused("FAILED_PRECONDITION", "no training images", dataset=f"file://{self.root}/empty")

    def test_unknown_model(self):
        self.refused("NOT_FOUND", "mdl-0000", extra=["--weights=model://mdl-0000"])

    def test_random_bytes_leave_server_serving(self):
        import random
        rng = random.Random(7)
        for i in range(20):
            with socket.create_connection(("127.0.0.1", self.server.port), timeout=5) as s:
                payload = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 4096)))
                if i % 4 == 0:  # an HTTP/2 preface followed by garbage frames
                    payload = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + payload
                try:
                    s.sendall(payload)
                    s.settimeout(0.5)
                    s.recv(1024)
                except OSError:
                    pass
        r = self.server.ftctl("list")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIsNone(self.server.proc.poll())
        h = self.server.ftctl("health")
        self.assertEqual(h.returncode, 0, h.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
