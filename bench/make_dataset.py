#!/usr/bin/python3
"""Writes an ImageFolder of PNGs (train/<class>/*.png, val/<class>/*.png) from
Fashion-MNIST's IDX files: the first N training images of each class for
train, the first M t10k images of each class for val. Images are upscaled to
--px (bilinear) and stored as RGB, so that decoding costs something, like a
real small-image dataset.

  make_dataset.py OUT_DIR [--train-per-class 300] [--val-per-class 100] [--px 96]
"""
import argparse, gzip, os, struct
import numpy as np
from PIL import Image

SRC = "/usr/share/datasets/fashion-mnist"
NAMES = ["tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]


def read(prefix):
    with gzip.open(os.path.join(SRC, prefix + "-images-idx3-ubyte.gz")) as f:
        _, n, r, c = struct.unpack(">IIII", f.read(16))
        x = np.frombuffer(f.read(), np.uint8).reshape(n, r, c)
    with gzip.open(os.path.join(SRC, prefix + "-labels-idx1-ubyte.gz")) as f:
        f.read(8)
        y = np.frombuffer(f.read(), np.uint8)
    return x, y


def write(x, y, out, per_class, px):
    count = {c: 0 for c in range(10)}
    for img, lab in zip(x, y):
        lab = int(lab)
        if count[lab] >= per_class:
            continue
        d = os.path.join(out, NAMES[lab])
        os.makedirs(d, exist_ok=True)
        im = Image.fromarray(img, "L").resize((px, px), Image.BILINEAR).convert("RGB")
        im.save(os.path.join(d, "%05d.png" % count[lab]))
        count[lab] += 1
        if all(v >= per_class for v in count.values()):
            break


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--train-per-class", type=int, default=300)
    p.add_argument("--val-per-class", type=int, default=100)
    p.add_argument("--px", type=int, default=96)
    a = p.parse_args()
    stamp = os.path.join(a.out, ".done-%d-%d-%d" % (a.train_per_class, a.val_per_class, a.px))
    if os.path.exists(stamp):
        return
    x, y = read("train")
    write(x, y, os.path.join(a.out, "train"), a.train_per_class, a.px)
    x, y = read("t10k")
    write(x, y, os.path.join(a.out, "val"), a.val_per_class, a.px)
    open(stamp, "w").close()


if __name__ == "__main__":
    main()
