#!/usr/bin/python3
"""The walls between the sides of the code base, checked from the sources.

- common/ includes only common/ and the generated proto code;
- server/, worker/ and client/ include common/, the proto code and
  themselves, never each other;
- the same holds for the libraries each CMake target links;
- the worker's engine (backbones, weights, data, train, export) links no gRPC
  and includes no gRPC header;
- proto/ holds only .proto files and their CMake.

Run by CTest as unit.walls; it reads files only.
"""
import os
import re
import sys
import unittest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SIDES = ("common", "server", "worker", "client")
# Who may include or link whom, by top-level folder.
ALLOWED = {
    "common": {"common"},
    "server": {"common", "server"},
    "worker": {"common", "worker"},
    "client": {"common", "client"},
}
# The worker's engine: LibTorch and OpenCV, no gRPC.
ENGINE_DIRS = ("worker/backbones", "worker/weights", "worker/data", "worker/train", "worker/export")
GRPC_LINKS = re.compile(r"^(gRPC::|ft::proto_grpc$|ft_proto_grpc$|ft::grpc_status$|ft::transfer$|ft::agent$)")

INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)
SOURCE_EXT = (".h", ".cc", ".c", ".hpp", ".cpp")


def sources(top):
    for base, dirs, files in os.walk(os.path.join(ROOT, top)):
        dirs[:] = [d for d in dirs if d not in ("python", "__pycache__", "node_modules")]
        for f in files:
            if f.endswith(SOURCE_EXT):
                yield os.path.join(base, f)


def rel(path):
    return os.path.relpath(path, ROOT)


def cmake_files():
    for top in ("proto",) + SIDES:
        for base, dirs, files in os.walk(os.path.join(ROOT, top)):
            if "CMakeLists.txt" in files:
                yield os.path.join(base, "CMakeLists.txt")


def strip_comments(text):
    return re.sub(r"#[^\n]*", "", text)


def cmake_targets():
    """target name -> (top-level folder, directory) for every project target."""
    targets = {}
    for path in cmake_files():
        text = strip_comments(open(path).read())
        d = os.path.dirname(rel(path))
        top = d.split(os.sep)[0]
        for m in re.finditer(r"add_(?:library|executable)\(\s*([\w.:-]+)\s+(ALIAS\s+([\w:.-]+))?", text):
            name = m.group(1)
            if m.group(3):  # add_library(ft::x ALIAS ft_x)
                targets[name] = targets.get(m.group(3), (top, d))
            else:
                targets[name] = (top, d)
    return targets


def cmake_links():
    """(target, [libraries]) for every target_link_libraries call."""
    out = []
    for path in cmake_files():
        text = strip_comments(open(path).read())
        for m in re.finditer(r"target_link_libraries\(\s*([\w.:-]+)([^)]*)\)", text, re.S):
            libs = [w for w in m.group(2).split() if w not in ("PUBLIC", "PRIVATE", "INTERFACE")]
            out.append((m.group(1), libs, rel(path)))
    return out


class WallsTest(unittest.TestCase):
    def test_includes_stay_inside_their_walls(self):
        broken = []
        for side in SIDES:
            for path in sources(side):
                for inc in INCLUDE.findall(open(path, errors="replace").read()):
                    top = inc.split("/")[0]
                    if top in ("proto",):
                        broken.append(f"{rel(path)} includes {inc}: proto/ holds no C++ code")
                    elif top in SIDES and top not in ALLOWED[side]:
                        broken.append(f"{rel(path)} includes {inc}")
        self.assertEqual(broken, [], "\n".join(broken))

    def test_links_stay_inside_their_walls(self):
        targets = cmake_targets()
        self.assertIn("ft::util", targets)
        self.assertEqual(targets["ft::util"][0], "common")
        broken = []
        for target, libs, where in cmake_links():
            if target not in targets:
                continue
            side = targets[target][0]
            if side == "proto":
                continue
            for lib in libs:
                if lib in targets:
                    other = targets[lib][0]
                    if other != "proto" and other not in ALLOWED.get(side, {side}):
                        broken.append(f"{where}: {target} ({side}) links {lib} ({other})")
        self.assertEqual(broken, [], "\n".join(broken))

    def test_the_engine_links_and_includes_no_grpc(self):
        targets = cmake_targets()
        links = {}
        for target, libs, _ in cmake_links():
            links.setdefault(target, []).extend(libs)
        engine = [t for t, (_, d) in targets.items() if d.replace(os.sep, "/").startswith(ENGINE_DIRS)]
        self.assertTrue(engine, "no engine targets found under " + ", ".join(ENGINE_DIRS))
        broken = []
        for t in engine:
            seen, todo = set(), [t]
            while todo:
                cur = todo.pop()
                for lib in links.get(cur, []):
                    if GRPC_LINKS.match(lib):
                        broken.append(f"{t} links {lib}" + (f" (through {cur})" if cur != t else ""))
                    elif lib in targets and lib not in seen:
                        seen.add(lib)
                        todo.append(lib)
        for d in ENGINE_DIRS:
            if not os.path.isdir(os.path.join(ROOT, d)):
                continue
            for path in sources(d):
                for inc in INCLUDE.findall(open(path, errors="replace").read()):
                    if inc.startswith("grpcpp/") or inc.endswith(".grpc.pb.h") or inc.startswith("worker/agent/"):
                        broken.append(f"{rel(path)} includes {inc}")
        self.assertEqual(sorted(set(broken)), [], "\n".join(sorted(set(broken))))

    def test_proto_holds_only_protocol_files(self):
        extra = []
        for base, dirs, files in os.walk(os.path.join(ROOT, "proto")):
            for f in files:
                if not (f.endswith(".proto") or f == "CMakeLists.txt"):
                    extra.append(rel(os.path.join(base, f)))
        self.assertEqual(extra, [])

    def test_the_checker_sees_a_broken_wall(self):
        # The regular expressions above must match what they guard against.
        self.assertEqual(INCLUDE.findall('#include "server/jobs/job_manager.h"\n'), ["server/jobs/job_manager.h"])
        self.assertTrue(GRPC_LINKS.match("gRPC::grpc++"))
        self.assertTrue(GRPC_LINKS.match("ft::proto_grpc"))
        self.assertFalse(GRPC_LINKS.match("ft::proto"))


if __name__ == "__main__":
    unittest.main(verbosity=2)
