"""Faults, with real processes and real signals: nothing a job finished is lost.

(a) SIGKILL of the worker at 10 random moments of one job: the job SUCCEEDS, no
    completed epoch is trained twice, and its weights are bit-identical to the
    same job run without interruption.
(b) SIGKILL of the server 3 times during a job: the same, and a watcher that
    stayed on the whole time ends with the full, gap-free event sequence.
(c) SIGTERM mid-epoch: the worker checkpoints and gives the job back
    (preempted); the next attempt resumes in that epoch, at that step.
(d) The newest checkpoint damaged on disk: the job resumes from the one before,
    says so, and is still bit-identical.
(e) The server's disk refuses a checkpoint (RLIMIT_FSIZE through prlimit): the
    job FAILS naming the disk; other jobs, models and events are untouched and
    the server keeps serving.
(f) A cancelled job gives back what it held: the worker's RSS after it is within
    10% of what it was before it.
(g) An external worker keeps training through a SIGKILL of its server, reconnects,
    and finishes the same attempt.

The figures (kills, jobs lost, epochs redone, most steps lost in one kill) are
printed as JSON lines, for the closing note.
"""
import glob
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "integration"))
import harness  # noqa: E402

# A job of 4 epochs of 30 steps at 64 px, checkpointing every second: MobileNetV3 has
# BatchNorm, dropout and squeeze-excitation, and its checkpoints are small
# (about 20 MB), so the suite stays short.
JOB = ["--backbone=mobilenet_v3_small", "--image-size=64", "--batch-size=8", "--epochs=4", "--lr=0.002",
       "--optimizer=sgd", "--seed=11", "--checkpoint-interval=1", "--augment=standard"]


def report(**kv):
    print("FAULTS " + json.dumps(kv), flush=True)


wait_for = harness.wait_for


