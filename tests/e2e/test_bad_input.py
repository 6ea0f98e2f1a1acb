"""Bad input at submit: exit code 2 and a message naming the problem; random
bytes on the gRPC port leave the server serving. The dataset sandbox: every
file a dataset names resolves inside its root (the dataset roots for
file://, the extracted folder for an upload), after symlinks, at upload,
validate and submit, and again in the worker before it reads."""
import glob
import io
import json
import os
import shutil
import socket
import tarfile
import tempfile
import time
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
        cls.secret = os.path.join(cls.tmp, "outside", "cls_a", "secret.png")
        shutil.copy(os.path.join(cls.good, "train", "class_0", "0000.png"), cls.secret)
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

    # The sandbox.

    @staticmethod
    def manifest(folder, extra_rows):
        """manifest.csv text over the PNGs below `folder` (paths relative to
        it, the label their folder's name), then `extra_rows`; and the line
        of the first extra row."""
        rows = ["path,label"]
        for png in sorted(glob.glob(os.path.join(folder, "**", "*.png"), recursive=True)):
            rows.append(f"{os.path.relpath(png, folder)},{os.path.basename(os.path.dirname(png))}")
        return "\n".join(rows + list(extra_rows)) + "\n", len(rows) + 1

    def csv_dataset(self, name, *extra_rows):
        """A folder in the roots with the good training images and a
        manifest.csv over them; returns (folder, line of the first extra row)."""
        folder = os.path.join(self.root, name)
        if os.path.exists(folder):
            shutil.rmtree(folder)
        shutil.copytree(os.path.join(self.good, "train"), os.path.join(folder, "img"))
        text, line = self.manifest(folder, extra_rows)
        with open(os.path.join(folder, "manifest.csv"), "w") as f:
            f.write(text)
        return folder, line

    def copy_of_good(self, name):
        folder = os.path.join(self.root, name)
        if os.path.exists(folder):
            shutil.rmtree(folder)
        shutil.copytree(self.good, folder)
        return folder

    def validate(self, dataset):
        return self.server.ftctl("validate", f"--dataset={dataset}", "--backbone=resnet18", "--image-size=32",
                                 json_output=True)

    def denied_everywhere(self, dataset, *needles):
        """PERMISSION_DENIED naming the entry at validate and at submit,
        before any file outside is opened (so never "undecodable")."""
        for r in (self.validate(dataset), self.refused("PERMISSION_DENIED", dataset=dataset)):
            self.assertEqual(r.returncode, 2, f"rc={r.returncode} out={r.stdout} err={r.stderr}")
            self.assertIn("PERMISSION_DENIED", r.stderr)
            for n in needles:
                self.assertIn(n, r.stderr)
            self.assertNotIn("undecodable", r.stderr + r.stdout)

    def test_csv_absolute_path_outside(self):
        folder, line = self.csv_dataset("csv-abs", f"{self.secret},class_1")
        self.denied_everywhere(f"file://{folder}",
                               f'manifest.csv line {line}: "{self.secret}" resolves outside the dataset roots')

    def test_csv_dotdot_escape(self):
        folder, line = self.csv_dataset("csv-up", "../../outside/cls_a/secret.png,class_1")
        self.denied_everywhere(f"file://{folder}",
                               f'manifest.csv line {line}: "../../outside/cls_a/secret.png" resolves outside')

    def test_csv_dotdot_inside_the_roots_is_allowed(self):
        # file:// datasets are held to the roots, not to their own folder.
        folder, _ = self.csv_dataset("csv-sibling", "../good/val/class_1/0000.png,class_1")
        r = self.validate(f"file://{folder}")
        self.assertEqual(r.returncode, 0, r.stderr)
        report = json.loads(r.stdout)
        total = sum(int(c.get("train", 0)) + int(c.get("val", 0)) for c in report["classes"])
        self.assertEqual(total, 2 * 4 + 1, report)

    def test_imagefolder_symlink_outside(self):
        folder = self.copy_of_good("linked-out")
        os.symlink(self.secret, os.path.join(folder, "train", "class_0", "evil.png"))
        self.denied_everywhere(f"file://{folder}",
                               f"{folder}/train/class_0/evil.png is a symlink to {self.secret}",
                               "outside the dataset roots")

    def test_imagefolder_symlink_inside_still_works(self):
        folder = self.copy_of_good("linked-in")
        os.symlink("0000.png", os.path.join(folder, "train", "class_0", "alias.png"))
        # A class folder that is a link to a folder inside the roots.
        os.symlink(os.path.join(self.good, "train", "class_1"), os.path.join(folder, "train", "class_2"))
        r = self.validate(f"file://{folder}")
        self.assertEqual(r.returncode, 0, r.stderr)
        counts = {c["name"]: c for c in json.loads(r.stdout)["classes"]}
        self.assertEqual(int(counts["class_0"]["train"]), 5, counts)
        self.assertEqual(int(counts["class_2"]["train"]), 4, counts)
        self.assertEqual(int(json.loads(r.stdout).get("undecodable", 0)), 0)

    def upload_archive(self, name, files):
        """Uploads a .tar.gz of {arcname: bytes}; returns ftctl's result."""
        path = os.path.join(self.tmp, f"{name}.tar.gz")
        with tarfile.open(path, "w:gz") as t:
            for arcname, data in sorted(files.items()):
                info = tarfile.TarInfo(arcname)
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
        return self.server.ftctl("datasets", "upload", path, f"--name={name}", json_output=True)

    def manifest_archive(self, *extra_rows):
        """The good training images and a manifest.csv over them, as archive
        members; and the line of the first extra row."""
        train = os.path.join(self.good, "train")
        files = {}
        for png in glob.glob(os.path.join(train, "*", "*.png")):
            with open(png, "rb") as f:
                files[os.path.relpath(png, train)] = f.read()
        text, line = self.manifest(train, extra_rows)
        files["manifest.csv"] = text.encode()
        return files, line

    def test_uploaded_manifest_naming_etc_shadow(self):
        files, line = self.manifest_archive("/etc/shadow,class_1")
        entry = f'manifest.csv line {line}: "/etc/shadow" resolves outside the archive'
        r = self.upload_archive("shadow", files)
        self.assertEqual(r.returncode, 2, f"rc={r.returncode} out={r.stdout} err={r.stderr}")
        self.assertIn("PERMISSION_DENIED", r.stderr)
        self.assertIn(entry, r.stderr)
        self.assertNotIn(self.server.data_dir, r.stderr)
        self.denied_everywhere("dataset://shadow", entry)
        self.assertEqual(self.server.ftctl("datasets", "delete", "shadow").returncode, 0)

    def test_stored_upload_whose_manifest_leaves_is_refused(self):
        # A dataset stored before the sandbox existed (or changed on disk
        # since): validate and submit scan it again.
        files, line = self.manifest_archive()
        r = self.upload_archive("stored", files)
        self.assertEqual(r.returncode, 0, r.stderr)
        sha = json.loads(r.stdout)["sha256"]
        manifest = os.path.join(self.server.data_dir, "datasets-uploaded", sha, "data", "manifest.csv")
        self.assertTrue(os.path.isfile(manifest), manifest)
        r = self.validate("dataset://stored")
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(manifest, "a") as f:
            f.write("/etc/shadow,class_1\n")
        self.denied_everywhere("dataset://stored", f'manifest.csv line {line}: "/etc/shadow" resolves outside')

    def test_worker_checks_again_before_reading(self):
        # Queued while no worker runs; a file is swapped for a link out after
        # the server's check. The worker refuses it before reading it.
        folder = self.copy_of_good("swapped")
        r = self.server.ftctl("submit", f"--dataset=file://{folder}", "--backbone=resnet18", "--epochs=1",
                              "--image-size=32", "--weights=none", json_output=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        job_id = json.loads(r.stdout)["id"]
        victim = os.path.join(folder, "train", "class_1", "0001.png")
        os.remove(victim)
        os.symlink(self.secret, victim)
        worker = harness.Worker(self.server, os.path.join(self.tmp, "worker"))
        try:
            deadline = time.time() + 180
            job = {}
            while time.time() < deadline:
                job = json.loads(self.server.ftctl("get", job_id, json_output=True).stdout)
                if job["state"] in ("SUCCEEDED", "FAILED", "CANCELLED"):
                    break
                time.sleep(0.5)
        finally:
            worker.stop()
        self.assertEqual(job.get("state"), "FAILED", f"{job}\n{worker.log()}")
        self.assertIn(f"{victim} is a symlink to {self.secret}, outside the dataset roots", job.get("error", ""))

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
