#!/usr/bin/python3
"""torchvision twin of ft_bench_loader: ImageFolder over DIR/train with the
training transform (RandomResizedCrop + flip + ToTensor + Normalize), a
DataLoader with --workers processes (default: --threads), batch 32, shuffled;
`epochs` passes consumed as fast as they come. Every pass decodes the PNGs
again (that is what ImageFolder does). Prints one JSON line.
"""
import argparse, json, os, statistics, time
import torch
from torchvision import datasets, transforms

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dataset", required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workers", type=int, default=-1)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--augment", default="standard")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    workers = a.threads if a.workers < 0 else a.workers
    if a.augment == "none":
        tf = [transforms.Resize(a.size * 256 // 224), transforms.CenterCrop(a.size)]
    else:
        tf = [transforms.RandomResizedCrop(a.size, scale=(0.5 if a.augment == "light" else 0.08, 1.0)),
              transforms.RandomHorizontalFlip()]
    tf = transforms.Compose(tf + [transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    t0 = time.perf_counter()
    ds = datasets.ImageFolder(os.path.join(a.dataset, "train"), tf)
    scan = time.perf_counter() - t0
    dl = torch.utils.data.DataLoader(ds, batch_size=a.batch, shuffle=True, num_workers=workers)
    epoch_s, checksum = [], 0.0
    for _ in range(a.epochs):
        t0 = time.perf_counter()
        for x, y in dl:
            checksum += float(x[0, 0, 0, 0])
        epoch_s.append(time.perf_counter() - t0)
    print(json.dumps(dict(side="pytorch", images=len(ds), threads=a.threads, workers=workers,
                          scan_s=round(scan, 3), epoch_s_median=round(statistics.median(epoch_s), 3),
                          epoch_s_min=round(min(epoch_s), 3), first_epoch_s=round(scan + epoch_s[0], 3),
                          epochs=a.epochs)))


if __name__ == "__main__":
    main()
