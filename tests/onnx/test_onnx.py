#!/usr/bin/python3
"""model.onnx, checked against a real runtime.

usage: test_onnx.py CASE:IMAGE_SIZE [CASE:IMAGE_SIZE ...]
  CASE is
    ARCH                  a catalog architecture (seeded random weights,
                          BatchNorm layers in a non-trivial state);
    chain:ARCH            a model:// chained model: ARCH's model.pt is made
                          first, then a new classifier around its backbone;
    torchscript:TV_ARCH   a user's TorchScript backbone: Debian's
                          torchvision TV_ARCH without its last Linear,
                          scripted in Python; torchscript:opzoo scripts a
                          backbone of the mapped ops no architecture uses.

For each case, ft_onnx_check (tests/onnx/onnx_check_main.cc) writes model.pt,
model.onnx (the C++ exporter), an input and LibTorch's outputs of model.pt;
then onnx's checker (full_check) must accept model.onnx, its input and output
names, types and dims must be the contract's (input float32 [N,3,S,S],
logits [N,K], features [N,D], N symbolic), its opset 17, and onnxruntime-node
1.30 (tests/onnx/node_modules, from npm_setup.sh) run with batch 1 and batch 3
must give logits and features within 1e-4 relative max error
(max |ort - torch| / max |torch|) of model.pt's.

Exit 77 (skipped) only when node is not installed.
"""
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
BIN = pathlib.Path(os.environ.get("FT_BIN_DIR", HERE.parents[1] / "build" / "bin"))
TOLERANCE = 1e-4
OPSET = 17


def fail(msg):
    raise AssertionError(msg)


def run(cmd, **kw):
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    if r.returncode != 0:
        fail(f"{' '.join(map(str, cmd))} exited {r.returncode}:\n{r.stdout}\n{r.stderr}")
    return r.stdout


