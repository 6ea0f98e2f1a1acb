"""One job trained on several workers at once (JobSpec.workers, c10d).

Real finetuned and real finetune-workers (one thread each, started by hand
with --c10d-host=127.0.0.1), real c10d rendezvous and Gloo all-reduce:
- two workers train what one trains: on models without BatchNorm and
  dropout the weights agree within float reduction-order tolerance, and on
  resnet18 (local BatchNorm) the accuracy is within 8 points; with
  --sync-bn resnet18's weights agree too, where local BatchNorm's do not;
- with balanced class weights on imbalanced classes, too;
- a rank that fails for its own reason (out of memory, a dataset it cannot
  fetch) fails the job at once with that reason;
- a job needing more workers than there are waits, while a smaller job
  behind it runs (backfill), and ValidateJob says how many it needs;
- a rank killed with SIGKILL mid-job: the whole group is leased again, and
  the job resumes from its newest checkpoint and succeeds;
- a rank preempted (SIGTERM): every rank stops at the same step, and the job
  is given back without using an attempt, and finishes on a new group.
"""
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


def load_state(model_dir):
    import torch
    m = torch.jit.load(os.path.join(model_dir, "model.pt"), map_location="cpu")
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


class MultiWorkerTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        import torch
        cls.tmp = tempfile.mkdtemp(prefix="ft-multiworker-")
        cls.root = os.path.join(cls.tmp, "data")
        cls.data = harness.make_imagefolder(os.path.join(cls.root, "shapes"), classes=3, train_per_class=30,
                                            val_per_class=10, size=32)
        # A backbone without BatchNorm or dropout: every rank computes
        # exactly what one worker would, but for the order of float sums.
        torch.manual_seed(0)
        net = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten())
        cls.plain_net = os.path.join(cls.root, "plain.pt")
        torch.jit.save(torch.jit.script(net.eval()), cls.plain_net)
        cls.server = harness.Server(os.path.join(cls.tmp, "var"), [cls.root], local_workers=0,
                                    extra=["--lease-ttl-seconds=6"]).start()
        cls.workers = {}
        for i in range(3):
            cls.start_worker(f"w{i}")

    @classmethod
    def start_worker(cls, name):
        cls.workers[name] = harness.Worker(cls.server, os.path.join(cls.tmp, name), "--threads=1",
                                           "--c10d-host=127.0.0.1", f"--worker-id={name}",
                                           "--c10d-ports=29600-29699")

    @classmethod
    def tearDownClass(cls):
        for w in cls.workers.values():
            w.stop()
        cls.server.stop()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def logs(self):
        return "\n".join([self.server.log()] + [f"--- {n}\n{w.log()}" for n, w in self.workers.items()])

    def run_job(self, *flags, timeout=900, data=None):
        r, events, job = self.server.submit(f"--dataset=file://{data or self.data}", "--image-size=32",
                                            "--batch-size=12", *flags, timeout=timeout)
        self.assertEqual(r.returncode, 0, r.stderr + self.logs())
        self.assertEqual(job["state"], "SUCCEEDED", json.dumps(job)[:2000])
        return events, job

    def download(self, job):
        out = os.path.join(self.tmp, "models", job["model_id"])
        r = self.server.ftctl("models", "download", job["model_id"], f"--dir={out}")
        self.assertEqual(r.returncode, 0, r.stderr)
        return out

    def assert_same_weights(self, one, two, rtol, atol):
        import torch
        a, b = load_state(self.download(one)), load_state(self.download(two))
        self.assertEqual(sorted(a), sorted(b))
        worst = max(((a[k] - b[k]).abs().max().item(), k) for k in a if a[k].is_floating_point())
        print(f"largest weight difference, 1 worker against 2: {worst[0]:.3g} ({worst[1]})", flush=True)
        for k in a:
            if not a[k].is_floating_point():
                continue
            self.assertTrue(torch.allclose(a[k], b[k], rtol=rtol, atol=atol),
                            f"{k}: max difference {(a[k] - b[k]).abs().max().item():.3g}")

    def test_two_workers_train_what_one_trains(self):
        # The whole conv net trains (no cache), with augmentation: each
        # image is cropped and flipped as on one worker.
        common = ["--backbone=torchscript", f"--weights=file://{self.plain_net}", "--epochs=2", "--lr=0.01",
                  "--optimizer=sgd", "--augment=standard", "--seed=3"]
        one_events, one = self.run_job(*common)
        events, two = self.run_job(*common, "--workers=2")
        self.assertEqual(len(two["workers"]), 2, two)
        self.assertEqual(len(one["workers"]), 1, one)
        epochs = [e["epoch"] for e in events if "epoch" in e]
        self.assertEqual([e["world_size"] for e in epochs], [2, 2])
        # Validation is shared: rank 0 evaluates the first of the three
        # batches of 12 of the 30 images, rank 1 the rest, and the summed
        # result is one worker's (within the weights' float-sum differences).
        self.assertIn("validation is shared by the ranks rank=0/2 images=[0, 12) of 30",
                      self.workers[two["workers"][0]].log())
        self.assertIn("validation is shared by the ranks rank=1/2 images=[12, 30) of 30",
                      self.workers[two["workers"][1]].log())
        one_epochs = [e["epoch"] for e in one_events if "epoch" in e]
        for a, b in zip(one_epochs, epochs):
            self.assertAlmostEqual(a["val_loss"], b["val_loss"], places=5)
            self.assertEqual(a["val_accuracy"], b["val_accuracy"])
        self.assertEqual(one["metrics"]["val_confusion"], two["metrics"]["val_confusion"])
        running = [e["state_changed"] for e in events
                   if "state_changed" in e and e["state_changed"]["state"] == "RUNNING"]
        self.assertEqual(running[-1]["workers"], two["workers"])
        logs = [e["log"]["message"] for e in events if "log" in e]
        self.assertTrue(any("data parallel: 2 workers (c10d gloo)" in m for m in logs), logs)
        # The same images seen, the same curve (within float sums).
        self.assertEqual(one["metrics"]["trained_images"], two["metrics"]["trained_images"])
        self.assertAlmostEqual(one["metrics"]["train_loss"], two["metrics"]["train_loss"], places=3)
        self.assert_same_weights(one, two, rtol=1e-3, atol=1e-5)
        # vgg11 has dropout in its classifier, drawn per rank: with the
        # backbone frozen only its head trains, deterministically.
        common = ["--backbone=vgg11", "--weights=none", "--freeze-depth=all", "--epochs=1", "--augment=light",
                  "--seed=5"]
        _, one = self.run_job(*common)
        _, two = self.run_job(*common, "--workers=2")
        self.assert_same_weights(one, two, rtol=1e-3, atol=1e-5)

    def test_class_weights_on_two_workers_train_what_one_trains(self):
        # Imbalanced classes (30, 12 and 5 images): with balanced class
        # weights the batch's mean loss divides by its images' summed
        # weights, which differ between the ranks' shares; scaling each
        # rank's mean by its image count instead ends with a training loss
        # 0.8% away (measured: 0.9974 against 1.0055).
        imbalanced = os.path.join(self.root, "imbalanced")
        shutil.copytree(self.data, imbalanced)
        for c, keep in ((1, 12), (2, 5)):
            d = os.path.join(imbalanced, "train", f"class_{c}")
            for name in sorted(os.listdir(d))[keep:]:
                os.remove(os.path.join(d, name))
        common = ["--backbone=torchscript", f"--weights=file://{self.plain_net}",
                  "--epochs=2", "--lr=0.05", "--optimizer=sgd", "--augment=none", "--seed=4",
                  "--class-weights=balanced"]
        _, one = self.run_job(*common, data=imbalanced)
        events, two = self.run_job(*common, "--workers=2", data=imbalanced)
        logs = [e["log"]["message"] for e in events if "log" in e]
        self.assertTrue(any("balanced class weights, from 5 to 30 images per class" in m for m in logs), logs)
        self.assertAlmostEqual(one["metrics"]["train_loss"], two["metrics"]["train_loss"], places=5)
        self.assert_same_weights(one, two, rtol=1e-4, atol=1e-6)

    def test_resnet18_on_two_workers_is_as_accurate(self):
        # Local BatchNorm: each rank's statistics come from its half of
        # the batch, so the runs differ; the outcome must not.
        common = ["--backbone=resnet18", "--weights=none", "--epochs=4", "--lr=0.003", "--seed=1",
                  "--augment=none", "--cache-features=off"]
        _, one = self.run_job(*common)
        _, two = self.run_job(*common, "--workers=2")
        a, b = one["metrics"]["val_accuracy"], two["metrics"]["val_accuracy"]
        self.assertLessEqual(abs(a - b), 0.08, f"1 worker {a:.3f}, 2 workers {b:.3f}")

    def test_sync_bn_makes_two_workers_train_what_one_trains(self):
        # resnet18 has BatchNorm and no dropout: with --sync-bn every layer
        # normalises with the whole batch's statistics, as on one worker;
        # with local BatchNorm (the default) each rank's half has its own.
        # One step (the batch is the whole train split): a randomly
        # initialised resnet18 at 32 px is so ill-conditioned in float32
        # that over many steps rounding alone drifts (its float32 and
        # float64 gradients differ by up to 10% on some inputs), so the
        # step's weights are compared, against local BatchNorm's distance.
        common = ["--backbone=resnet18", "--weights=none", "--epochs=1", "--lr=0.01", "--optimizer=sgd",
                  "--seed=4", "--augment=none", "--cache-features=off", "--batch-size=90"]
        _, one = self.run_job(*common)
        _, local = self.run_job(*common, "--workers=2")
        events, synced = self.run_job(*common, "--workers=2", "--sync-bn")
        logs = [e["log"]["message"] for e in events if "log" in e]
        self.assertTrue(any("sync_bn: 20 BatchNorm layers" in m for m in logs), logs)
        a = load_state(self.download(one))
        worst = {}
        for name, job in (("local", local), ("sync", synced)):
            b = load_state(self.download(job))
            worst[name] = max(((a[k] - b[k]).abs().max().item(), k) for k in a
                              if a[k].is_floating_point() and "running" not in k)
            # The running statistics, relative to their size.
            worst[name + " stats"] = max((((a[k] - b[k]).abs().max() / a[k].abs().max()).item(), k) for k in a
                                         if "running" in k)
        print("largest difference from 1 worker:", worst, flush=True)
        self.assertLess(worst["sync"][0], 2e-4)
        self.assertGreater(worst["local"][0], 20 * worst["sync"][0])
        self.assertLess(worst["sync stats"][0], 1e-3)
        self.assertGreater(worst["local stats"][0], 100 * max(worst["sync stats"][0], 1e-5))
        # The saved model is plain PyTorch: it loads and runs without
        # finetuned's op, and its BatchNorm is the stock one.
        import torch
        m = torch.jit.load(os.path.join(self.download(synced), "model.pt"), map_location="cpu")
        self.assertNotIn("gang_all_reduce_sum", m.backbone.bn1.code)
        self.assertEqual(tuple(m(torch.rand(2, 3, 32, 32)).shape), (2, 3))
        # A TorchScript backbone's own BatchNorm cannot be swapped: refused
        # at submit, naming the field.
        r = self.server.ftctl("submit", f"--dataset=file://{self.data}", "--backbone=torchscript",
                              f"--weights=file://{self.plain_net}", "--workers=2", "--sync-bn")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("sync_bn", r.stderr)

    def test_a_gang_waits_and_smaller_jobs_run(self):
        flags = [f"--dataset=file://{self.data}", "--backbone=torchscript", f"--weights=file://{self.plain_net}",
                 "--image-size=32", "--epochs=1", "--batch-size=16"]
        r = self.server.ftctl("validate", *flags, "--workers=4", json_output=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        report = json.loads(r.stdout)
        self.assertEqual(report["workers_needed"], 4)
        self.assertTrue(any("needs 4 workers" in w for w in report["warnings"]), report["warnings"])
        r = self.server.ftctl("submit", *flags, "--workers=4", json_output=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        big = json.loads(r.stdout)["id"]
        # Three workers: the big job waits; a small one behind it runs.
        _, small = self.run_job("--backbone=torchscript", f"--weights=file://{self.plain_net}", "--epochs=1")
        big_job = json.loads(self.server.ftctl("get", big, json_output=True).stdout)
        self.assertEqual(big_job["state"], "QUEUED", big_job)
        r = self.server.ftctl("cancel", big)
        self.assertEqual(r.returncode, 0, r.stderr)

    def start_gang_job_and_wait_for_epoch_1(self):
        """A 2-worker job, once its first epoch (and its checkpoint) is done."""
        flags = [f"--dataset=file://{self.data}", "--backbone=resnet18", "--weights=none", "--image-size=32",
                 "--batch-size=12", "--epochs=4", "--augment=none", "--cache-features=off", "--workers=2"]
        r = self.server.ftctl("submit", *flags, json_output=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        job_id = json.loads(r.stdout)["id"]
        # Live, until the first epoch ends (its checkpoint is stored first).
        watch = subprocess.Popen([harness.FTCTL, f"--server={self.server.address}", "--output=json", "watch",
                                  job_id], stdout=subprocess.PIPE, text=True)
        try:
            deadline = time.time() + 600
            for line in watch.stdout:
                if '"epoch"' in line and json.loads(line).get("epoch") or time.time() > deadline:
                    break
        finally:
            watch.kill()
            watch.wait()
            watch.stdout.close()
        return job_id

    def wait_until_done(self, job_id):
        done = wait_for(lambda: (lambda j: j if j["state"] in ("SUCCEEDED", "FAILED", "CANCELLED") else None)(
            json.loads(self.server.ftctl("get", job_id, json_output=True).stdout)), 900, interval=1)
        self.assertIsNotNone(done, self.logs())
        return done

    def all_events(self, job_id):
        # The job has ended: watch prints every event and returns.
        r = self.server.ftctl("watch", job_id, "--from=1", json_output=True)
        return [json.loads(l) for l in r.stdout.splitlines() if l.strip() and '"sequence"' in l]

    def test_a_preempted_rank_stops_the_group_and_gives_the_job_back(self):
        job_id = self.start_gang_job_and_wait_for_epoch_1()
        job = json.loads(self.server.ftctl("get", job_id, json_output=True).stdout)
        victim = job["workers"][1]
        # SIGTERM: every rank stops at the same step, rank 0 checkpoints and
        # hands the job back (no attempt used); the preempted worker exits.
        self.workers[victim].proc.send_signal(signal.SIGTERM)
        self.assertEqual(self.workers[victim].proc.wait(timeout=120), 0, self.workers[victim].log())
        try:
            done = self.wait_until_done(job_id)
            self.assertEqual(done["state"], "SUCCEEDED", json.dumps(done)[:2000] + self.logs())
            self.assertEqual(done["attempts"], 1, done)
            evs = self.all_events(job_id)
            states = [e["state_changed"]["state"] for e in evs if "state_changed" in e]
            self.assertEqual(states, ["QUEUED", "RUNNING", "QUEUED", "RUNNING", "SUCCEEDED"], states)
            returned = [e["state_changed"]["message"] for e in evs
                        if "state_changed" in e and e["state_changed"]["state"] == "QUEUED"][1]
            self.assertIn("preempted", returned)
        finally:
            self.start_worker(victim)

    def test_a_killed_rank_regroups_and_resumes(self):
        job_id = self.start_gang_job_and_wait_for_epoch_1()

        def events():
            return self.all_events(job_id)

        job = json.loads(self.server.ftctl("get", job_id, json_output=True).stdout)
        victim = job["workers"][1]
        self.workers[victim].proc.send_signal(signal.SIGKILL)
        self.workers[victim].proc.wait()
        try:
            done = self.wait_until_done(job_id)
            self.assertEqual(done["state"], "SUCCEEDED", json.dumps(done)[:2000] + self.logs())
            self.assertEqual(done["attempts"], 2, done)
            self.assertNotIn(victim, done["workers"])
            evs = events()
            running = [e["state_changed"] for e in evs
                       if "state_changed" in e and e["state_changed"]["state"] == "RUNNING"]
            self.assertEqual(len(running), 2)
            self.assertGreaterEqual(running[1].get("resumed_epoch", 0), 1, running[1])
            warnings = [e["log"]["message"] for e in evs if "log" in e and e["log"]["level"] == "warning"]
            self.assertTrue(any("goes back to the queue" in w for w in warnings), warnings)
            epochs = [e["epoch"]["epoch"] for e in evs if "epoch" in e]
            self.assertEqual(sorted(set(epochs)), [1, 2, 3, 4])
        finally:
            self.start_worker(victim)


class RankFailureTest(unittest.TestCase):
    """A rank that fails for its own reason ends the job with that reason,
    at once: not as "the all-reduce failed", nor after --c10d-timeout-seconds
    (600 here, longer than the test waits)."""

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="ft-rankfailure-")
        self.root = os.path.join(self.tmp, "data")
        self.data = harness.make_imagefolder(os.path.join(self.root, "shapes"), classes=3, train_per_class=20,
                                             val_per_class=5, size=32)
        self.server = harness.Server(os.path.join(self.tmp, "var"), [self.root], local_workers=0).start()
        self.workers = []

    def tearDown(self):
        for w in self.workers:
            w.stop()
        self.server.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def logs(self):
        return "\n".join([self.server.log()] + [f"--- {w.work_dir}\n{w.log()}" for w in self.workers])

    def start_worker(self, name, *flags):
        w = harness.Worker(self.server, os.path.join(self.tmp, name), "--threads=1", "--c10d-host=127.0.0.1",
                           f"--worker-id={name}", "--c10d-ports=29700-29799", "--c10d-timeout-seconds=600", *flags)
        self.workers.append(w)
        return w

    def idle_workers(self, *flags):
        r = self.server.ftctl("validate", *flags, json_output=True)
        return json.loads(r.stdout).get("workers_idle", 0) if r.returncode == 0 else 0

    def run_with_failing_rank_1(self, flags, bad_flags=(), prepare_bad=None, bad_rank=1):
        """The worker that waits first is rank 1, and the one that comes
        later rank 0: rank 0 is the worker whose lease finds the others
        waiting."""
        bad_first = bad_rank == 1
        first = self.start_worker("bad" if bad_first else "good", *(bad_flags if bad_first else ()))
        self.assertTrue(wait_for(lambda: self.idle_workers(*flags) >= 1, 60), self.logs())
        if prepare_bad and bad_first:
            prepare_bad(first)
        r = self.server.ftctl("submit", *flags, "--workers=2", json_output=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        job_id = json.loads(r.stdout)["id"]
        self.start_worker("good" if bad_first else "bad", *(() if bad_first else bad_flags))
        done = wait_for(lambda: (lambda j: j if j["state"] in ("SUCCEEDED", "FAILED", "CANCELLED") else None)(
            json.loads(self.server.ftctl("get", job_id, json_output=True).stdout)), 300, interval=1)
        self.assertIsNotNone(done, self.logs())
        self.assertEqual(done["workers"], ["good", "bad"] if bad_first else ["bad", "good"],
                         json.dumps(done)[:2000])
        self.assertEqual(done["state"], "FAILED", json.dumps(done)[:2000] + self.logs())
        # The job's own failure, not a broken group: no second attempt.
        self.assertEqual(done["attempts"], 1, done)
        print(f"the job's error: {done['error']}", flush=True)
        return done

    def run_with_a_rank_that_cannot_fetch(self, bad_rank):
        # An uploaded dataset, which `bad` must fetch into <work-dir>/datasets:
        # a file stands there, so it cannot, before it ever joins the group.
        r = self.server.ftctl("datasets", "upload", self.data, "--name=shapes", json_output=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        flags = ["--dataset=dataset://shapes", "--backbone=resnet18", "--weights=none", "--image-size=32",
                 "--batch-size=12", "--epochs=1"]
        bad_dir = os.path.join(self.tmp, "bad")
        os.makedirs(bad_dir, exist_ok=True)
        with open(os.path.join(bad_dir, "datasets"), "w") as f:
            f.write("not a folder\n")
        done = self.run_with_failing_rank_1(flags, bad_flags=["--fetch-datasets=always"], bad_rank=bad_rank)
        self.assertIn(f"cannot create {bad_dir}/datasets", done["error"])
        return done

    def test_a_rank_that_cannot_fetch_the_dataset_fails_the_job_with_its_reason(self):
        done = self.run_with_a_rank_that_cannot_fetch(bad_rank=1)
        self.assertIn("rank 1 of 2 (worker bad)", done["error"])

    def test_a_rank_0_that_cannot_fetch_the_dataset_frees_the_others_at_once(self):
        # Rank 0 fails the job itself, and holds its store open for rank 1,
        # which learns why as soon as it reaches the rendezvous, or, when the
        # job has FAILED before it asks for the checkpoint (the lease is
        # gone), from the store all the same.
        self.run_with_a_rank_that_cannot_fetch(bad_rank=0)
        good = self.workers[0]
        ended = wait_for(lambda: "rank ended" in good.log(), 120)
        self.assertTrue(ended, good.log())
        self.assertIn("rank 0 of 2 (worker bad)", good.log())

    def test_a_rank_out_of_memory_fails_the_job_with_its_reason(self):
        # `bad` may take only a little more address space than it holds
        # idle: its first forward pass at 448 px cannot allocate.
        flags = [f"--dataset=file://{self.data}", "--backbone=resnet18", "--weights=none", "--image-size=448",
                 "--batch-size=24", "--epochs=1", "--augment=none", "--cache-features=off"]

        def limit(bad):
            import resource
            with open(f"/proc/{bad.proc.pid}/status") as f:
                vm = next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmSize:"))
            cap = vm + (768 << 20)
            resource.prlimit(bad.proc.pid, resource.RLIMIT_AS, (cap, cap))

        done = self.run_with_failing_rank_1(flags, prepare_bad=limit)
        self.assertIn("rank 1 of 2 (worker bad)", done["error"])
        self.assertIn("allocate", done["error"])


if __name__ == "__main__":
    unittest.main(verbosity=2)