class Faults(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="ft-faults-")
        cls.root = os.path.join(cls.tmp, "data")
        cls.data = harness.make_imagefolder(os.path.join(cls.root, "shapes"), classes=3, train_per_class=80,
                                            val_per_class=10, size=64, seed=3)
        cls.port = harness.free_port()
        cls.server = cls.start_server()
        # The reference: the same job, never interrupted.
        # An instance for the helpers (any method name will do).
        helper = cls("submit")
        cls.clean = helper.run_to_end(cls.server)
        cls.clean_tensors = helper.tensors(cls.server, cls.clean)

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    @classmethod
    def start_server(cls, data_dir=None):
        # A fixed port, so that watchers and external workers find it again.
        return harness.Server(data_dir or os.path.join(cls.tmp, "var"), [cls.root],
                              extra=[f"--listen=127.0.0.1:{cls.port}", "--lease-ttl-seconds=10",
                                     "--max-attempts=30"]).start()

    def submit(self, server, *extra):
        r = server.ftctl("submit", f"--dataset=file://{self.data}", *JOB, *extra, json_output=True)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)["id"]

    def get(self, server, job_id):
        r = server.ftctl("get", job_id, json_output=True)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    def events(self, server, job_id):
        r = server.ftctl("watch", job_id, json_output=True, timeout=900)
        lines = [json.loads(l) for l in r.stdout.splitlines() if l.strip()]
        return [l for l in lines if "sequence" in l]

    def run_to_end(self, server, *extra):
        job_id = self.submit(server, *extra)
        self.events(server, job_id)
        return self.get(server, job_id)

    def tensors(self, server, job):
        import torch
        assert job["state"] == "SUCCEEDED", job
        out = os.path.join(self.tmp, "dl-" + job["id"])
        d = server.ftctl("models", "download", job["model_id"], f"--dir={out}")
        assert d.returncode == 0, d.stderr
        model = torch.jit.load(os.path.join(out, "model.pt"))
        return {k: v.clone() for k, v in list(model.named_parameters()) + list(model.named_buffers())}

    def assert_identical_to_clean(self, job):
        import torch
        got = self.tensors(self.server, job)
        self.assertEqual(sorted(got), sorted(self.clean_tensors))
        different = [k for k in got if not torch.equal(got[k], self.clean_tensors[k])]
        self.assertEqual(different, [], "tensors that differ from the uninterrupted run")
        self.assertEqual(job["metrics"]["val_loss"], self.clean["metrics"]["val_loss"])

    def assert_no_epoch_redone(self, events):
        """Each epoch summary once; no training step of an epoch after its summary."""
        epochs = [e["epoch"]["epoch"] for e in events if "epoch" in e]
        self.assertEqual(epochs, sorted(set(epochs)), f"an epoch was reported twice: {epochs}")
        finished = set()
        for e in events:
            if "epoch" in e:
                finished.add(e["epoch"]["epoch"])
            elif "progress" in e and e["progress"].get("phase") == "train":
                self.assertNotIn(e["progress"]["epoch"], finished, "a completed epoch was trained again")
        return len(epochs)

    def steps_lost(self, events):
        """Per resumed attempt: training steps of the previous attempt, as its
        progress events showed them, that the next one did again."""
        lost, last = [], (0, 0)
        for e in events:
            if "progress" in e and e["progress"].get("phase") == "train":
                last = (e["progress"]["epoch"], int(e["progress"].get("step", 0)))
            sc = e.get("state_changed", {})
            if sc.get("state") == "RUNNING" and int(sc.get("attempt", 1)) > 1:
                ep, st = int(sc.get("resumed_epoch", 0)), int(sc.get("resumed_step", 0))
                # Progress comes every 2 s, so this is a lower bound; a
                # checkpoint newer than the last progress seen counts 0.
                lost.append(max(0, last[1] - st) if ep == last[0] else last[1] if ep < last[0] else 0)
        return lost

    @staticmethod
    def checkpointed_epoch(log_path, job_id):
        """The newest epoch a stored checkpoint of `job_id` is in, from a worker's log (0: none)."""
        try:
            with open(log_path, errors="replace") as f:
                epochs = [int(m.group(1)) for m in re.finditer(
                    rf"checkpoint stored job_id={job_id} number=\d+ epoch=(\d+)", f.read())]
        except OSError:
            return 0
        return max(epochs, default=0)

    def test_a_worker_killed_at_random_moments(self):
        rng = random.Random(5)
        job_id = self.submit(self.server)
        kills = 0
        ckpt_dir = os.path.join(self.server.data_dir, "checkpoints", job_id)

        def newest():
            numbers = [int(os.path.basename(p)[:-len(".record")]) for p in glob.glob(os.path.join(ckpt_dir, "*.record"))]
            return max(numbers, default=0)

        while kills < 10:
            job = self.get(self.server, job_id)
            if job["state"] in ("SUCCEEDED", "FAILED", "CANCELLED"):
                break
            if rng.random() < 0.3:
                # While the new worker starts, fetches its checkpoint or resumes.
                time.sleep(rng.uniform(0.2, 1.5))
            else:
                # In training, once this attempt has stored a checkpoint.
                seen = newest()
                wait_for(lambda: newest() > seen or self.get(self.server, job_id)["state"] == "SUCCEEDED", 120)
                time.sleep(rng.uniform(0.0, 1.0))
            pids = harness.worker_pids(self.server.proc.pid)
            if pids and self.get(self.server, job_id)["state"] == "RUNNING":
                for p in pids:
                    os.kill(p, signal.SIGKILL)
                kills += 1
        events = self.events(self.server, job_id)
        job = self.get(self.server, job_id)
        self.assertEqual(job["state"], "SUCCEEDED", job.get("error"))
        epochs = self.assert_no_epoch_redone(events)
        lost = self.steps_lost(events)
        report(scenario="a", kills=kills, attempts=job["attempts"], epochs=epochs, jobs_lost=0,
               epochs_redone=0, steps_lost=lost)
        self.assertGreaterEqual(kills, 5, "the job ended before enough kills")
        self.assert_identical_to_clean(job)

    def test_b_server_killed_three_times(self):
        job_id = self.submit(self.server)
        seen = []
        watcher_done = threading.Event()

        def watch():
            r = subprocess.run([harness.FTCTL, f"--server=127.0.0.1:{self.port}", "--output=json", "watch", job_id],
                               capture_output=True, text=True, timeout=900)
            seen.extend(json.loads(l) for l in r.stdout.splitlines() if l.strip())
            watcher_done.set()

        t = threading.Thread(target=watch)
        t.start()
        for kill in range(3):
            self.assertTrue(wait_for(lambda: self.checkpointed_epoch(self.server.log_path, job_id), 120))
            time.sleep(1.5)
            self.server.stop(signal.SIGKILL)
            time.sleep(0.5)
            type(self).server = self.start_server()
            self.server = type(self).server
        t.join(timeout=900)
        self.assertTrue(watcher_done.is_set())
        job = self.get(self.server, job_id)
        self.assertEqual(job["state"], "SUCCEEDED", job.get("error"))
        events = [e for e in seen if "sequence" in e]
        sequences = [int(e["sequence"]) for e in events]
        self.assertEqual(sequences, list(range(1, len(sequences) + 1)), "the watcher saw a gap or a repeat")
        self.assertEqual(len(events), int(job["last_sequence"]))
        epochs = self.assert_no_epoch_redone(events)
        report(scenario="b", server_kills=3, attempts=job["attempts"], epochs=epochs, jobs_lost=0,
               watcher_events=len(events), steps_lost=self.steps_lost(events))
        self.assert_identical_to_clean(job)

    def test_c_sigterm_resumes_where_it_stopped(self):
        job_id = self.submit(self.server)
        self.assertTrue(wait_for(lambda: self.checkpointed_epoch(self.server.log_path, job_id) >= 2, 300))
        for p in harness.worker_pids(self.server.proc.pid):
            os.kill(p, signal.SIGTERM)
        events = self.events(self.server, job_id)
        job = self.get(self.server, job_id)
        self.assertEqual(job["state"], "SUCCEEDED", job.get("error"))
        states = [e["state_changed"] for e in events if "state_changed" in e]
        preempted = [i for i, s in enumerate(states) if "preempted" in s.get("message", "")]
        self.assertEqual(len(preempted), 1, states)
        resumed = states[preempted[0] + 1]
        self.assertEqual(resumed["state"], "RUNNING")
        self.assertGreaterEqual(int(resumed.get("resumed_epoch", 0)), 2)
        self.assertGreater(int(resumed.get("resumed_step", 0)), 0, "it should resume mid-epoch")
        logs = [e["log"]["message"] for e in events if "log" in e]
        self.assertTrue(any(f"resumed from checkpoint at epoch {resumed['resumed_epoch']}, step "
                            f"{resumed['resumed_step']}" in m for m in logs), logs)
        # A preemption is not a failed attempt, and the worker exited 0.
        self.assertEqual(job["attempts"], 1)
        with open(self.server.log_path, errors="replace") as f:
            self.assertIn("local worker exited; restarting", f.read())
        self.assert_no_epoch_redone(events)
        report(scenario="c", resumed_epoch=resumed.get("resumed_epoch"), resumed_step=resumed.get("resumed_step"))
        self.assert_identical_to_clean(job)

    def test_d_damaged_newest_checkpoint(self):
        job_id = self.submit(self.server)
        ckpt_dir = os.path.join(self.server.data_dir, "checkpoints", job_id)
        self.assertTrue(wait_for(lambda: len(glob.glob(os.path.join(ckpt_dir, "*.record"))) >= 2, 300))
        workers = harness.worker_pids(self.server.proc.pid)
        for p in workers:
            os.kill(p, signal.SIGSTOP)  # no new checkpoint while we damage the newest
        newest = max(glob.glob(os.path.join(ckpt_dir, "*.ckpt")), key=lambda p: int(os.path.basename(p)[:-5]))
        with open(newest, "r+b") as f:
            f.seek(os.path.getsize(newest) // 2)
            f.write(b"\xde\xad\xbe\xef" * 8)
        for p in workers:
            os.kill(p, signal.SIGKILL)
        events = self.events(self.server, job_id)
        job = self.get(self.server, job_id)
        self.assertEqual(job["state"], "SUCCEEDED", job.get("error"))
        warnings = [e["log"]["message"] for e in events if "log" in e and e["log"]["level"] == "warning"]
        self.assertTrue(any("is damaged" in w and "resuming from the one before" in w for w in warnings), warnings)
        # When the damaged one was an epoch's end, that epoch is trained again
        # from the one before (its summary comes twice, the same both times):
        # what is promised here is the model.
        summaries = {}
        for e in events:
            if "epoch" in e:
                n = e["epoch"]["epoch"]
                if n in summaries:
                    for k in ("train_loss", "val_loss", "val_accuracy"):
                        self.assertEqual(e["epoch"][k], summaries[n][k], f"epoch {n} trained again differently")
                summaries[n] = e["epoch"]
        self.assertEqual(sorted(summaries), [1, 2, 3, 4])
        self.assert_identical_to_clean(job)

    def test_e_full_disk(self):
        # A job that finishes first: its model and events must survive.
        before = self.run_to_end(self.server, "--epochs=1")
        self.assertEqual(before["state"], "SUCCEEDED")
        before_events = self.events(self.server, before["id"])
        # Files over 8 MiB now fail on the server (EFBIG), as on a full disk.
        subprocess.run(["prlimit", f"--pid={self.server.proc.pid}", "--fsize=8388608:"], check=True)
        try:
            job = self.run_to_end(self.server)
            self.assertEqual(job["state"], "FAILED")
            self.assertRegex(job["error"], "File too large|No space left|disk")
            self.assertIn("checkpoint", job["error"])
        finally:
            subprocess.run(["prlimit", f"--pid={self.server.proc.pid}", "--fsize=unlimited:"], check=True)
        # Everything else is as it was, and the server still serves.
        self.assertEqual(self.get(self.server, before["id"])["state"], "SUCCEEDED")
        self.assertEqual(len(self.events(self.server, before["id"])), len(before_events))
        self.tensors(self.server, before)
        after = self.run_to_end(self.server, "--epochs=1")
        self.assertEqual(after["state"], "SUCCEEDED", after.get("error"))
        report(scenario="e", failed_error=job["error"][:200])

    def test_f_cancel_gives_back_the_memory(self):
        def rss(pid):
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) * 1024
            raise AssertionError("no VmRSS")

        # A whole job first, so the worker is warm (LibTorch's code and pools).
        self.assertEqual(self.run_to_end(self.server, "--epochs=1")["state"], "SUCCEEDED")
        pids = harness.worker_pids(self.server.proc.pid)
        self.assertEqual(len(pids), 1)
        time.sleep(1)
        before = rss(pids[0])
        job_id = self.submit(self.server)
        ckpt_dir = os.path.join(self.server.data_dir, "checkpoints", job_id)
        # Well into the job: its model, optimiser state, loaders and a checkpoint exist.
        self.assertTrue(wait_for(lambda: glob.glob(os.path.join(ckpt_dir, "*.record")), 300))
        during = rss(pids[0])
        r = self.server.ftctl("cancel", job_id)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue(wait_for(lambda: self.get(self.server, job_id)["state"] == "CANCELLED", 120))
        time.sleep(2)
        self.assertEqual(harness.worker_pids(self.server.proc.pid), pids, "the worker should not have restarted")
        after = rss(pids[0])
        report(scenario="f", rss_before=before, rss_during=during, rss_after=after,
               ratio=round(after / before, 3))
        self.assertLessEqual(after, before * 1.10, f"RSS before {before}, during {during}, after {after}")

    def test_g_external_worker_rides_out_a_server_kill(self):
        # A server of its own, with no local workers: an external worker serves it.
        port = harness.free_port()
        var = os.path.join(self.tmp, "var-g")

        def start():
            return harness.Server(var, [self.root], local_workers=0,
                                  extra=[f"--listen=127.0.0.1:{port}", "--lease-ttl-seconds=30"]).start()

        server = start()
        worker = harness.Worker(server, os.path.join(self.tmp, "worker-g"), "--worker-id=external-g")
        try:
            job_id = self.submit(server)
            self.assertTrue(wait_for(lambda: self.checkpointed_epoch(worker.log_path, job_id) >= 2, 300))
            server.stop(signal.SIGKILL)
            time.sleep(3)  # training goes on meanwhile
            self.assertIsNone(worker.proc.poll(), "the external worker should outlive the server")
            server = start()
            events = self.events(server, job_id)
            job = self.get(server, job_id)
            self.assertEqual(job["state"], "SUCCEEDED", job.get("error"))
            # The same attempt went on: no lease was lost, nothing was resumed.
            self.assertEqual(job["attempts"], 1)
            running = [e["state_changed"] for e in events if e.get("state_changed", {}).get("state") == "RUNNING"]
            self.assertEqual(len(running), 1, running)
            sequences = [int(e["sequence"]) for e in events]
            self.assertEqual(sequences, list(range(1, len(sequences) + 1)))
            self.assert_no_epoch_redone(events)
            report(scenario="g", server_kills=1, attempts=job["attempts"], events=len(events))
            got = self.tensors(server, job)
            different = [k for k in got if not __import__("torch").equal(got[k], self.clean_tensors[k])]
            self.assertEqual(different, [])
        finally:
            worker.stop()
            server.stop()


if __name__ == "__main__":
    unittest.main(verbosity=2)
