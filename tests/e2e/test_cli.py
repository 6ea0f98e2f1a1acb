"""ftctl's command table as a user sees it: `ftctl help` lists every command,
each command has its help, unknown commands and flags are refused with exit
code 2 naming them, and a server that is not listening gives exit code 3."""
import os
import re
import shutil
import subprocess
import tempfile
import unittest

import harness

SUBMIT_FLAGS = [
    "dataset", "backbone", "weights", "freeze-depth", "epochs", "batch-size", "image-size", "lr",
    "optimizer", "val-split", "seed", "name", "priority", "request-id", "follow", "augment",
    "weight-decay", "label-smoothing", "class-weights", "grad-clip", "lr-schedule", "warmup-epochs",
    "lr-step-epochs", "lr-gamma", "momentum", "nesterov", "unfreeze-at", "finetune-freeze-depth",
    "finetune-lr-mult", "early-stopping", "cache-features", "on-bad-image", "export", "color-jitter",
    "rotation", "mean", "std",
]

# Every command, with the flags it takes and the arguments that reach its
# handler.
COMMANDS = {
    "submit": (SUBMIT_FLAGS, ["--dataset=x", "--backbone=resnet18"]),
    "validate": (SUBMIT_FLAGS, ["--dataset=x", "--backbone=resnet18"]),
    "get": ([], ["job-x"]),
    "list": (["limit"], []),
    "watch": (["from"], ["job-x"]),
    "cancel": ([], ["job-x"]),
    "report": (["out"], ["job-x", "--out=out"]),
    "predict": (["top-k"], ["mdl-x", "x.png"]),
    "models list": ([], []),
    "models get": ([], ["mdl-x"]),
    "models download": (["dir", "triton-repo", "name", "force"], ["mdl-x", "--dir=out"]),
    "models delete": ([], ["mdl-x"]),
    "datasets upload": (["name", "sha256", "format"], ["x.tar", "--name=x"]),
    "datasets get": ([], ["x"]),
    "datasets list": ([], []),
    "datasets delete": ([], ["x"]),
    "health": ([], []),
    "auth new-token": (["name", "tenant", "role"], ["--name=a", "--tenant=b", "--role=user"]),
    "help": ([], []),
}


# ftctl runs here: `models download --dir` creates its folder before dialling.
WORK_DIR = tempfile.mkdtemp(prefix="ft-cli-cwd-")


def ftctl(*args, server=None):
    cmd = [harness.FTCTL] + ([f"--server={server}"] if server else []) + list(args)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=WORK_DIR,
                          env={k: v for k, v in os.environ.items() if k != "FTCTL_SERVER"})


def listed_commands(usage):
    """The command names in the usage text: the lowercase words that start
    each line indented by exactly two spaces, under the section headings."""
    names = []
    for line in usage.splitlines():
        if not re.match(r"^  [a-z]", line):
            continue
        words = []
        for word in line.strip().split("  ")[0].split():
            if not re.fullmatch(r"[a-z][a-z-]*", word):
                break
            words.append(word)
        names.append(" ".join(words))
    return names


