"""The BLAS the workers ship with: dev.sh (select_blas) and the images make
BLIS the system's libblas.so.3. Under it, finetune-worker --version and a
job's first log line name it, and the worker's /metrics answers: with
OpenBLAS it could not (civetweb's 100 KiB thread stacks cannot hold
OpenBLAS's static TLS), which is why BLIS was chosen. The worker also makes OpenMP's threads
sleep rather than spin at barriers (OMP_WAIT_POLICY=passive), and it runs on tcmalloc,
which it links (glibc's malloc faulted LibTorch's activation buffers in anew every step):
--version, the start line and the first log line name it, and it is mapped in the process."""
import json
import os
import shutil
import subprocess
import tempfile
import unittest
import urllib.request

import harness

SETUP_HINT = "run ./dev.sh deps, whose select_blas makes BLIS the system's libblas.so.3"


class ShippedBlasTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="ft-blas-")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_version_names_blis(self):
        r = subprocess.run([harness.WORKER, "--version"], capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("BLAS BLIS (", r.stdout, SETUP_HINT)
        self.assertIn(", allocator tcmalloc", r.stdout)
        self.assertIn("blis-pthread/libblas.so.3", r.stdout)

    def test_metrics_answer_and_the_job_names_its_blas(self):
        root = os.path.join(self.tmp, "data")
        data = harness.make_imagefolder(os.path.join(root, "shapes"), classes=2, train_per_class=8,
                                        val_per_class=4, size=32)
        server = harness.Server(os.path.join(self.tmp, "var"), [root], local_workers=0).start()
        port = harness.free_port()
        worker = harness.Worker(server, os.path.join(self.tmp, "worker"), f"--metrics-listen=127.0.0.1:{port}")
        try:
            def scrape():
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
                        return resp.read().decode()
                except OSError:
                    return None
                finally:
                    self.assertIsNone(worker.proc.poll(), "the worker exited:\n" + worker.log())
            text = harness.wait_for(scrape, 60)
            self.assertIsNotNone(text, "the worker's /metrics never answered:\n" + worker.log())
            self.assertIn("finetune_worker_", text)
            self.assertIn("BLAS BLIS (", worker.log(), SETUP_HINT)
            # Started without OMP_WAIT_POLICY, the worker runs with it passive
            # (it executes itself again: libgomp reads it at load time).
            with open(f"/proc/{worker.proc.pid}/environ", "rb") as f:
                env = f.read().split(b"\0")
            self.assertIn(b"OMP_WAIT_POLICY=passive", env)
            # tcmalloc's report of every allocation over 1 GiB, off: a large cache makes them.
            self.assertIn(b"TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD=1099511627776", env)
            with open(f"/proc/{worker.proc.pid}/maps") as f:
                self.assertIn("libtcmalloc_minimal.so", f.read())
            r, events, job = server.submit(f"--dataset=file://{data}", "--backbone=resnet18", "--image-size=32",
                                           "--epochs=1", "--batch-size=8")
            self.assertEqual(r.returncode, 0, r.stderr + server.log())
            logs = [e["log"]["message"] for e in events if "log" in e]
            self.assertTrue(logs, events)
            self.assertRegex(logs[0], r"^compute: cpu, 2 threads, BLAS BLIS \(.*\), allocator tcmalloc$")
            # Still answering after a job (whose steps called BLIS's threads).
            text = scrape()
            self.assertIsNotNone(text)
            self.assertRegex(text, r"finetune_worker_images_total\S* 16")
        finally:
            worker.stop()
            server.stop()


if __name__ == "__main__":
    unittest.main(verbosity=2)
