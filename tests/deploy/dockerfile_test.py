#!/usr/bin/python3
"""The Dockerfiles build with the packages the project is developed with.

Rule: the package list between `# BEGIN BUILD_PACKAGES` and `# END
BUILD_PACKAGES` in each Dockerfile's build stage equals the BUILD_PACKAGES
array of dev.sh (which ./dev.sh installs and CI builds with), except that
docker/Dockerfile.worker-cuda leaves out libtorch-dev: it links the CUDA
LibTorch of the official PyTorch wheel instead of Debian's CPU-only one. Add
or remove a build dependency in dev.sh and in the three Dockerfiles together.

Also checked: every image that ships `finetuned` ships `finetune-worker` in
the same directory, where finetuned looks for the tool runner that ValidateJob
and Predict need (an image without it served every other call and refused
those two: FAILED_PRECONDITION "needs finetune-worker next to finetuned").

Also checked, because an image that breaks them builds but fails in use: every
Dockerfile is multi-stage, runs as a numeric non-root USER, has a HEALTHCHECK
and builds the targets of its image; and, where apt-cache has package lists
(it does on the Debian 12 machines ./dev.sh runs on), the Debian images'
run-time packages exist.
Only Python's standard library.
"""
import pathlib
import re
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
DEV_SH = ROOT / "dev.sh"
DOCKER = ROOT / "docker"
IMAGES = {
    # file: (packages left out of BUILD_PACKAGES, cmake targets, Debian-based runtime)
    "Dockerfile.server": (set(), {"finetuned", "ftctl", "finetune-worker"}, True),
    "Dockerfile.worker": (set(), {"finetune-worker", "ftctl"}, True),
    "Dockerfile.worker-cuda": ({"libtorch-dev"}, {"finetune-worker", "ftctl"}, False),
}
PACKAGE = re.compile(r"^[a-z0-9][a-z0-9.+-]+$")


def bash_array(text, name):
    m = re.search(rf"^{name}=\((.*?)^\s*\)", text, flags=re.S | re.M)
    if not m:
        raise SystemExit(f"FAIL: no {name}=( ... ) array in {DEV_SH}")
    words = []
    for line in m.group(1).splitlines():
        words += line.split("#", 1)[0].split()
    bad = [w for w in words if not PACKAGE.match(w)]
    if bad:
        raise SystemExit(f"FAIL: {name} in dev.sh holds words that are not package names: {bad}")
    return words


def joined_lines(text):
    """Dockerfile text with backslash continuations joined (comments dropped)."""
    out, cur = [], ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") and not cur:
            out.append(line)
            continue
        if line.lstrip().startswith("#"):
            continue  # a comment inside a continued instruction
        if line.rstrip().endswith("\\"):
            cur += line.rstrip()[:-1] + " "
        else:
            out.append(cur + line)
            cur = ""
    if cur:
        out.append(cur)
    return out


def apt_install_words(command):
    """Package words of every `apt-get install` in a shell command line."""
    packages = []
    for segment in re.split(r"&&|\|\||;", command):
        words = segment.split()
        if "apt-get" in words and "install" in words:
            after = words[words.index("install") + 1:]
            packages += [w for w in after if not w.startswith("-")]
    return packages


def build_block(path):
    text = path.read_text()
    m = re.search(r"^# BEGIN BUILD_PACKAGES[^\n]*\n(.*?)^# END BUILD_PACKAGES", text, flags=re.S | re.M)
    if not m:
        return None
    return run_apt_words(joined_lines(m.group(1)))


def run_apt_words(lines):
    """Package words of every `RUN ... apt-get install` among `lines`."""
    return [w for line in lines if line.startswith("RUN ") for w in apt_install_words(line[4:])]


def final_stage(path):
    """The joined lines after the last FROM: the image that ships."""
    lines = joined_lines(path.read_text())
    return lines[max(i for i, l in enumerate(lines) if l.startswith("FROM ")):]


def runtime_packages(path):
    """Packages apt-get installed in the image that ships."""
    return run_apt_words(final_stage(path))


def shipped_binaries(path):
    """{directory: {binary names}} that COPY --from=build puts in the final image."""
    out = {}
    for line in final_stage(path):
        words = line.split()
        if words[:1] == ["COPY"] and any(w.startswith("--from=") for w in words):
            args = [w for w in words[1:] if not w.startswith("--")]
            dest = args[-1].rstrip("/") or "/"
            out.setdefault(dest, set()).update(pathlib.PurePosixPath(a).name for a in args[:-1])
    return out


def tool_runner_problems(name, path):
    """An image with finetuned but no finetune-worker beside it cannot validate or predict."""
    problems = []
    for dest, names in shipped_binaries(path).items():
        if "finetuned" in names and "finetune-worker" not in names:
            problems.append(f"{name}: ships finetuned in {dest} without finetune-worker beside it, so "
                            "ValidateJob and Predict (tool processes) cannot run")
    text = path.read_text()
    if "--worker-binary" in text:
        problems.append(f"{name}: passes --worker-binary; finetuned must find the tool runner beside itself")
    return problems


