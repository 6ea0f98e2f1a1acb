"""Generates the package's gRPC stubs at build time.

protoc and grpc_python_plugin (Debian: protobuf-compiler, protobuf-compiler-grpc,
and libprotobuf-dev for google/protobuf/timestamp.proto) compile
proto/finetune/v1/finetune.proto into finetune/v1/ of the build, so that the
generated `from finetune.v1 import finetune_pb2` is this package's own
subpackage. Nothing generated is committed: a regular build writes only into
the build directory; an editable install (pip install -e) writes finetune/v1/
into the source tree, which .gitignore covers.

Where the .proto files are: $FT_PROTO_DIR, else ../../proto (the repository).
$FT_PROTOC and $FT_GRPC_PYTHON_PLUGIN override the tools.
"""
import os
import shutil
import subprocess

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO = "finetune/v1/finetune.proto"
STUBS = ("finetune_pb2.py", "finetune_pb2.pyi", "finetune_pb2_grpc.py", "__init__.py")
APT_HINT = "on Debian: apt install protobuf-compiler protobuf-compiler-grpc libprotobuf-dev"


def proto_dir():
    for d in (os.environ.get("FT_PROTO_DIR"), os.path.join(HERE, "..", "..", "proto")):
        if d and os.path.isfile(os.path.join(d, PROTO)):
            return os.path.abspath(d)
    raise SystemExit(f"finetune: cannot find {PROTO}: build from the finetuned repository "
                     "(client/python next to proto/) or set FT_PROTO_DIR to the folder holding finetune/v1/")


def tool(env, name, fallback):
    path = os.environ.get(env) or shutil.which(name) or fallback
    if not path or not os.access(path, os.X_OK):
        raise SystemExit(f"finetune: {name} not found ({APT_HINT}), or set {env}")
    return path


def generate(out_root):
    """Writes finetune/v1/{finetune_pb2,finetune_pb2_grpc}.py (and .pyi) under out_root."""
    protoc = tool("FT_PROTOC", "protoc", None)
    plugin = tool("FT_GRPC_PYTHON_PLUGIN", "grpc_python_plugin", "/usr/bin/grpc_python_plugin")
    os.makedirs(os.path.join(out_root, "finetune", "v1"), exist_ok=True)
    r = subprocess.run([protoc, f"--proto_path={proto_dir()}", f"--python_out={out_root}",
                        f"--pyi_out={out_root}", f"--grpc_out={out_root}",
                        f"--plugin=protoc-gen-grpc={plugin}", PROTO], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"finetune: protoc failed ({APT_HINT}):\n{r.stderr}")
    with open(os.path.join(out_root, "finetune", "v1", "__init__.py"), "w") as f:
        f.write('"""Generated at build time from proto/finetune/v1/finetune.proto."""\n')


class BuildPyWithStubs(build_py):
    def run(self):
        super().run()
        generate(HERE if getattr(self, "editable_mode", False) else self.build_lib)

    def get_outputs(self, include_bytecode=1):
        if getattr(self, "editable_mode", False):
            return super().get_outputs(include_bytecode)
        stubs = [os.path.join(self.build_lib, "finetune", "v1", s) for s in STUBS]
        return super().get_outputs(include_bytecode) + stubs


setup(cmdclass={"build_py": BuildPyWithStubs})
