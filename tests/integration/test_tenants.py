"""Tenants against a real finetuned with --auth-file (loopback, no TLS) and a
real local worker: two tenants (vision, audio) and an admin. Each tenant
trains a tiny job and uploads a dataset under the same name; each sees only
its own jobs, models and datasets; every RPC that names another tenant's
object is NOT_FOUND with the very message a missing id gets; model:// of
another tenant is NOT_FOUND at submit; the admin lists everything and
filters with --tenant; an identity's dataset_roots replace the server's;
and quotas are RESOURCE_EXHAUSTED with the numbers."""
import json
import os
import shutil
import subprocess
import tempfile
import unittest
import urllib.request

import harness
from test_auth import new_token


def tar_of(src, dst):
    subprocess.run(["tar", "-C", src, "-czf", dst, "."], check=True)
    return dst


class TenantsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="ft-tenants-")
        cls.root = os.path.join(cls.tmp, "data")
        # The server may read all of data/; audio's identity only data/audio.
        cls.vision_data = harness.make_imagefolder(os.path.join(cls.root, "vision", "shapes"), classes=2,
                                                   train_per_class=12, val_per_class=4, size=32)
        cls.audio_data = harness.make_imagefolder(os.path.join(cls.root, "audio", "shapes"), classes=3,
                                                  train_per_class=8, val_per_class=4, size=32, seed=1)
        cls.image = os.path.join(cls.vision_data, "val", sorted(os.listdir(os.path.join(cls.vision_data, "val")))[0])
        cls.image = os.path.join(cls.image, sorted(os.listdir(cls.image))[0])
        entries = []
        cls.token_files = {}
        for name, tenant, role, extra in (
                ("vision-user", "vision", "user", {}),
                ("audio-user", "audio", "user", {"dataset_roots": [os.path.join(cls.root, "audio")]}),
                ("ops", "ops", "admin", {}),
                ("quota-user", "quota", "user", {"quota": {"max_queued_jobs": 1, "max_storage_bytes": 100}})):
            token, identity = new_token(name, tenant, role)
            identity.update(extra)
            entries.append(identity)
            path = os.path.join(cls.tmp, name + ".token")
            with open(path, "w") as f:
                f.write(token + "\n")
            cls.token_files[name] = path
        cls.auth_file = os.path.join(cls.tmp, "auth.json")
        with open(cls.auth_file, "w") as f:
            json.dump({"identities": entries}, f)
        cls.audit = os.path.join(cls.tmp, "audit.log")
        cls.metrics_port = harness.free_port()
        cls.server = harness.Server(os.path.join(cls.tmp, "var"), [cls.root], auth_file=cls.auth_file,
                                    extra=[f"--audit-log={cls.audit}",
                                           f"--metrics-listen=127.0.0.1:{cls.metrics_port}"]).start()
        # Uploads with the same name in both tenants, different bytes.
        cls.vision_tar = tar_of(cls.vision_data, os.path.join(cls.tmp, "vision.tar.gz"))
        cls.audio_tar = tar_of(cls.audio_data, os.path.join(cls.tmp, "audio.tar.gz"))
        for who, tar in (("vision-user", cls.vision_tar), ("audio-user", cls.audio_tar)):
            r = cls.ftctl(who, "datasets", "upload", tar, "--name=pets")
            assert r.returncode == 0, r.stderr
        r = cls.ftctl("vision-user", "datasets", "upload", cls.vision_tar, "--name=only-vision")
        assert r.returncode == 0, r.stderr
        harness.wait_for(lambda: all(d["state"] == "DATASET_READY"
                                     for who in ("vision-user", "audio-user") for d in cls.datasets(who)), 120)
        spec = ["--backbone=resnet18", "--image-size=32", "--epochs=1", "--batch-size=8"]
        cls.jobs = {}
        for who, dataset in (("vision-user", "dataset://pets"), ("audio-user", f"file://{cls.audio_data}")):
            r = cls.ftctl(who, "submit", f"--dataset={dataset}", *spec, "--follow", json_output=True, timeout=900)
            lines = [json.loads(l) for l in r.stdout.splitlines() if l.strip()]
            assert r.returncode == 0 and lines, r.stderr + cls.server.log()
            cls.jobs[who] = lines[-1]
            assert cls.jobs[who]["state"] == "SUCCEEDED", cls.jobs[who]

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    @classmethod
    def ftctl(cls, who, *args, server=None, **kw):
        return (server or cls.server).ftctl(*args, client_args=[f"--token-file={cls.token_files[who]}"], **kw)

    @classmethod
    def datasets(cls, who, *flags):
        r = cls.ftctl(who, "datasets", "list", *flags, json_output=True)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout).get("datasets", [])

    def listed(self, who, *args):
        r = self.ftctl(who, *args, json_output=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        out = json.loads(r.stdout)
        return next(iter(out.values()), []) if out else []

    def assert_hidden(self, args, real, missing):
        """`args` with `real` (another tenant's object) fails exactly as with
        `missing` (no such object): NOT_FOUND and the same words."""
        seen = self.ftctl("audio-user", *[a.replace("{}", real) for a in args])
        none = self.ftctl("audio-user", *[a.replace("{}", missing) for a in args])
        self.assertNotEqual(seen.returncode, 0, seen.stdout)
        self.assertIn("NOT_FOUND", seen.stderr, args)
        self.assertEqual(seen.returncode, none.returncode, args)
        self.assertEqual(seen.stderr.replace(real, missing), none.stderr, args)

    def test_jobs_models_and_datasets_carry_their_tenant(self):
        self.assertEqual(self.jobs["vision-user"]["tenant"], "vision")
        self.assertEqual(self.jobs["audio-user"]["tenant"], "audio")
        models = {m["id"]: m for m in self.listed("ops", "models", "list")}
        self.assertEqual(models[self.jobs["vision-user"]["model_id"]]["tenant"], "vision")
        self.assertEqual(models[self.jobs["audio-user"]["model_id"]]["tenant"], "audio")

    def test_each_tenant_lists_only_its_own(self):
        for who, other in (("vision-user", "audio-user"), ("audio-user", "vision-user")):
            jobs = self.listed(who, "list")
            self.assertEqual([j["id"] for j in jobs], [self.jobs[who]["id"]])
            models = self.listed(who, "models", "list")
            self.assertEqual([m["id"] for m in models], [self.jobs[who]["model_id"]])
            self.assertNotIn(self.jobs[other]["model_id"], [m["id"] for m in models])
        vision = {d["name"]: d for d in self.datasets("vision-user")}
        audio = {d["name"]: d for d in self.datasets("audio-user")}
        self.assertEqual(set(vision), {"pets", "only-vision"})
        self.assertEqual(set(audio), {"pets"})
        self.assertEqual(vision["pets"]["num_classes"], 2)
        self.assertEqual(audio["pets"]["num_classes"], 3)
        self.assertNotEqual(vision["pets"]["sha256"], audio["pets"]["sha256"])
        # A non-admin may not list another tenant.
        r = self.ftctl("audio-user", "list", "--tenant=vision")
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("PERMISSION_DENIED", r.stderr)

    def test_admin_lists_every_tenant_and_filters(self):
        jobs = self.listed("ops", "list")
        self.assertEqual({j["tenant"] for j in jobs}, {"vision", "audio"})
        only = self.listed("ops", "list", "--tenant=vision")
        self.assertEqual([j["id"] for j in only], [self.jobs["vision-user"]["id"]])
        self.assertEqual({m["tenant"] for m in self.listed("ops", "models", "list", "--tenant=audio")}, {"audio"})
        names = sorted((d["tenant"], d["name"]) for d in self.datasets("ops"))
        self.assertEqual(names, [("audio", "pets"), ("vision", "only-vision"), ("vision", "pets")])
        self.assertEqual([d["name"] for d in self.datasets("ops", "--tenant=audio")], ["pets"])
        self.assertEqual(self.listed("ops", "list", "--tenant=nobody"), [])
        r = self.ftctl("ops", "list")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue(r.stdout.startswith("TENANT"), r.stdout)
        self.assertIn("vision", r.stdout)
        # The admin can read another tenant's job by id.
        r = self.ftctl("ops", "get", self.jobs["vision-user"]["id"])
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_admin_reaches_another_tenants_dataset_by_name(self):
        """Dataset names are per tenant, so get and delete take --tenant; only
        an admin may name another tenant."""
        r = self.ftctl("vision-user", "datasets", "upload", self.vision_tar, "--name=scratch")
        self.assertEqual(r.returncode, 0, r.stderr)
        # Without --tenant the admin looks in its own tenant, which has none.
        r = self.ftctl("ops", "datasets", "get", "scratch")
        self.assertEqual(r.returncode, 2, r.stdout)
        self.assertIn("NOT_FOUND", r.stderr)
        r = self.ftctl("ops", "datasets", "get", "scratch", "--tenant=vision", json_output=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        got = json.loads(r.stdout)
        self.assertEqual((got["tenant"], got["name"]), ("vision", "scratch"))
        r = self.ftctl("ops", "datasets", "get", "scratch", "--tenant=vision")
        self.assertIn("tenant    vision", r.stdout)
        # A user may not name another tenant, for get or delete.
        for verb in ("get", "delete"):
            r = self.ftctl("audio-user", "datasets", verb, "scratch", "--tenant=vision")
            self.assertEqual(r.returncode, 2, r.stdout)
            self.assertIn("PERMISSION_DENIED", r.stderr)
            self.assertIn("only an admin may name another tenant", r.stderr)
        r = self.ftctl("ops", "datasets", "delete", "scratch", "--tenant=vision")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertNotIn("scratch", [d["name"] for d in self.datasets("vision-user")])
        self.assertIn("pets", [d["name"] for d in self.datasets("vision-user")])

    def test_every_rpc_naming_another_tenants_object_is_not_found(self):
        job, model = self.jobs["vision-user"]["id"], self.jobs["vision-user"]["model_id"]
        for args in (["get", "{}"], ["cancel", "{}"], ["watch", "{}"]):
            self.assert_hidden(args, job, "job-000000000000")
        out = os.path.join(self.tmp, "stolen")
        for args in (["models", "get", "{}"], ["models", "download", "{}", f"--dir={out}"],
                     ["predict", "{}", self.image], ["models", "delete", "{}"]):
            self.assert_hidden(args, model, "mdl-000000000000")
        self.assertFalse(os.path.exists(os.path.join(out, "model.pt")))
        self.assert_hidden(["datasets", "get", "{}"], "only-vision", "no-such-dataset")
        self.assert_hidden(["datasets", "delete", "{}"], "only-vision", "no-such-dataset")
        spec = ["--backbone=resnet18", "--image-size=32", "--epochs=1"]
        self.assert_hidden(["submit", "--dataset=dataset://{}", *spec], "only-vision", "no-such-dataset")
        self.assert_hidden(["submit", f"--dataset=file://{self.audio_data}", "--weights=model://{}", *spec],
                           model, "mdl-000000000000")
        # Still there for their owner.
        self.assertEqual(self.ftctl("vision-user", "models", "get", model).returncode, 0)
        self.assertIn("only-vision", [d["name"] for d in self.datasets("vision-user")])
        r = self.ftctl("vision-user", "get", job, json_output=True)
        self.assertEqual(json.loads(r.stdout)["state"], "SUCCEEDED")
        # The audit log names the object of the refused delete and cancel.
        with open(self.audit) as f:
            lines = [json.loads(l) for l in f if l.strip()]
        refused = {(l["rpc"], l["object"]) for l in lines if l["tenant"] == "audio" and l["code"] == "NOT_FOUND"}
        self.assertIn(("CancelJob", job), refused)
        self.assertIn(("DeleteModel", model), refused)
        self.assertIn(("DeleteDataset", "only-vision"), refused)

    def test_job_counters_carry_the_tenant(self):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as r:
            text = r.read().decode()
        for tenant in ("vision", "audio"):
            self.assertIn(f'finetune_jobs_submitted_total{{tenant="{tenant}"}} 1', text)
            self.assertIn(f'finetune_jobs_finished_total{{state="SUCCEEDED",tenant="{tenant}"}} 1', text)
            self.assertIn(f'finetune_jobs_finished_total{{state="FAILED",tenant="{tenant}"}} 0', text)

    def test_identity_dataset_roots_replace_the_servers(self):
        # In the server's roots, not in audio's own.
        r = self.ftctl("audio-user", "submit", f"--dataset=file://{self.vision_data}", "--backbone=resnet18",
                       "--image-size=32", "--epochs=1")
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("PERMISSION_DENIED", r.stderr)
        # The same path is fine for vision, which has no roots of its own.
        r = self.ftctl("vision-user", "validate", f"--dataset=file://{self.vision_data}", "--backbone=resnet18",
                       "--image-size=32", "--epochs=1", timeout=300)
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_quotas_are_resource_exhausted_with_the_numbers(self):
        server = harness.Server(os.path.join(self.tmp, "var-quota"), [self.root], local_workers=0,
                                auth_file=self.auth_file).start()
        try:
            spec = [f"--dataset=file://{self.vision_data}", "--backbone=resnet18", "--image-size=32", "--epochs=1"]
            first = self.ftctl("quota-user", "submit", *spec, server=server, json_output=True)
            self.assertEqual(first.returncode, 0, first.stderr)
            r = self.ftctl("quota-user", "submit", *spec, server=server)
            self.assertEqual(r.returncode, 2, r.stderr)
            self.assertIn("RESOURCE_EXHAUSTED", r.stderr)
            self.assertIn("tenant quota has 1 queued or running jobs, its quota max_queued_jobs is 1", r.stderr)
            # Another tenant is not held by quota's count.
            self.assertEqual(self.ftctl("vision-user", "submit", *spec, server=server).returncode, 0)
            # A cancelled job frees its place.
            job = json.loads(first.stdout)["id"]
            self.assertEqual(self.ftctl("quota-user", "cancel", job, server=server).returncode, 0)
            r = self.ftctl("quota-user", "submit", *spec, server=server)
            self.assertEqual(r.returncode, 0, r.stderr)
            # Storage: an upload that would pass max_storage_bytes.
            size = os.path.getsize(self.vision_tar)
            r = self.ftctl("quota-user", "datasets", "upload", self.vision_tar, "--name=big", server=server)
            self.assertEqual(r.returncode, 2, r.stderr)
            self.assertIn("RESOURCE_EXHAUSTED", r.stderr)
            self.assertIn(f"tenant quota stores 0 bytes of models and datasets and this adds {size}, "
                          "its quota max_storage_bytes is 100", r.stderr)
        finally:
            server.stop()


if __name__ == "__main__":
    unittest.main(verbosity=2)