def apt_candidates(packages):
    """The packages among `packages` that apt can install here (one apt-cache call)."""
    out = subprocess.run(["apt-cache", "policy", *packages], capture_output=True, text=True).stdout
    found, current = set(), None
    for line in out.splitlines():
        if line and not line[0].isspace() and line.endswith(":"):
            current = line[:-1].split(":")[0]
        elif current and line.strip().startswith("Candidate:") and "(none)" not in line:
            found.add(current)
    return found


def apt_has_lists():
    return shutil.which("apt-cache") and any(pathlib.Path("/var/lib/apt/lists").glob("*_Packages*"))


def self_test():
    """The tool-runner rule flags the server image as it was before it shipped the runner."""
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        old = pathlib.Path(d) / "Dockerfile"
        old.write_text("FROM x AS build\nFROM y\nCOPY --from=build /src/build/bin/finetuned "
                       "/src/build/bin/ftctl /usr/local/bin/\n")
        assert tool_runner_problems("old", old), "the rule must catch a server image without finetune-worker"
        old.write_text("FROM x AS build\nFROM y\nCOPY --from=build /src/build/bin/finetuned "
                       "/src/build/bin/finetune-worker /usr/local/bin/\n")
        assert not tool_runner_problems("new", old)


def main():
    self_test()
    failures = []
    build_packages = bash_array(DEV_SH.read_text(), "BUILD_PACKAGES")
    blas_packages = bash_array(DEV_SH.read_text(), "BLAS_PACKAGES")
    if len(build_packages) != len(set(build_packages)):
        failures.append("dev.sh BUILD_PACKAGES lists a package twice")
    check_apt = apt_has_lists()
    for name, (left_out, targets, debian_runtime) in IMAGES.items():
        path = DOCKER / name
        if not path.exists():
            failures.append(f"{name} is missing")
            continue
        text = path.read_text()
        block = build_block(path)
        if block is None:
            failures.append(f"{name}: no '# BEGIN BUILD_PACKAGES' ... '# END BUILD_PACKAGES' block")
        else:
            expected = [p for p in build_packages if p not in left_out]
            if len(block) != len(set(block)):
                failures.append(f"{name}: a build package is listed twice")
            missing, extra = set(expected) - set(block), set(block) - set(expected)
            if missing:
                failures.append(f"{name}: build stage lacks {sorted(missing)} (in dev.sh BUILD_PACKAGES)")
            if extra:
                failures.append(f"{name}: build stage has {sorted(extra)}, not in dev.sh BUILD_PACKAGES"
                                + (f" minus {sorted(left_out)}" if left_out else ""))
        failures += tool_runner_problems(name, path)
        lines = joined_lines(text)
        froms = [l for l in lines if l.startswith("FROM ")]
        if len(froms) < 2 or not any(re.search(r"\bAS\s+build\b", l, re.I) for l in froms):
            failures.append(f"{name}: not a multi-stage build with a `build` stage")
        users = [l.split()[1] for l in lines if l.startswith("USER ")]
        if not users or not re.match(r"^[1-9][0-9]*(:[1-9][0-9]*)?$", users[-1]):
            failures.append(f"{name}: the final USER must be a numeric non-root uid (Kubernetes runAsNonRoot"
                            f" can verify only numbers), got {users[-1:] or 'none'}")
        if not any(l.startswith("HEALTHCHECK ") for l in lines):
            failures.append(f"{name}: no HEALTHCHECK")
        build_cmd = " ".join(l for l in lines if "cmake --build" in l)
        m = re.search(r"--target\s+([^&;]+)", build_cmd)
        built = set(m.group(1).split()) if m else set()
        if built != targets:
            failures.append(f"{name}: builds targets {sorted(built)}, expected {sorted(targets)}")
        if debian_runtime:
            runtime = runtime_packages(path)
            if not runtime:
                failures.append(f"{name}: the runtime stage installs no packages")
            elif check_apt:
                known = apt_candidates(runtime)
                for pkg in runtime:
                    if pkg not in known:
                        failures.append(f"{name}: run-time package {pkg} does not exist in this Debian")
            # The fast BLAS under every worker, selected as dev.sh selects it.
            lacking = [p for p in blas_packages if p not in runtime]
            if lacking:
                failures.append(f"{name}: the runtime stage lacks {lacking} (dev.sh BLAS_PACKAGES)")
            for alt, target in (("libblas.so.3", "/blis-pthread/libblas.so.3"), ("liblapack.so.3", "/lapack/liblapack.so.3")):
                if not any(re.search(rf"update-alternatives --set {re.escape(alt)}-\S+ \S*{re.escape(target)}", l)
                           for l in lines):
                    failures.append(f"{name}: does not select {target} as {alt} (dev.sh select_blas)")
    if not check_apt:
        print("note: no apt package lists here; run-time package names were not looked up")
    for f in failures:
        print("FAIL:", f)
    if not failures:
        print(f"3 Dockerfiles agree with dev.sh BUILD_PACKAGES ({len(build_packages)} packages;"
              " worker-cuda without libtorch-dev)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