class HelpTest(unittest.TestCase):
    """Needs no server: help never dials one."""

    @classmethod
    def setUpClass(cls):
        # Nothing listens here, so any command that dials exits 3.
        cls.dead = f"127.0.0.1:{harness.free_port()}"

    def test_usage_lists_every_command(self):
        r = ftctl("help")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("usage: ftctl", r.stdout)
        self.assertEqual(sorted(listed_commands(r.stdout)), sorted(COMMANDS))
        for flag in ("--server ADDR", "--output text|json"):
            self.assertIn(flag, r.stdout)
        # The same text from --help, and from no command at all (exit 2).
        self.assertEqual(ftctl("--help").stdout, r.stdout)
        bare = ftctl()
        self.assertEqual(bare.returncode, 2)
        self.assertEqual(bare.stdout, r.stdout)

    def test_help_submit_shows_usage_and_every_flag(self):
        r = ftctl("help", "submit")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("usage: ftctl", r.stdout)
        self.assertIn("submit --dataset URI --backbone NAME", r.stdout)
        for flag in SUBMIT_FLAGS:
            self.assertRegex(r.stdout, rf"(?m)^  --{re.escape(flag)}\b", flag)
        self.assertEqual(ftctl("submit", "--help", server=self.dead).stdout, r.stdout)

    def test_every_command_has_help(self):
        names = listed_commands(ftctl("help").stdout)
        self.assertTrue(names)
        for name in names:
            with self.subTest(command=name):
                r = ftctl("help", *name.split())
                self.assertEqual(r.returncode, 0, r.stderr)
                self.assertIn(f"ftctl [--server ADDR] [--output text|json] {name}", r.stdout)
                # A summary line after the usage line.
                self.assertGreater(len(r.stdout.strip().splitlines()), 2, r.stdout)
                for flag in COMMANDS[name][0]:
                    self.assertRegex(r.stdout, rf"(?m)^  --{re.escape(flag)}\b", flag)
                h = ftctl(*name.split(), "--help", server=self.dead)
                self.assertEqual((h.returncode, h.stdout), (0, r.stdout), h.stderr)

    def test_group_help(self):
        r = ftctl("help", "models")
        self.assertEqual(r.returncode, 0, r.stderr)
        for sub in ("list", "get", "download", "delete"):
            self.assertIn(f"models {sub}", r.stdout)

    def test_help_unknown_command(self):
        r = ftctl("help", "nope")
        self.assertEqual(r.returncode, 2)
        self.assertIn("'nope'", r.stderr)
        r = ftctl("help", "models", "nope")
        self.assertEqual(r.returncode, 2)
        self.assertIn("models nope", r.stderr)
        r = ftctl("nope", server=self.dead)
        self.assertEqual(r.returncode, 2)
        self.assertIn("'nope'", r.stderr)

    def test_unknown_flag_names_flag_and_command(self):
        # Refused before dialling: exit 2, not 3.
        r = ftctl("submit", "--bogus", "--dataset=x", "--backbone=resnet18", server=self.dead)
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("--bogus", r.stderr)
        self.assertIn("submit", r.stderr)
        for name, (flags, args) in COMMANDS.items():
            with self.subTest(command=name):
                r = ftctl(*name.split(), *args, "--bogus=1", server=self.dead)
                self.assertEqual(r.returncode, 2, r.stderr)
                self.assertIn("--bogus", r.stderr)
                self.assertIn(f"'{name}'", r.stderr)

    def test_documented_flags_are_accepted(self):
        for name, (flags, args) in COMMANDS.items():
            for flag in flags:
                with self.subTest(command=name, flag=flag):
                    r = ftctl(*name.split(), *args, f"--{flag}=1", server=self.dead)
                    self.assertNotIn("unknown flag", r.stderr)

    def test_wrong_arguments_and_missing_flags(self):
        for args in (["get"], ["get", "a", "b"], ["submit", "extra", "--dataset=x", "--backbone=r"],
                     ["predict", "mdl-x"], ["models", "download", "mdl-x"], ["models"],
                     ["datasets", "upload", "x.tar"], ["submit", "--backbone=resnet18"]):
            with self.subTest(args=args):
                r = ftctl(*args, server=self.dead)
                self.assertEqual(r.returncode, 2, r.stderr)
                self.assertIn(args[0], r.stderr)

    def test_server_not_listening_exits_3(self):
        r = ftctl("get", "job-x", server=self.dead)
        self.assertEqual(r.returncode, 3, r.stderr)
        self.assertIn("cannot reach", r.stderr)
        self.assertIn(self.dead, r.stderr)


class DispatchTest(unittest.TestCase):
    """Every row reaches its handler: a real finetuned (no workers) answers."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="ft-cli-")
        cls.root = os.path.join(cls.tmp, "data")
        os.makedirs(cls.root)
        cls.server = harness.Server(os.path.join(cls.tmp, "var"), [cls.root], local_workers=0).start()

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_commands_reach_the_server(self):
        for args, rc, needle in (
                (["health"], 0, "SERVING"),
                (["list"], 0, "JOB"),
                (["models", "list"], 0, "MODEL"),
                (["datasets", "list"], 0, "NAME"),
                (["get", "job-nope"], 2, "NOT_FOUND"),
                (["cancel", "job-nope"], 2, "NOT_FOUND"),
                (["watch", "job-nope", "--from=0"], 2, "NOT_FOUND"),
                (["models", "get", "mdl-nope"], 2, "NOT_FOUND"),
                (["models", "delete", "mdl-nope"], 2, "NOT_FOUND"),
                (["datasets", "delete", "nope"], 2, "NOT_FOUND"),
                (["submit", f"--dataset=file://{self.root}/nope", "--backbone=resnet18"], 2, "NOT_FOUND"),
                (["validate", f"--dataset=file://{self.root}/nope", "--backbone=resnet18"], 2, "NOT_FOUND")):
            with self.subTest(args=args):
                r = self.server.ftctl(*args)
                self.assertEqual(r.returncode, rc, r.stderr)
                self.assertIn(needle, r.stdout + r.stderr)


if __name__ == "__main__":
    try:
        unittest.main(verbosity=2)
    finally:
        shutil.rmtree(WORK_DIR, ignore_errors=True)
