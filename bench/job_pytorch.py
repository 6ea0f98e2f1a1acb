#!/usr/bin/python3
"""The plain PyTorch version of a finetuned job: ImageFolder DIR/train and
DIR/val, torchvision model with a new head, Adam, the same transforms as
finetuned (train: RandomResizedCrop + flip, or the eval transform with
--augment none; eval: Resize(int(size*256/224)) + CenterCrop(size); ImageNet
normalisation), validation after every epoch, then a TorchScript export
(torch.jit.script + save) and metadata.json, as finetuned exports.
--freeze-depth all trains the head only and keeps the backbone (and its
BatchNorm statistics) in eval mode, as finetuned does; 0 trains everything;
K (1-4, ResNet) freezes the first K of finetuned's stages (stem = conv1 +
bn1, layer1, layer2, layer3) the same way, the usual fine-tuning recipe.
Prints one JSON line: seconds (after imports, to export done), val accuracy.
"""
import time
T_START = time.perf_counter()
import argparse, json, os
import torch, torchvision
from torch import nn
from torchvision import datasets, transforms

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dataset", required=True)
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--freeze-depth", default="0", choices=["0", "1", "2", "3", "4", "all"])
    p.add_argument("--augment", default="standard", choices=["standard", "light", "none"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    t0 = time.perf_counter()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    eval_tf = [transforms.Resize(a.size * 256 // 224), transforms.CenterCrop(a.size)]
    if a.augment == "none":
        train_tf = eval_tf
    else:
        train_tf = [transforms.RandomResizedCrop(a.size, scale=(0.5 if a.augment == "light" else 0.08, 1.0)),
                    transforms.RandomHorizontalFlip()]
    norm = [transforms.ToTensor(), transforms.Normalize(MEAN, STD)]
    train = datasets.ImageFolder(os.path.join(a.dataset, "train"), transforms.Compose(train_tf + norm))
    val = datasets.ImageFolder(os.path.join(a.dataset, "val"), transforms.Compose(eval_tf + norm))
    kw = dict(batch_size=a.batch, num_workers=a.workers, persistent_workers=a.workers > 0)
    train_dl = torch.utils.data.DataLoader(train, shuffle=True, **kw)
    val_dl = torch.utils.data.DataLoader(val, shuffle=False, **kw)

    model = getattr(torchvision.models, a.arch)(weights=None)
    model.fc = nn.Linear(model.fc.in_features, len(train.classes))
    stages = [["conv1", "bn1"], ["layer1"], ["layer2"], ["layer3"], ["layer4"]]
    if a.freeze_depth == "all":
        frozen_children = [n for n, _ in model.named_children() if n != "fc"]
    else:
        frozen_children = [c for st in stages[:int(a.freeze_depth)] for c in st]
    frozen = bool(frozen_children)
    for name, q in model.named_parameters():
        if name.split(".")[0] in frozen_children:
            q.requires_grad_(False)
    opt = torch.optim.Adam([q for q in model.parameters() if q.requires_grad], lr=a.lr)
    history = []
    for epoch in range(1, a.epochs + 1):
        te = time.perf_counter()
        model.train()
        if frozen:
            for name, m in model.named_children():
                if name in frozen_children:
                    m.eval()
        loss_sum, seen = 0.0, 0
        for x, y in train_dl:
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(y)
            seen += len(y)
        model.eval()
        correct, total = 0, 0
        with torch.no_grad():
            for x, y in val_dl:
                correct += (model(x).argmax(1) == y).sum().item()
                total += len(y)
        history.append(dict(epoch=epoch, train_loss=loss_sum / seen, val_accuracy=correct / total,
                            seconds=time.perf_counter() - te))
    os.makedirs(a.out, exist_ok=True)
    model.eval()
    torch.jit.script(model).save(os.path.join(a.out, "model.pt"))
    with open(os.path.join(a.out, "metadata.json"), "w") as f:
        json.dump(dict(classes=train.classes, image_size=a.size, history=history), f)
    now = time.perf_counter()
    print(json.dumps(dict(side="pytorch", seconds=round(now - t0, 2), seconds_with_imports=round(now - T_START, 2),
                          val_accuracy=history[-1]["val_accuracy"], train_images=len(train),
                          epoch_seconds=[round(h["seconds"], 2) for h in history])))


if __name__ == "__main__":
    main()
