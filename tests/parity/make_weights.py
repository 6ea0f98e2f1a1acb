"""Writes seeded random torchvision weights for one architecture, exactly as
torch.save(model.state_dict()) writes them, plus a fixed input and
torchvision's eval-mode features for it (the input of the replaced head).

usage: /usr/bin/python3 make_weights.py ARCH OUT_DIR [--image-size N]
writes OUT_DIR/ARCH.pth, the same tensors as OUT_DIR/ARCH.safetensors, the
headless model as a TorchScript backbone OUT_DIR/ARCH.ts.pt, and
OUT_DIR/ARCH.io.pth ({"input", "features"}).
"""
import argparse
import json
import os
import struct

import torch
import torchvision


def build(arch):
    kwargs = {}
    if arch == "inception_v3":
        # aux_logits=True: real torchvision files carry AuxLogits.*, which we skip.
        kwargs = dict(aux_logits=True, init_weights=False, transform_input=False)
    return getattr(torchvision.models, arch)(**kwargs)


def strip_head(model):
    """Replaces torchvision's last nn.Linear with Identity (the head we replace)."""
    last = None
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear) and not name.startswith("AuxLogits"):
            last = name
    parent = model
    parts = last.split(".")
    for p in parts[:-1]:
        parent = getattr(parent, p)
    setattr(parent, parts[-1], torch.nn.Identity())
    return last


def save_safetensors(state_dict, path, metadata=None):
    """The safetensors format by hand (the Python package is not in Debian 12)."""
    names = {torch.float32: "F32", torch.int64: "I64", torch.float16: "F16"}
    header, blobs, offset = {}, [], 0
    if metadata:
        header["__metadata__"] = metadata
    for k, v in state_dict.items():
        data = v.contiguous().numpy().tobytes()
        header[k] = {"dtype": names[v.dtype], "shape": list(v.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("arch")
    ap.add_argument("out")
    ap.add_argument("--image-size", type=int, default=64)
    args = ap.parse_args()
    torch.manual_seed(1234)
    model = build(args.arch)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d)):
                # Non-trivial statistics, so eval-mode normalisation is really tested.
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 1.5)
                m.num_batches_tracked.fill_(7)
            if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.LayerNorm, torch.nn.GroupNorm)):
                if m.weight is not None:
                    m.weight.uniform_(0.8, 1.2)
                    m.bias.uniform_(-0.1, 0.1)
        if args.arch == "inception_v3":
            # With init_weights=False its output barely depends on the input,
            # which would hide errors in early layers.
            for m in model.modules():
                if isinstance(m, torch.nn.Conv2d):
                    torch.nn.init.kaiming_normal_(m.weight)
        if args.arch.startswith("convnext"):
            # torchvision initialises layer_scale to 1e-6, which would hide the blocks.
            for name, p in model.named_parameters():
                if name.endswith("layer_scale"):
                    p.uniform_(0.1, 0.5)
    os.makedirs(args.out, exist_ok=True)
    torch.save(model.state_dict(), os.path.join(args.out, f"{args.arch}.pth"))
    save_safetensors(model.state_dict(), os.path.join(args.out, f"{args.arch}.safetensors"))
    strip_head(model)
    model.eval()
    x = torch.randn(2, 3, args.image_size, args.image_size, generator=torch.Generator().manual_seed(5))
    if args.arch == "inception_v3":
        # Scripted Inception3 always returns a tuple; trace it for a [N, D] forward.
        scripted = torch.jit.trace(model, x)
    else:
        scripted = torch.jit.script(model)
    torch.jit.save(scripted, os.path.join(args.out, f"{args.arch}.ts.pt"))
    with torch.no_grad():
        f = model(x)
    if isinstance(f, tuple):
        f = f[0]
    torch.save({"input": x.contiguous(), "features": f.contiguous()}, os.path.join(args.out, f"{args.arch}.io.pth"))


if __name__ == "__main__":
    main()
