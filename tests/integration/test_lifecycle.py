"""Cancel mid-epoch, replay from a sequence, restart on the same data dir,
and a worker that dies: the job is re-queued and still finishes."""
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import unittest

import harness


wait_for = harness.wait_for


class LifecycleTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="ft-life-")
        self.root = os.path.join(self.tmp, "data")
        self.data = harness.make_imagefolder(os.path.join(self.root, "shapes"), classes=2,
                                             train_per_class=40, val_per_class=10, size=32)
        self.server = harness.Server(os.path.join(self.tmp, "var"), [self.root]).start()

    def tearDown(self):
        self.server.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def get(self, job_id):
        r = self.server.ftctl("get", job_id, json_output=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        return json.loads(r.stdout)

    def events(self, job_id, start=0):
        r = self.server.ftctl("watch", job_id, f"--from={start}", json_output=True)
        lines = [json.loads(l) for l in r.stdout.splitlines() if l.strip()]
        return r, [l for l in lines if "sequence" in l], lines[-1]

    def submit(self, *extra):
        r = self.server.ftctl("submit", f"--dataset=file://{self.data}", "--backbone=resnet18",
                              "--image-size=32", "--batch-size=8", *extra, json_output=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        return json.loads(r.stdout)

    def test_cancel_mid_epoch_then_next_job_runs(self):
        # Large enough that an epoch lasts well beyond the cancel: 40 steps
        # of 2 images at 96 px (an epoch's last step also sends a progress
        # event, which on a fast machine could be the first one seen).
        job = self.submit("--epochs=50", "--image-size=96", "--batch-size=2", "--name=long")
        # Wait for a mid-epoch progress event, reading the live stream.
        def has_train_progress():
            p = subprocess.Popen([harness.FTCTL, f"--server={self.server.address}", "--output=json",
                                  "watch", job["id"]], stdout=subprocess.PIPE, text=True)
            try:
                deadline = time.time() + 120
                for line in p.stdout:
                    e = json.loads(line)
                    if "progress" in e and e["progress"].get("phase") == "train":
                        return e
                    if time.time() > deadline:
                        return None
            finally:
                p.kill()
                p.wait()
        ev = has_train_progress()
        self.assertIsNotNone(ev, self.server.log())
        self.assertEqual(ev["progress"]["epoch"], 1)
        t0 = time.time()
        c = self.server.ftctl("cancel", job["id"])
        self.assertEqual(c.returncode, 0, c.stderr)
        final = wait_for(lambda: (lambda j: j if j["state"] == "CANCELLED" else None)(self.get(job["id"])), 30)
        self.assertIsNotNone(final, f"job did not end CANCELLED: {self.get(job['id'])}")
        elapsed = time.time() - t0
        self.assertLess(elapsed, 30)
        _, evs, _ = self.events(job["id"])
        self.assertEqual(evs[-1]["state_changed"]["state"], "CANCELLED")
        self.assertFalse(any("epoch" in e for e in evs), "cancel should land mid-epoch 1")
        # Watching a cancelled job ends with exit code 1.
        r, _, _ = self.events(job["id"])
        self.assertEqual(r.returncode, 1)
        # The worker takes the next job.
        r, events, nxt = self.server.submit(f"--dataset=file://{self.data}", "--backbone=resnet18",
                                            "--image-size=32", "--epochs=1")
        self.assertEqual(r.returncode, 0, r.stderr + self.server.log())
        self.assertEqual(nxt["state"], "SUCCEEDED")

    def test_cancel_queued_job(self):
        # No worker is free while the first runs; the second is cancelled in the queue.
        first = self.submit("--epochs=50", "--image-size=96")
        second = self.submit("--epochs=1")
        c = self.server.ftctl("cancel", second["id"], json_output=True)
        self.assertEqual(c.returncode, 0, c.stderr)
        self.assertEqual(json.loads(c.stdout)["state"], "CANCELLED")
        self.server.ftctl("cancel", first["id"])
        self.assertTrue(wait_for(lambda: self.get(first["id"])["state"] == "CANCELLED", 30))

    def test_replay_restart_and_worker_death(self):
        r, events, job = self.server.submit(f"--dataset=file://{self.data}", "--backbone=resnet18",
                                            "--image-size=32", "--epochs=2")
        self.assertEqual(r.returncode, 0, r.stderr + self.server.log())
        full = [json.dumps(e, sort_keys=True) for e in events]
        n = len(full)
        self.assertGreater(n, 5)
        for start in (1, 2, n // 2, n):
            rr, evs, last = self.events(job["id"], start)
            self.assertEqual(rr.returncode, 0)
            self.assertEqual([int(e["sequence"]) for e in evs], list(range(start, n + 1)))
            self.assertEqual([json.dumps(e, sort_keys=True) for e in evs], full[start - 1:])
            self.assertEqual(last["state"], "SUCCEEDED")
        # Past the end: nothing but the final job.
        _, evs, _ = self.events(job["id"], n + 1)
        self.assertEqual(evs, [])

        # Kill the server hard and start it again on the same data dir.
        jobs_before = json.loads(self.server.ftctl("list", json_output=True).stdout)["jobs"]
        self.server.stop(signal.SIGKILL)
        self.server.start()
        jobs_after = json.loads(self.server.ftctl("list", json_output=True).stdout)["jobs"]
        self.assertEqual(jobs_before, jobs_after)
        _, evs, last = self.events(job["id"])
        self.assertEqual([json.dumps(e, sort_keys=True) for e in evs], full)
        d = self.server.ftctl("models", "download", job["model_id"], f"--dir={self.tmp}/m")
        self.assertEqual(d.returncode, 0, d.stderr)

        # A worker killed mid-job: the pool restarts it, the job is re-queued and finishes.
        victim = self.submit("--epochs=3", "--image-size=64")
        def running_worker():
            j = self.get(victim["id"])
            return j if j["state"] == "RUNNING" else None
        self.assertTrue(wait_for(running_worker, 60))
        time.sleep(1.0)
        pids = subprocess.run(["pgrep", "-f", f"finetune-worker.*--parent-pid={self.server.proc.pid}"],
                              capture_output=True, text=True).stdout.split()
        self.assertTrue(pids, "local worker process not found")
        for p in pids:
            os.kill(int(p), signal.SIGKILL)
        rr, evs, last = self.events(victim["id"])
        self.assertEqual(last["state"], "SUCCEEDED", self.server.log())
        self.assertEqual(last["attempts"], 2)
        states = [e["state_changed"]["state"] for e in evs if "state_changed" in e]
        self.assertEqual(states, ["QUEUED", "RUNNING", "QUEUED", "RUNNING", "SUCCEEDED"])


if __name__ == "__main__":
    unittest.main(verbosity=2)