def op_zoo():
    """A backbone of the ops the converter maps but no catalog architecture
    uses (ceil_mode pooling, adaptive max pooling, softmax, addmm, slicing,
    reductions, the other activations...), so that onnxruntime checks them too."""
    import torch
    import torch.nn.functional as F

    class OpZoo(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
            self.bn = torch.nn.BatchNorm2d(8)
            self.lin = torch.nn.Linear(8, 6)
            self.w = torch.nn.Parameter(torch.randn(6, 6) / 3)

        def forward(self, x):
            y = F.leaky_relu(self.bn(self.conv(x)), 0.1)
            y = torch.clamp(y, min=-2.0, max=3.0)
            a = F.max_pool2d(y, 3, 2, 1, ceil_mode=True).mean(dim=[2, 3])
            b = F.avg_pool2d(y, 3, 2, 0, ceil_mode=True, count_include_pad=False).sum(dim=[2, 3]) / 100.0
            c = F.adaptive_max_pool2d(y, 1).flatten(1)
            d = F.adaptive_avg_pool2d(y, (4, 7)).permute(0, 2, 3, 1).contiguous().reshape(x.size(0), -1)
            e = torch.softmax(self.lin(a), dim=1) + torch.log_softmax(self.lin(b), -1)
            f = torch.matmul(e, self.w.t()) + torch.addmm(self.lin.bias, c, self.lin.weight.t(), beta=0.5, alpha=2.0)
            g = y[:, 1:7:2].select(1, 1).mean(dim=(1, 2), keepdim=True).squeeze(2)
            h = (torch.tanh(f) * torch.exp(-f.abs()) + torch.sqrt(f * f + 1.0) + torch.reciprocal(f.abs() + 1.0)
                 + torch.log(f.abs() + 1.0) - torch.sigmoid(f))
            k = (F.gelu(h, approximate="tanh") - F.silu(h) / 2.0 + F.hardtanh(h, -1.0, 1.0) + F.relu6(h * 4.0)
                 + torch.erf(h) + F.hardswish(h) * F.hardsigmoid(h) + F.gelu(h) + torch.sum(h, dim=1, keepdim=True))
            t = d.transpose(0, 1).transpose(1, 0).unsqueeze(1).flatten(1)
            return torch.cat([a, b, c, t, k, g, F.dropout(h, 0.3, self.training)], 1)

    return OpZoo()


def torchscript_backbone(arch, size, path):
    """A scripted torchvision model without its last Linear, as a user makes
    one; or (arch "opzoo") op_zoo's."""
    import torch
    import torchvision
    torch.manual_seed(0)
    if arch == "opzoo":
        m = op_zoo()
    else:
        m = getattr(torchvision.models, arch)()
        if hasattr(m, "fc"):
            m.fc = torch.nn.Identity()
        else:
            m.classifier[len(m.classifier) - 1] = torch.nn.Identity()
    m.train()
    with torch.no_grad():
        for _ in range(4):
            m(torch.randn(4, 3, size, size))
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.normal_(0, 0.2)
    m.eval()
    torch.jit.save(torch.jit.script(m), str(path))


def dims(value_info):
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def check_file(onnx_path, io):
    import onnx
    model = onnx.load(str(onnx_path))
    onnx.checker.check_model(model, full_check=True)
    opsets = {o.domain: o.version for o in model.opset_import}
    if opsets != {"": OPSET}:
        fail(f"opset imports {opsets}, want {{'': {OPSET}}}")
    g = model.graph
    inputs = [i for i in g.input if i.name not in {t.name for t in g.initializer}]
    got = [(i.name, i.type.tensor_type.elem_type, dims(i)) for i in inputs]
    size = io["input"][2]
    want = [("input", onnx.TensorProto.FLOAT, ["N", 3, size, size])]
    if got != want:
        fail(f"inputs {got}, want {want}")
    got = [(o.name, o.type.tensor_type.elem_type, dims(o)) for o in g.output]
    want = [("logits", onnx.TensorProto.FLOAT, ["N", io["logits"][1]]),
            ("features", onnx.TensorProto.FLOAT, ["N", io["features"][1]])]
    if got != want:
        fail(f"outputs {got}, want {want}")
    ops = {}
    for n in g.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    return ops


def compare(work, io, per_column=False):
    """The relative max errors of onnxruntime's outputs, by output and batch;
    per_column: each feature column against its own scale (the op zoo's
    columns come from different ops, some of them small)."""
    errors = {}
    for name in ("logits", "features"):
        ref = np.fromfile(work / f"{name}.bin", np.float32).reshape(io[name])
        scale = float(np.abs(ref).max())
        if not np.isfinite(ref).all() or scale == 0.0:
            fail(f"LibTorch's {name} are degenerate (max |x| = {scale}): the test would prove nothing")
        for batch in (1, io["input"][0]):
            got = np.fromfile(work / f"{name}_b{batch}.bin", np.float32)
            if got.size != ref[:batch].size:
                fail(f"{name} at batch {batch}: {got.size} values, want {ref[:batch].size}")
            got = got.reshape(ref[:batch].shape)
            if not np.isfinite(got).all():
                fail(f"onnxruntime's {name} at batch {batch} are not all finite")
            errors[(name, batch)] = float(np.abs(got - ref[:batch]).max()) / scale
            if per_column:
                columns = np.abs(ref).max(axis=0)
                if not (columns > 0).all():
                    fail(f"LibTorch's {name} have an all-zero column: the op behind it would go unchecked")
                worst = float((np.abs(got - ref[:batch]).max(axis=0) / columns).max())
                errors[(name, batch)] = max(errors[(name, batch)], worst)
    return errors


def check_case(case, size, root):
    work = root / case.replace(":", "_")
    work.mkdir()
    if case.startswith("chain:"):
        arch = case.split(":", 1)[1]
        source = root / f"{arch}_source"
        source.mkdir()
        run([BIN / "ft_onnx_check", arch, size, source])
        spec = f"chain:{source / 'model.pt'}"
    elif case.startswith("torchscript:"):
        backbone = work / "backbone.pt"
        torchscript_backbone(case.split(":", 1)[1], size, backbone)
        spec = f"torchscript:{backbone}"
    else:
        spec = case
    start = time.monotonic()
    run([BIN / "ft_onnx_check", spec, size, work])
    io = json.loads((work / "io.json").read_text())
    ops = check_file(work / "model.onnx", io)
    run(["node", HERE / "run_onnx.mjs", work / "model.onnx", work / "input.bin", size, work])
    session = json.loads((work / "session.json").read_text())
    # What worker/export/onnx_export.h (metadata.json, the model card) says
    # the files are verified with, package.json's pin and the runtime that ran.
    pinned = json.loads((HERE / "package.json").read_text())["dependencies"]["onnxruntime-node"]
    if not io["verified_with"] == f"onnxruntime-node {pinned}" == f"onnxruntime-node {session['onnxruntime']}":
        fail(f"kOnnxVerifiedWith says {io['verified_with']!r}, package.json pins onnxruntime-node {pinned}, "
             f"and {session['onnxruntime']} ran the file")
    if io["opset"] != OPSET:
        fail(f"ft_onnx_check says opset {io['opset']}, want {OPSET}")
    errors = compare(work, io, per_column=case == "torchscript:opzoo")
    worst = max(errors.values())
    mb = (work / "model.onnx").stat().st_size / 1e6
    print(f"{case} at {size} px: max relative error logits {max(errors[('logits', b)] for b in (1, 3)):.2e}, "
          f"features {max(errors[('features', b)] for b in (1, 3)):.2e} (batch 1 and 3); "
          f"{sum(ops.values())} nodes ({', '.join(f'{k} {v}' for k, v in sorted(ops.items()))}); "
          f"{mb:.1f} MB; export {io['export_seconds']:.1f} s; case {time.monotonic() - start:.1f} s", flush=True)
    if not worst <= TOLERANCE:
        fail(f"{case}: onnxruntime differs from model.pt by {worst:.3e} relative (> {TOLERANCE}): {errors}")
    shutil.rmtree(work)  # the larger models are hundreds of MB


def main(argv):
    if not argv:
        print(__doc__)
        return 2
    if shutil.which("node") is None:
        print("SKIP: node is not installed")
        return 77
    if not (HERE / "node_modules" / "onnxruntime-node").is_dir():
        fail("tests/onnx/node_modules has no onnxruntime-node: run tests/onnx/npm_setup.sh (ctest's onnx.npm_setup)")
    failures = []
    with tempfile.TemporaryDirectory(prefix="ft-onnx-") as tmp:
        for entry in argv:
            case, size = entry.rsplit(":", 1)
            try:
                check_case(case, int(size), pathlib.Path(tmp))
            except AssertionError as e:
                print(f"FAIL {entry}: {e}", flush=True)
                failures.append(entry)
    if failures:
        print(f"{len(failures)} of {len(argv)} failed: {' '.join(failures)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
