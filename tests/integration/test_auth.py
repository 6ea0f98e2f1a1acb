"""Transport security, tokens and roles, against real processes and real
certificates (made here with openssl): TLS and mTLS, every RPC for every
role against finetuned's own table, Python grpcio over TLS, bad tokens,
SIGHUP reload, the audit log, the auth-failure metric, and a tiny job
trained by local workers that got their credentials from the server.

Needs openssl, and python3-grpcio/python3-protobuf with protoc's
grpc_python_plugin for the Python client part (skipped without them)."""
import base64
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import unittest
import urllib.request

import harness

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
PROTO_DIR = os.path.join(ROOT, "proto")
ROLES = ("admin", "user", "viewer", "worker")


wait_for = harness.wait_for


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(d):
    """A CA, a server certificate for 127.0.0.1/localhost, a client
    certificate, and a second CA that signed nothing of the server's."""
    def ca(name):
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
                "-keyout", f"{name}.key", "-out", f"{name}.crt", cwd=d)

    def leaf(name, signer, ext):
        with open(os.path.join(d, f"{name}.ext"), "w") as f:
            f.write(ext)
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
                "-out", f"{name}.csr", cwd=d)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{signer}.crt", "-CAkey", f"{signer}.key",
                "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.crt", cwd=d)

    ca("ca")
    ca("other-ca")
    leaf("server", "ca", "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
         "extendedKeyUsage=serverAuth,clientAuth\n")
    leaf("client", "ca", "extendedKeyUsage=clientAuth\n")
    return {n: os.path.join(d, n) for n in ("ca.crt", "other-ca.crt", "server.crt", "server.key",
                                              "client.crt", "client.key")}


def new_token(name, tenant, role):
    r = subprocess.run([harness.FTCTL, "--output=json", "auth", "new-token", f"--name={name}",
                        f"--tenant={tenant}", f"--role={role}"], capture_output=True, text=True, check=True)
    out = json.loads(r.stdout)
    return out["token"], out["identity"]


def proto_methods():
    """(service, method, client_streaming, server_streaming) from the .proto files."""
    rpc = re.compile(r"rpc\s+(\w+)\s*\(\s*(stream\s+)?[\w.]+\s*\)\s*returns\s*\(\s*(stream\s+)?[\w.]+\s*\)")
    out = []
    for name, service in (("finetune.proto", "FineTune"), ("worker.proto", "WorkerGateway")):
        with open(os.path.join(PROTO_DIR, "finetune", "v1", name)) as f:
            text = f.read()
        body = text[text.index(f"service {service}"):]
        body = body[:body.index("\n}")]
        for m in rpc.finditer(body):
            out.append((service, m.group(1), bool(m.group(2)), bool(m.group(3))))
    return out


def have_python_grpc():
    try:
        import grpc  # noqa: F401
        import google.protobuf  # noqa: F401
    except ImportError:
        return False
    return shutil.which("protoc") is not None and os.path.exists("/usr/bin/grpc_python_plugin")


class AuthTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="ft-auth-")
        cls.pki = make_pki(cls.tmp)
        cls.tokens, entries = {}, []
        for role in ROLES:
            token, identity = new_token(f"{role}-1", "vision", role)
            cls.tokens[role] = token
            entries.append(identity)
            with open(os.path.join(cls.tmp, f"{role}.token"), "w") as f:
                f.write(token + "\n")
        cls.entries = entries
        cls.auth_file = os.path.join(cls.tmp, "auth.json")
        cls.write_auth(entries)
        cls.audit = os.path.join(cls.tmp, "audit.log")
        cls.root = os.path.join(cls.tmp, "data")
        cls.data = harness.make_imagefolder(os.path.join(cls.root, "shapes"), classes=2, train_per_class=12,
                                            val_per_class=4, size=32)
        cls.metrics_port = harness.free_port()
        cls.server = harness.Server(
            os.path.join(cls.tmp, "var"), [cls.root], tls_cert=cls.pki["server.crt"],
            tls_key=cls.pki["server.key"], auth_file=cls.auth_file,
            extra=[f"--audit-log={cls.audit}", f"--metrics-listen=127.0.0.1:{cls.metrics_port}"],
            client_args=cls.as_role("user")).start()

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    @classmethod
    def write_auth(cls, entries, raw=None):
        tmp = cls.auth_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(raw if raw is not None else json.dumps({"identities": entries}, indent=1))
        os.replace(tmp, cls.auth_file)

    @classmethod
    def as_role(cls, role):
        return [f"--tls-ca={cls.pki['ca.crt']}", f"--token-file={os.path.join(cls.tmp, role + '.token')}"]

    def ftctl_as(self, role, *args, **kw):
        return self.server.ftctl(*args, client_args=self.as_role(role), **kw)

    # --- transport ----------------------------------------------------------
    def test_plaintext_against_tls_is_unreachable_with_a_hint(self):
        r = self.server.ftctl("list", client_args=[f"--token-file={os.path.join(self.tmp, 'user.token')}"],
                              timeout=120)
        self.assertEqual(r.returncode, 3, r.stderr)
        self.assertIn("--tls-ca", r.stderr)

    def test_a_client_that_does_not_trust_the_ca_fails(self):
        r = self.server.ftctl("list", client_args=[f"--tls-ca={self.pki['other-ca.crt']}",
                                                   f"--token-file={os.path.join(self.tmp, 'user.token')}"],
                              timeout=120)
        self.assertEqual(r.returncode, 3, r.stderr)
        self.assertIn("--tls-ca", r.stderr)

    def test_tls_and_token_work_and_health_needs_no_token(self):
        self.assertEqual(self.ftctl_as("viewer", "list").returncode, 0)
        r = self.server.ftctl("health", client_args=[f"--tls-ca={self.pki['ca.crt']}"])
        self.assertEqual(r.returncode, 0, r.stderr)
        r = self.server.ftctl("list", client_args=[f"--tls-ca={self.pki['ca.crt']}"])
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("UNAUTHENTICATED", r.stderr)
        env = dict(os.environ, FTCTL_TOKEN=self.tokens["viewer"])
        r = self.server.ftctl("list", client_args=[f"--tls-ca={self.pki['ca.crt']}"], env=env)
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_non_loopback_without_auth_refuses_to_start(self):
        r = subprocess.run([harness.FINETUNED, "--listen=0.0.0.0:0", "--local-workers=0",
                            f"--data-dir={os.path.join(self.tmp, 'exposed')}"],
                           capture_output=True, text=True, timeout=60)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("--insecure", r.stderr)
        self.assertIn("--auth-file", r.stderr)

    def test_a_bad_auth_file_is_refused_at_start_with_the_reason(self):
        bad = os.path.join(self.tmp, "bad-auth.json")
        with open(bad, "w") as f:
            json.dump({"identities": [{"name": "x", "tenant": "t", "role": "root", "token_sha256": "0" * 64}]}, f)
        r = subprocess.run([harness.FINETUNED, "--listen=127.0.0.1:0", "--local-workers=0",
                            f"--data-dir={os.path.join(self.tmp, 'bad')}", f"--auth-file={bad}"],
                           capture_output=True, text=True, timeout=60)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("identities[0].role", r.stderr)

    def test_mtls_requires_a_client_certificate(self):
        server = harness.Server(os.path.join(self.tmp, "var-mtls"), [self.root], local_workers=0,
                                tls_cert=self.pki["server.crt"], tls_key=self.pki["server.key"],
                                tls_client_ca=self.pki["ca.crt"], auth_file=self.auth_file).start()
        try:
            base = self.as_role("viewer")
            r = server.ftctl("list", client_args=base, timeout=120)
            self.assertEqual(r.returncode, 3, r.stderr)
            r = server.ftctl("list", client_args=base + [f"--tls-cert={self.pki['client.crt']}",
                                                         f"--tls-key={self.pki['client.key']}"])
            self.assertEqual(r.returncode, 0, r.stderr)
        finally:
            server.stop()

    # --- roles ----------------------------------------------------------------
    def table(self):
        r = subprocess.run([harness.FINETUNED, "--print-auth-table"], capture_output=True, text=True, check=True)
        rows = {}
        for line in r.stdout.splitlines():
            method, roles = line.split()[:2]
            rows[method] = set(roles.split(","))
        return rows

    @unittest.skipUnless(have_python_grpc(), "python3-grpcio, python3-protobuf or grpc_python_plugin missing")
    def test_every_rpc_for_every_role_matches_the_table(self):
        import grpc
        table = self.table()
        methods = proto_methods()
        self.assertGreaterEqual(len(methods), 22)
        with open(self.pki["ca.crt"], "rb") as f:
            creds = grpc.ssl_channel_credentials(root_certificates=f.read())
        channel = grpc.secure_channel(self.server.address, creds)

        def call(service, name, cs, ss, metadata):
            # Empty messages: each allowed call fails on its arguments (no
            # job is leased, nothing is deleted), each refused one on auth.
            path = f"/finetune.v1.{service}/{name}"
            kind = {(False, False): channel.unary_unary, (False, True): channel.unary_stream,
                    (True, False): channel.stream_unary, (True, True): channel.stream_stream}[(cs, ss)]
            rpc = kind(path)
            request = iter([]) if cs else b""
            try:
                result = rpc(request, metadata=metadata, timeout=30)
                if ss:
                    list(result)
                return grpc.StatusCode.OK
            except grpc.RpcError as e:
                return e.code()

        checked = 0
        for service, name, cs, ss in methods:
            path = f"/finetune.v1.{service}/{name}"
            self.assertIn(path, table, f"{path} is not in --print-auth-table")
            self.assertEqual(call(service, name, cs, ss, ()), grpc.StatusCode.UNAUTHENTICATED, path)
            for role in ROLES:
                code = call(service, name, cs, ss, (("authorization", f"Bearer {self.tokens[role]}"),))
                if role in table[path]:
                    self.assertNotIn(code, (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED),
                                     f"{path} as {role}")
                else:
                    self.assertEqual(code, grpc.StatusCode.PERMISSION_DENIED, f"{path} as {role}")
                checked += 1
        self.assertEqual(checked, len(methods) * len(ROLES))
        # The design's roles, as the table must state them.
        self.assertEqual(table["/finetune.v1.FineTune/SubmitJob"], {"admin", "user"})
        self.assertEqual(table["/finetune.v1.FineTune/DownloadModel"], {"admin", "user", "viewer"})
        self.assertEqual(table["/finetune.v1.WorkerGateway/LeaseJob"], {"admin", "worker"})
        channel.close()

    @unittest.skipUnless(have_python_grpc(), "python3-grpcio, python3-protobuf or grpc_python_plugin missing")
    def test_python_grpc_stubs_over_tls_with_a_token(self):
        import grpc
        out = os.path.join(self.tmp, "py")
        os.makedirs(out, exist_ok=True)
        subprocess.run(["protoc", f"-I{PROTO_DIR}", f"--python_out={out}", f"--grpc_out={out}",
                        "--plugin=protoc-gen-grpc=/usr/bin/grpc_python_plugin",
                        "finetune/v1/finetune.proto", "finetune/v1/worker.proto"], check=True)
        r = subprocess.run(["/usr/bin/python3", "-c", f"""
import sys, grpc
sys.path.insert(0, {out!r})
from finetune.v1 import finetune_pb2, finetune_pb2_grpc
creds = grpc.ssl_channel_credentials(open({self.pki['ca.crt']!r}, 'rb').read())
stub = finetune_pb2_grpc.FineTuneStub(grpc.secure_channel({self.server.address!r}, creds))
jobs = stub.ListJobs(finetune_pb2.ListJobsRequest(), metadata=[('authorization', 'Bearer {self.tokens['viewer']}')],
                     timeout=30)
print('jobs', len(jobs.jobs))
try:
    stub.SubmitJob(finetune_pb2.SubmitJobRequest(), metadata=[('authorization', 'Bearer {self.tokens['viewer']}')],
                   timeout=30)
except grpc.RpcError as e:
    print(e.code().name)
"""], capture_output=True, text=True, timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("jobs ", r.stdout)
        self.assertIn("PERMISSION_DENIED", r.stdout)

    def test_random_and_oversized_authorization_is_unauthenticated(self):
        # ftctl sends "Bearer <token>": random and oversized tokens.
        for value in [base64.urlsafe_b64encode(os.urandom(n)).decode().rstrip("=") for n in (1, 32, 200)] + \
                     ["x" * 5000]:
            r = self.server.ftctl("list", client_args=[f"--tls-ca={self.pki['ca.crt']}", f"--token={value}"])
            self.assertEqual(r.returncode, 2, f"{value[:20]}: {r.stderr}")
            self.assertIn("UNAUTHENTICATED", r.stderr)
        # Whole header values no ftctl would send, through grpcio.
        if have_python_grpc():
            import grpc
            with open(self.pki["ca.crt"], "rb") as f:
                channel = grpc.secure_channel(self.server.address, grpc.ssl_channel_credentials(f.read()))
            rpc = channel.unary_unary("/finetune.v1.FineTune/ListJobs")
            for value in ["Bearer " + "y" * 6000, "Bearer", "Basic Zm9vOmJhcg==", self.tokens["admin"],
                          "Bearer  " + self.tokens["admin"] + "x"]:
                with self.assertRaises(grpc.RpcError) as e:
                    rpc(b"", metadata=(("authorization", value),), timeout=30)
                self.assertEqual(e.exception.code(), grpc.StatusCode.UNAUTHENTICATED, value[:20])
            channel.close()
        # Past gRPC's own metadata limit the call fails before us; the server stays up.
        self.server.ftctl("list", client_args=[f"--tls-ca={self.pki['ca.crt']}", f"--token={'z' * 100000}"])
        self.assertIsNone(self.server.proc.poll())
        self.assertEqual(self.ftctl_as("viewer", "list").returncode, 0)
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10).read().decode()
        m = re.search(r'finetune_auth_failures_total\{reason="unknown_token"\} (\d+)', metrics)
        self.assertTrue(m and int(m.group(1)) >= 3, metrics[-2000:])
        self.assertIn('finetune_auth_failures_total{reason="malformed"}', metrics)

    # --- reload ---------------------------------------------------------------
    def test_sighup_revokes_and_a_bad_file_keeps_the_old_one(self):
        try:
            self.assertEqual(self.ftctl_as("viewer", "list").returncode, 0)
            self.write_auth([e for e in self.entries if e["role"] != "viewer"])
            self.server.proc.send_signal(signal.SIGHUP)
            r = wait_for(lambda: (lambda r: r if r.returncode == 2 else None)(self.ftctl_as("viewer", "list")), 20)
            self.assertIsNotNone(r, "the revoked token still works")
            self.assertIn("UNAUTHENTICATED", r.stderr)
            self.write_auth(None, raw='{"identities": [')
            self.server.proc.send_signal(signal.SIGHUP)
            self.assertTrue(wait_for(lambda: "not reloaded" in self.server.log(), 20), self.server.log())
            self.assertEqual(self.ftctl_as("admin", "list").returncode, 0)
            self.assertEqual(self.ftctl_as("viewer", "list").returncode, 2)
        finally:
            self.write_auth(self.entries)
            self.server.proc.send_signal(signal.SIGHUP)
            wait_for(lambda: self.ftctl_as("viewer", "list").returncode == 0, 20)

    # --- local workers, tools, audit -------------------------------------------
    def test_local_workers_train_over_tls_with_auth_and_the_audit_log(self):
        spec = [f"--dataset=file://{self.data}", "--backbone=resnet18", "--image-size=32", "--epochs=1",
                "--batch-size=8"]
        r = self.ftctl_as("viewer", "submit", *spec)
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("PERMISSION_DENIED", r.stderr)
        # validate runs a finetune-worker --tool process on the server.
        r = self.ftctl_as("user", "validate", *spec, timeout=300)
        self.assertEqual(r.returncode, 0, r.stderr)
        r, _, job = self.server.submit(*spec, timeout=600)
        self.assertEqual(r.returncode, 0, r.stderr + self.server.log())
        self.assertEqual(job["state"], "SUCCEEDED", job)
        out = os.path.join(self.tmp, "model")
        r = self.ftctl_as("viewer", "models", "download", job["model_id"], f"--dir={out}")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue(os.path.exists(os.path.join(out, "model.pt")))
        with open(self.audit) as f:
            text = f.read()
        lines = [json.loads(l) for l in text.splitlines()]
        submits = [l for l in lines if l["rpc"] == "SubmitJob"]
        self.assertIn({"identity": "user-1", "tenant": "vision", "role": "user", "object": job["id"], "code": "OK"},
                      [{k: l[k] for k in ("identity", "tenant", "role", "object", "code")} for l in submits])
        self.assertTrue(any(l["identity"] == "viewer-1" and l["code"] == "PERMISSION_DENIED" for l in submits))
        self.assertTrue(any(l["rpc"] == "RunJob" and l["identity"] == "local-workers" and l["object"] == job["id"]
                            for l in lines), lines)
        for token in self.tokens.values():
            self.assertNotIn(token, text)
        self.assertTrue(all(l["time"].endswith("Z") for l in lines))


if __name__ == "__main__":
    unittest.main(verbosity=2)
