#!/usr/bin/python3
"""torchvision twin of ft_bench_step_time: the same architecture with its last
Linear replaced by a new one (num_classes), everything trainable, train mode,
cross-entropy + Adam(lr 1e-3) on random inputs; prints one JSON line per arch.

  step_time.py --arch resnet18,resnet50 --batch 16 --size 64 --threads 2
"""
import argparse, json, statistics, time
import torch, torchvision
from torch import nn


def build(name, classes):
    kw = {}
    if name == "inception_v3":
        # finetuned's backbone has no AuxLogits branch (it is a head, replaced).
        kw = dict(aux_logits=False, init_weights=True, transform_input=False)
    m = getattr(torchvision.models, name)(weights=None, **kw)
    if hasattr(m, "fc"):  # resnet*, resnext, wide_resnet, inception
        m.fc = nn.Linear(m.fc.in_features, classes)
    elif isinstance(m.classifier, nn.Linear):  # densenet
        m.classifier = nn.Linear(m.classifier.in_features, classes)
    else:  # vgg, mobilenet, efficientnet, convnext: the last Linear of a Sequential
        last = len(m.classifier) - 1
        m.classifier[last] = nn.Linear(m.classifier[last].in_features, classes)
    return m


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--inception-size", type=int, default=80)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--classes", type=int, default=10)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    for name in a.arch.split(","):
        torch.manual_seed(0)
        model = build(name, a.classes).train()
        opt = torch.optim.Adam([q for q in model.parameters() if q.requires_grad], lr=1e-3)
        s = a.inception_size if name == "inception_v3" else a.size
        x = torch.randn(a.batch, 3, s, s)
        y = torch.randint(0, a.classes, (a.batch,))
        ms = []
        for it in range(a.warmup + a.iters):
            t0 = time.perf_counter()
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss.item()
            dt = (time.perf_counter() - t0) * 1000
            if it >= a.warmup:
                ms.append(dt)
        print(json.dumps(dict(side="pytorch", arch=name, batch=a.batch, size=s, threads=a.threads,
                              ms_median=round(statistics.median(ms), 2), ms_min=round(min(ms), 2),
                              iters=a.iters)), flush=True)


if __name__ == "__main__":
    main()
