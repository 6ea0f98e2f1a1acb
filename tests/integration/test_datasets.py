"""Uploaded datasets through the public path: `ftctl datasets upload` of a
folder, a .tar.gz and a .zip, stored by the sha256 of the uploaded bytes;
jobs on dataset://NAME run on a separate worker that fetches the archive
over the WorkerGateway and caches it by digest (the second job reuses the
cache), and on a file:// archive through the server's extracted copy; bad
uploads are refused with the right code and a message naming the problem."""
import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
import time
import unittest
import zipfile

import harness

MAX_UPLOAD = 4_000_000
MAX_EXTRACTED = 20_000_000


def sha256_file(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


class DatasetsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="ft-datasets-")
        cls.root = os.path.join(cls.tmp, "data")
        cls.shapes = harness.make_imagefolder(os.path.join(cls.root, "shapes"), classes=2,
                                              train_per_class=8, val_per_class=4, size=32)
        # A .tar.gz with a top-level folder (as `tar czf shapes.tar.gz shapes/`
        # makes), and a .zip without one.
        cls.tgz = os.path.join(cls.root, "shapes.tar.gz")
        with tarfile.open(cls.tgz, "w:gz") as t:
            t.add(cls.shapes, arcname="shapes")
        cls.zip = os.path.join(cls.tmp, "shapes.zip")
        with zipfile.ZipFile(cls.zip, "w", zipfile.ZIP_DEFLATED) as z:
            for d, _, files in sorted(os.walk(cls.shapes)):
                for f in sorted(files):
                    p = os.path.join(d, f)
                    z.write(p, os.path.relpath(p, cls.shapes))
        cls.server = harness.Server(
            os.path.join(cls.tmp, "var"), [cls.root], local_workers=0,
            extra=[f"--max-dataset-bytes={MAX_UPLOAD}", f"--max-dataset-extracted-bytes={MAX_EXTRACTED}"]).start()

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def upload(self, path, name, *extra):
        return self.server.ftctl("datasets", "upload", path, f"--name={name}", *extra, json_output=True)

    def uploaded(self, path, name, *extra):
        r = self.upload(path, name, *extra)
        self.assertEqual(r.returncode, 0, r.stderr + self.server.log())
        return json.loads(r.stdout)

    def refused(self, r, code, *needles):
        self.assertEqual(r.returncode, 2, f"rc={r.returncode} out={r.stdout} err={r.stderr}")
        self.assertIn(code, r.stderr)
        for n in needles:
            self.assertIn(n, r.stderr)

    def listed(self):
        r = self.server.ftctl("datasets", "list", json_output=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        return {d["name"]: d for d in json.loads(r.stdout).get("datasets", [])}

    def run_job(self, dataset, *extra):
        r, events, job = self.server.submit(f"--dataset={dataset}", "--backbone=resnet18", "--epochs=1",
                                            "--image-size=32", "--batch-size=8", *extra)
        self.assertEqual(r.returncode, 0, r.stderr + self.server.log())
        self.assertEqual(job["state"], "SUCCEEDED", job)
        return [e["log"]["message"] for e in events if "log" in e]

    def test_upload_round_trip_and_worker_cache(self):
        d = self.uploaded(self.shapes, "shapes-dir")
        tgz = self.uploaded(self.tgz, "shapes-tgz")
        z = self.uploaded(self.zip, "shapes-zip", "--format=zip")
        self.assertEqual(tgz["sha256"], sha256_file(self.tgz))
        self.assertEqual(z["sha256"], sha256_file(self.zip))
        self.assertEqual(int(tgz["size_bytes"]), os.path.getsize(self.tgz))
        self.assertEqual((tgz["archive_format"], z["archive_format"], d["archive_format"]), ("tar.gz", "zip", "tar"))
        # A folder is packed deterministically: the same files, the same digest.
        again = self.uploaded(self.shapes, "shapes-dir")
        self.assertEqual(again["sha256"], d["sha256"])
        self.refused(self.upload(self.zip, "shapes-tgz"), "ALREADY_EXISTS", "shapes-tgz")

        listed = self.listed()
        for rec in (d, tgz, z):
            got = listed[rec["name"]]
            self.assertEqual(got["sha256"], rec["sha256"])
            self.assertEqual(got["format"], "imagefolder")
            self.assertEqual(got["num_classes"], 2)
            self.assertEqual(int(got["num_images"]), 2 * (8 + 4))
        text = self.server.ftctl("datasets", "list")
        self.assertIn("shapes-zip", text.stdout)
        self.assertIn(z["sha256"][:12], text.stdout)

        # A worker that always fetches: the first job fetches and caches, the
        # second finds the cache.
        fetcher = harness.Worker(self.server, os.path.join(self.tmp, "fetcher"), "--fetch-datasets=always")
        try:
            logs = self.run_job("dataset://shapes-dir")
            self.assertTrue(any("fetched" in m and d["sha256"][:12] in m for m in logs), logs)
            cache = os.path.join(fetcher.work_dir, "datasets", d["sha256"])
            self.assertTrue(os.path.isdir(os.path.join(cache, "data", "train", "class_1")), fetcher.log())
            logs = self.run_job("dataset://shapes-dir", "--seed=1")
            self.assertTrue(any("using the cached copy" in m for m in logs), logs)
            self.assertFalse(any("fetched" in m for m in logs), logs)
            logs = self.run_job("dataset://shapes-zip?max_per_class=4")
            self.assertTrue(any("fetched" in m and z["sha256"][:12] in m for m in logs), logs)
        finally:
            fetcher.stop()

        # No worker: a queued job holds its dataset.
        r = self.server.ftctl("submit", "--dataset=dataset://shapes-tgz", "--backbone=resnet18", json_output=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        queued = json.loads(r.stdout)
        self.refused(self.server.ftctl("datasets", "delete", "shapes-tgz"), "FAILED_PRECONDITION", queued["id"])
        self.assertEqual(self.server.ftctl("cancel", queued["id"]).returncode, 0)
        r = self.server.ftctl("datasets", "delete", "shapes-tgz")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertNotIn("shapes-tgz", self.listed())
        self.refused(self.server.ftctl("datasets", "delete", "shapes-tgz"), "NOT_FOUND")
        self.assertFalse(os.path.exists(os.path.join(self.server.data_dir, "datasets-uploaded", tgz["sha256"])))

        # A file:// archive, on a worker that may use the server's extracted copy.
        local = harness.Worker(self.server, os.path.join(self.tmp, "local"))
        try:
            logs = self.run_job(f"file://{self.tgz}")
            self.assertTrue(any("using the server's copy" in m for m in logs), logs)
            self.assertFalse(os.path.exists(os.path.join(local.work_dir, "datasets", sha256_file(self.tgz))))
        finally:
            local.stop()

    def test_bad_uploads(self):
        self.refused(self.upload(self.tgz, "wrong-sha", "--sha256=" + "0" * 64), "DATA_LOSS", "sha256")

        big = os.path.join(self.tmp, "big.tar")
        with tarfile.open(big, "w") as t:
            data = os.urandom(MAX_UPLOAD + 1000)
            info = tarfile.TarInfo("train/a/big.png")
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
        self.refused(self.upload(big, "too-big"), "RESOURCE_EXHAUSTED", str(MAX_UPLOAD))

        for bad in ("../evil.png", "train/../../evil.png", "/abs/evil.png"):
            path = os.path.join(self.tmp, "evil.tar.gz")
            with tarfile.open(path, "w:gz") as t:
                t.add(self.shapes, arcname=".")
                info = tarfile.TarInfo(bad)
                info.size = 4
                t.addfile(info, io.BytesIO(b"evil"))
            self.refused(self.upload(path, "evil"), "INVALID_ARGUMENT", f"'{bad}'")
        self.assertFalse(os.path.exists(os.path.join(self.server.data_dir, "evil.png")))

        link = os.path.join(self.tmp, "link.tar")
        with tarfile.open(link, "w") as t:
            t.add(self.shapes, arcname=".")
            info = tarfile.TarInfo("train/class_0/escape.png")
            info.type = tarfile.SYMTYPE
            info.linkname = "../../../../../etc/passwd"
            t.addfile(info)
        self.refused(self.upload(link, "link"), "INVALID_ARGUMENT", "train/class_0/escape.png")

        # 30 MB of zeros deflate to a few dozen KB: past the extraction cap.
        bomb = os.path.join(self.tmp, "bomb.zip")
        with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr("train/a/0.png", b"\0" * 30_000_000)
        self.assertLess(os.path.getsize(bomb), MAX_UPLOAD)
        self.refused(self.upload(bomb, "bomb"), "RESOURCE_EXHAUSTED", "extraction limit")

        junk = os.path.join(self.tmp, "junk.tar.gz")
        with open(junk, "wb") as f:
            f.write(os.urandom(10000))
        self.refused(self.upload(junk, "junk"), "INVALID_ARGUMENT", "not a tar or zip archive")
        self.refused(self.upload(self.tgz, "../name"), "INVALID_ARGUMENT", "name")
        self.refused(self.upload(self.tgz, "fmt", "--format=zip"), "INVALID_ARGUMENT", "tar.gz")
        self.assertEqual(self.server.ftctl("datasets", "upload", self.tgz).returncode, 2)

        # Refused at commit (digest, size): no record. Refused by the
        # extraction that follows the commit: listed as FAILED, with the
        # reason, and no files.
        listed = self.listed()
        for n in ("wrong-sha", "too-big"):
            self.assertNotIn(n, listed)
        for n in ("evil", "link", "bomb", "junk", "fmt"):
            self.assertEqual(listed[n]["state"], "DATASET_FAILED", listed[n])
            self.assertTrue(listed[n]["error"], listed[n])
            self.assertFalse(os.path.exists(os.path.join(self.server.data_dir, "datasets-uploaded",
                                                         "pending-" + listed[n]["sha256"])))
        self.refused(self.server.submit("--dataset=dataset://evil", "--backbone=resnet18")[0],
                     "FAILED_PRECONDITION", "failed to extract")
        self.assertEqual(self.server.ftctl("datasets", "delete", "evil").returncode, 0)
        self.assertNotIn("evil", self.listed())
        incoming = os.path.join(self.server.data_dir, "datasets-uploaded", ".incoming")
        deadline = time.time() + 10
        while os.listdir(incoming) and time.time() < deadline:
            time.sleep(0.1)
        self.assertEqual(os.listdir(incoming), [])

    def test_unknown_dataset(self):
        r = self.server.ftctl("submit", "--dataset=dataset://unknown", "--backbone=resnet18")
        self.refused(r, "NOT_FOUND", "unknown")
        self.refused(self.server.ftctl("submit", "--dataset=dataset://bad/name", "--backbone=resnet18"),
                     "INVALID_ARGUMENT", "dataset_uri")
        self.refused(self.server.ftctl("datasets", "delete", "unknown"), "NOT_FOUND", "unknown")


if __name__ == "__main__":
    unittest.main(verbosity=2)
