"""Metrics as an operator sees them: a real Prometheus scrapes a running
finetuned and a worker; after a job, its query API shows the counters moved."""
import json
import os
import shutil
import subprocess
import tempfile
import time
import unittest
import urllib.parse
import urllib.request

import harness

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"


def query(port, expr):
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as r:
        body = json.load(r)
    assert body["status"] == "success", body
    return body["data"]["result"]


def scalar(port, expr):
    result = query(port, expr)
    return float(result[0]["value"][1]) if result else None


@unittest.skipUnless(os.path.exists(PROMETHEUS), "prometheus is not installed (Debian package prometheus)")
class PrometheusTest(unittest.TestCase):
    def test_real_prometheus_sees_jobs_and_images(self):
        tmp = tempfile.mkdtemp(prefix="ft-prom-")
        procs = []
        try:
            root = os.path.join(tmp, "data")
            data = harness.make_imagefolder(os.path.join(root, "shapes"), classes=2,
                                            train_per_class=24, val_per_class=8, size=32)
            server_metrics, worker_metrics, prom_port = (harness.free_port() for _ in range(3))
            server = harness.Server(os.path.join(tmp, "var"), [root], local_workers=0,
                                    extra=[f"--metrics-listen=127.0.0.1:{server_metrics}",
                                           "--log-format=json"]).start()
            worker = subprocess.Popen(
                [harness.WORKER, f"--server={server.address}", "--threads=2",
                 f"--work-dir={tmp}/worker", f"--metrics-listen=127.0.0.1:{worker_metrics}"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(worker)
            config = os.path.join(tmp, "prometheus.yml")
            with open(config, "w") as f:
                f.write(f"""global:
  scrape_interval: 1s
scrape_configs:
  - job_name: finetuned
    static_configs: [{{targets: ['127.0.0.1:{server_metrics}']}}]
  - job_name: finetune-worker
    static_configs: [{{targets: ['127.0.0.1:{worker_metrics}']}}]
""")
            prom = subprocess.Popen(
                [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp}/tsdb",
                 f"--web.listen-address=127.0.0.1:{prom_port}"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(prom)

            def up():
                try:
                    return len([r for r in query(prom_port, "up == 1")]) == 2
                except Exception:
                    return False
            deadline = time.time() + 60
            while time.time() < deadline and not up():
                time.sleep(0.5)
            self.assertTrue(up(), "Prometheus did not scrape both targets")
            before = scalar(prom_port, 'finetune_jobs_finished_total{state="SUCCEEDED"}')
            self.assertEqual(before, 0.0)

            r, events, job = server.submit(f"--dataset=file://{data}", "--backbone=resnet18",
                                           "--epochs=1", "--image-size=32", "--batch-size=8")
            self.assertEqual(r.returncode, 0, r.stderr + server.log())

            def moved():
                finished = scalar(prom_port, 'finetune_jobs_finished_total{state="SUCCEEDED"}')
                images = scalar(prom_port, "finetune_trained_images_total")
                worker_images = scalar(prom_port, "finetune_worker_images_total")
                return finished == 1.0 and images == 48.0 and worker_images == 48.0
            deadline = time.time() + 30
            while time.time() < deadline and not moved():
                time.sleep(0.5)
            self.assertTrue(moved(), query(prom_port, '{__name__=~"finetune_.*total"}'))
            self.assertEqual(scalar(prom_port, "finetune_jobs_submitted_total"), 1.0)
            rpc = query(prom_port, 'finetune_grpc_requests_total{method="/finetune.v1.FineTune/SubmitJob",code="OK"}')
            self.assertTrue(rpc)
            self.assertGreater(scalar(prom_port, "finetune_worker_step_seconds_count"), 0)
            server.stop()
            # JSON log lines carry the job and request ids.
            with open(server.log_path) as f:
                logs = [json.loads(l) for l in f if l.startswith("{")]
            queued = [l for l in logs if l["msg"] == "job queued"]
            self.assertEqual(len(queued), 1, logs)
            self.assertEqual(queued[0]["job_id"], job["id"])
            self.assertTrue(queued[0]["request_id"].startswith("ftctl-"))
            finished = [l for l in logs if l["msg"] == "job finished"]
            self.assertEqual(finished[0]["state"], "SUCCEEDED")
        finally:
            for p in procs:
                p.terminate()
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    unittest.main(verbosity=2)
