"""Two finetuned replicas on one PostgreSQL database and one shared
--data-dir act as one service: a job submitted to one is watched live,
read, downloaded and cancelled through the other; jobs queued through both
are leased exactly once by the two replicas' workers; and when a replica is
killed mid-job, its job is re-leased by the other replica's worker and
finishes, while the survivor keeps serving every job, model and dataset.

The test starts its own PostgreSQL (initdb and pg_ctl); one that cannot be
started fails the test, it never skips."""
import datetime
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

# A lease lapses this long after its worker's last heartbeat: short, so that
# a killed replica's job is re-queued soon.
LEASE_TTL_SECONDS = 4


def parse_time(text):
    # Protobuf's JSON timestamps: RFC 3339 in UTC with up to 9 fraction digits.
    text = text.rstrip("Z")
    if "." in text:
        head, frac = text.split(".")
        text = f"{head}.{frac[:6]}"
    return datetime.datetime.fromisoformat(text)


def alive(pid):
    """Whether `pid` runs (a zombie does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class ReplicasTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="ft-replicas-")
        cls.a = cls.b = None
        cls.pg = harness.Postgres(os.path.join(cls.tmp, "pg"))
        os.makedirs(cls.pg.dir)
        try:
            cls.start_all()
        except BaseException:
            # unittest skips tearDownClass when setUpClass fails: leave no
            # server running.
            cls.tearDownClass()
            raise

    @classmethod
    def start_all(cls):
        cls.pg.start()
        cls.url = cls.pg.create_database("finetune")
        cls.root = os.path.join(cls.tmp, "data")
        cls.shapes = harness.make_imagefolder(os.path.join(cls.root, "shapes"), classes=2, train_per_class=16,
                                              val_per_class=4, size=32)
        cls.var = os.path.join(cls.tmp, "var")  # shared by both replicas
        cls.a = cls.replica("a")
        cls.b = cls.replica("b")

    @classmethod
    def replica(cls, name):
        return harness.Server(cls.var, [cls.root], local_workers=1, name=name,
                              extra=[f"--database={cls.url}", f"--replica-id={name}",
                                     f"--lease-ttl-seconds={LEASE_TTL_SECONDS}", "--worker-device=cpu",
                                     "--worker-c10d-host=127.0.0.1"]).start()

    @classmethod
    def tearDownClass(cls):
        for server in (cls.a, cls.b):
            if server is not None:
                server.stop()
        cls.pg.stop()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def logs(self):
        return f"\n--- replica a:\n{self.a.log()}\n--- replica b:\n{self.b.log()}"

    def submit(self, server, *extra, dataset=None, epochs=1):
        r = server.ftctl("submit", f"--dataset={dataset or 'file://' + self.shapes}", "--backbone=resnet18",
                         "--weights=none", f"--epochs={epochs}", "--image-size=32", "--batch-size=8", *extra,
                         json_output=True)
        self.assertEqual(r.returncode, 0, r.stderr + self.logs())
        return json.loads(r.stdout)

    def get(self, server, job_id):
        r = server.ftctl("get", job_id, json_output=True)
        self.assertEqual(r.returncode, 0, r.stderr + self.logs())
        return json.loads(r.stdout)

    def watch(self, server, job_id, start=1):
        """The whole event log through `server`, then the final job."""
        r = server.ftctl("watch", job_id, f"--from={start}", json_output=True, timeout=900)
        lines = [json.loads(l) for l in r.stdout.splitlines() if l.strip()]
        self.assertTrue(lines, r.stderr + self.logs())
        return [l for l in lines if "sequence" in l], lines[-1]

    def wait_state(self, server, job_id, states, timeout=600):
        job = wait_for(lambda: (lambda j: j if j["state"] in states else None)(self.get(server, job_id)), timeout)
        self.assertIsNotNone(job, f"job {job_id} never reached {states}: {self.get(server, job_id)}{self.logs()}")
        return job

    def running_events(self, events):
        return [e["state_changed"] for e in events
                if "state_changed" in e and e["state_changed"].get("state") == "RUNNING"]

    def check_log(self, events):
        self.assertEqual([int(e["sequence"]) for e in events], list(range(1, len(events) + 1)),
                         "a gap, a duplicate or a reordering in the event log")

    def test_1_submit_on_a_watch_get_list_download_on_b(self):
        job = self.submit(self.a, "--name=crossing")
        # Started at once, so that it follows the job live from B: every
        # event a worker sends through A reaches B's watcher through the
        # database's notifications, and the watch ends with the job.
        watcher = subprocess.Popen([harness.FTCTL, f"--server={self.b.address}", "--output=json", "watch",
                                    job["id"]], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out, err = watcher.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            watcher.kill()
            self.fail("the watcher on replica b never saw the job end" + self.logs())
        self.assertEqual(watcher.returncode, 0, err + self.logs())
        lines = [json.loads(l) for l in out.splitlines() if l.strip()]
        live, final = [l for l in lines if "sequence" in l], lines[-1]
        self.check_log(live)
        self.assertEqual(live[0]["state_changed"]["state"], "QUEUED")
        self.assertEqual(live[-1]["state_changed"]["state"], "SUCCEEDED")
        self.assertTrue(any("epoch" in e for e in live), live)
        self.assertEqual(final["state"], "SUCCEEDED", final)
        # Exactly the log replica a has.
        replay, _ = self.watch(self.a, job["id"])
        self.assertEqual(replay, live)

        got = self.get(self.b, job["id"])
        self.assertEqual((got["state"], got["model_id"]), ("SUCCEEDED", final["model_id"]))
        r = self.b.ftctl("list", json_output=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn(job["id"], [j["id"] for j in json.loads(r.stdout).get("jobs", [])])

        model_id = got["model_id"]
        r = self.b.ftctl("models", "list", json_output=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn(model_id, [m["id"] for m in json.loads(r.stdout).get("models", [])])
        out_dir = os.path.join(self.tmp, "model-from-b")
        r = self.b.ftctl("models", "download", model_id, f"--dir={out_dir}")
        self.assertEqual(r.returncode, 0, r.stderr + self.logs())
        with open(os.path.join(out_dir, "metadata.json")) as f:
            self.assertEqual(json.load(f)["job_id"], job["id"])
        self.assertGreater(os.path.getsize(os.path.join(out_dir, "model.pt")), 1000)
        self.__class__.model_id = model_id
        self.__class__.first_job = job["id"]

    def test_2_many_jobs_on_both_are_leased_once(self):
        # An archive uploaded through a, then named by jobs submitted to
        # either replica and leased by either replica's worker.
        r = self.a.ftctl("datasets", "upload", self.shapes, "--name=shapes-up", json_output=True)
        self.assertEqual(r.returncode, 0, r.stderr + self.logs())

        def ready_on_b():
            r = self.b.ftctl("datasets", "list", json_output=True)
            sets = {d["name"]: d for d in json.loads(r.stdout).get("datasets", [])} if r.returncode == 0 else {}
            return sets.get("shapes-up", {}).get("state") == "DATASET_READY"
        self.assertTrue(wait_for(ready_on_b, 120), "replica b never listed the upload READY" + self.logs())

        jobs = []
        for i in range(6):
            server = (self.a, self.b)[i % 2]
            dataset = "dataset://shapes-up" if i % 3 == 0 else None
            jobs.append(self.submit(server, f"--name=many-{i}", dataset=dataset)["id"])
        spans = {}
        for job_id in jobs:
            events, final = self.watch(self.b, job_id)
            self.assertEqual(final["state"], "SUCCEEDED", final)
            self.check_log(events)
            running = self.running_events(events)
            self.assertEqual(len(running), 1, f"job {job_id} was leased {len(running)} times: {running}")
            self.assertEqual(running[0].get("attempt"), 1, running)
            self.assertEqual(final.get("attempts"), 1, final)
            worker = running[0]["worker_id"]
            self.assertIn(worker, ("a-local-0", "b-local-0"))
            spans.setdefault(worker, []).append((parse_time(final["start_time"]), parse_time(final["end_time"]),
                                                 job_id))
        # Each worker runs one job at a time: a job leased twice would overlap.
        for worker, times in spans.items():
            times.sort()
            for (s1, e1, j1), (s2, e2, j2) in zip(times, times[1:]):
                self.assertLessEqual(e1, s2, f"{worker} ran {j1} and {j2} at once")
        self.assertEqual(set(spans), {"a-local-0", "b-local-0"},
                         f"the jobs queued through both replicas went to one worker only: {spans}")

    def test_3_cancel_via_b_a_job_running_anywhere(self):
        job = self.submit(self.a, "--name=to-cancel", "--image-size=64", epochs=50)
        self.wait_state(self.b, job["id"], ("RUNNING",), timeout=300)
        r = self.b.ftctl("cancel", job["id"], json_output=True)
        self.assertEqual(r.returncode, 0, r.stderr + self.logs())
        done = self.wait_state(self.a, job["id"], ("CANCELLED", "FAILED", "SUCCEEDED"), timeout=120)
        self.assertEqual(done["state"], "CANCELLED", done)
        events, final = self.watch(self.b, job["id"])
        self.check_log(events)
        self.assertEqual(events[-1]["state_changed"]["state"], "CANCELLED")

    def test_3b_one_job_on_a_worker_of_each_replica(self):
        # Each replica has one local worker: a job needing two takes both,
        # a group formed across the replicas through the shared database.
        job = self.submit(self.a, "--name=gang", "--workers=2", epochs=2)
        events, final = self.watch(self.b, job["id"])
        self.assertEqual(final["state"], "SUCCEEDED", str(final) + self.logs())
        self.check_log(events)
        self.assertEqual(sorted(final["workers"]), ["a-local-0", "b-local-0"], final)
        running = self.running_events(events)
        self.assertEqual(len(running), 1, running)
        self.assertEqual(running[0]["workers"], final["workers"])
        epochs = [e["epoch"] for e in events if "epoch" in e]
        self.assertEqual([e["world_size"] for e in epochs], [2, 2])

    def test_4_replica_killed_mid_job(self):
        # Only a's worker is there while the job is leased: b restarts
        # (same replica id, same data dir) once the job runs on a.
        self.b.stop()
        # Long enough to outlast b's restart, short enough to finish on b.
        job = self.submit(self.a, "--name=survivor", epochs=8)
        running = self.wait_state(self.a, job["id"], ("RUNNING",), timeout=300)
        self.assertEqual(running["worker_id"], "a-local-0")
        self.b.start()
        a_workers = harness.worker_pids(self.a.proc.pid)
        self.assertEqual(len(a_workers), 1, a_workers)
        self.assertEqual(self.get(self.b, job["id"])["state"], "RUNNING",
                         "the job ended before replica a could be killed; make it longer")
        self.a.stop(signal.SIGKILL)

        self.assertTrue(wait_for(lambda: all(not alive(pid) for pid in a_workers), 60),
                        "replica a's local worker outlived it")

        done = self.wait_state(self.b, job["id"], ("SUCCEEDED", "FAILED", "CANCELLED"), timeout=900)
        self.assertEqual(done["state"], "SUCCEEDED", str(done) + self.logs())
        self.assertEqual(done["attempts"], 2, done)
        events, _ = self.watch(self.b, job["id"])
        self.check_log(events)
        running = self.running_events(events)
        self.assertEqual([(r["attempt"], r["worker_id"]) for r in running], [(1, "a-local-0"), (2, "b-local-0")])

        # b serves everything a did: every job, the models and the datasets.
        r = self.b.ftctl("list", json_output=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        listed = {j["id"]: j["state"] for j in json.loads(r.stdout).get("jobs", [])}
        self.assertEqual(listed.get(job["id"]), "SUCCEEDED")
        self.assertNotIn("RUNNING", listed.values(), listed)
        if hasattr(self, "first_job"):
            self.assertEqual(listed.get(self.first_job), "SUCCEEDED")
            r = self.b.ftctl("models", "download", self.model_id, f"--dir={os.path.join(self.tmp, 'after-kill')}")
            self.assertEqual(r.returncode, 0, r.stderr)
        r = self.b.ftctl("models", "download", done["model_id"], f"--dir={os.path.join(self.tmp, 'survivor')}")
        self.assertEqual(r.returncode, 0, r.stderr + self.logs())
        r = self.b.ftctl("datasets", "list", json_output=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("shapes-up", [d["name"] for d in json.loads(r.stdout).get("datasets", [])])


if __name__ == "__main__":
    unittest.main(verbosity=2)
