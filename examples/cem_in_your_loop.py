"""Example (a): add CEM to a plain PyTorch training loop of your own split model, and measure what it buys.

The model below is a user's own (not in splitshield's zoo): a small CNN edge that sends 8 x 7 x 7 features and a
cloud head. The loop is ordinary PyTorch; the lines marked ``# splitshield`` are all that CEM needs:

    defense = splitshield.defense("cem", num_classes=10, epochs=EPOCHS, loader=loader, encoder=edge)  # splitshield
    z = defense(edge(x))                                                                 # splitshield: the noise
    loss = F.cross_entropy(logits, y) + defense.penalty(x, y, logits)                    # splitshield: CEM's term
    defense.step()                                                                        # splitshield
    defense.end_epoch()                                                                   # splitshield: the fit

It trains the same loop twice with the same seed, once with the Gaussian noise CEM adds (sigma 0.025) and once with
CEM (that noise plus its conditional-entropy term), attacks both with the decoder attack and prints CEM's MSE gain
and accuracy change. Run it on synthetic data (seconds) or on Fashion-MNIST (minutes)::

    python examples/cem_in_your_loop.py                          # synthetic, CI-sized
    python examples/cem_in_your_loop.py --data fashion-mnist --train-size 15000 --epochs 10
"""
from __future__ import annotations

import argparse
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import splitshield


def make_model(channels: int, classes: int, size: int) -> tuple[nn.Module, nn.Module]:
    """A user's own split model: edge (on the device) and cloud (on the server). Images in [0, 1]."""
    edge = nn.Sequential(nn.Conv2d(channels, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(16, 8, 3, padding=1), nn.Sigmoid())  # 8 x H/2 x W/2 features in [0, 1]
    cloud = nn.Sequential(nn.Conv2d(8, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(32 * (size // 4) ** 2, classes))
    return edge, cloud


def synthetic(n: int, seed: int, classes: int = 4, size: int = 16) -> TensorDataset:
    """Class templates plus noise: a tiny learnable task for a quick run."""
    g = torch.Generator().manual_seed(1234)
    templates = torch.rand(classes, 1, size, size, generator=g)
    g.manual_seed(seed)
    labels = torch.arange(n) % classes
    return TensorDataset((templates[labels] + 0.25 * torch.randn(n, 1, size, size, generator=g)).clamp(0, 1), labels)


def datasets(args: argparse.Namespace) -> tuple[Any, Any, int]:
    if args.data == "synthetic":
        return synthetic(args.train_size or 512, 1), synthetic(args.test_size or 256, 2), 4
    train = splitshield.load_dataset(args.data, "train", size=args.train_size)
    test = splitshield.load_dataset(args.data, "test", size=args.test_size)
    return train, test, 10


def as_float(images: torch.Tensor) -> torch.Tensor:
    return images.float().div(255) if images.dtype == torch.uint8 else images


def train(train_set: Any, test_set: Any, classes: int, spec: Any, args: argparse.Namespace
          ) -> tuple[nn.Module, splitshield.LoopDefense, float]:
    """The user's loop, with the defense ``spec`` dropped in; returns (edge, defense, test accuracy)."""
    torch.manual_seed(args.seed)
    channels, size = train_set[0][0].shape[0], train_set[0][0].shape[-1]
    edge, cloud = make_model(channels, classes, size)
    loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(args.seed))
    defense = splitshield.defense(spec, num_classes=classes, epochs=args.epochs, loader=loader,  # splitshield
                                  encoder=edge, seed=args.seed)
    params = list(edge.parameters()) + list(cloud.parameters())
    optimizer = torch.optim.SGD(params, lr=args.lr, momentum=0.9, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs)
    for _ in range(args.epochs):
        edge.train(), cloud.train(), defense.train()
        for images, y in loader:
            x = as_float(images)
            z = defense(edge(x))  # splitshield: what leaves the device
            logits = cloud(z)
            loss = F.cross_entropy(logits, y) + defense.penalty(x, y, logits)  # splitshield
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            defense.step()  # splitshield
        defense.end_epoch()  # splitshield: CEM fits its mixture to this epoch's features
        schedule.step()
    edge.eval(), cloud.eval(), defense.eval()
    correct = 0
    with torch.no_grad():
        for images, y in DataLoader(test_set, batch_size=512):
            correct += int((cloud(defense(edge(as_float(images)))).argmax(1) == y).sum())
    return edge, defense, correct / len(test_set)


def main(argv: Any = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="synthetic", help="synthetic, or a registered dataset (fashion-mnist)")
    p.add_argument("--train-size", type=int)
    p.add_argument("--test-size", type=int)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--lam", type=float, default=0.1, help="CEM's lambda (the default is splitshield's)")
    p.add_argument("--attack-epochs", type=int, default=50, help="the decoder attack's maximum budget")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    train_set, test_set, classes = datasets(args)
    arms = {"noise": {"name": "gaussian_noise", "sigma": 0.025}, "noise + CEM": {"name": "cem", "lam": args.lam}}
    rows = {}
    for label, spec in arms.items():
        edge, defense, accuracy = train(train_set, test_set, classes, spec, args)
        result = splitshield.attack(edge, train_set, test_set, "decoder", defense=defense, seed=args.seed,
                                    params={"epochs": args.attack_epochs}, num_classes=classes,
                                    victim_accuracy=accuracy, progress=False)
        rows[label] = (accuracy, result)
        print(f"{label:12s} accuracy {100 * accuracy:6.2f}%  {result.summary()}")
    (acc0, base), (acc1, cem) = rows.values()
    gain = 100 * (cem.mse / base.mse - 1)
    evidence = "both attacks count" if base.counts and cem.counts else "an attack does NOT count (see its status)"
    print(f"CEM: decoder MSE {gain:+.1f}% at {100 * (acc1 - acc0):+.2f} accuracy points ({evidence})")
    return {"gain_percent": gain, "accuracy_change": acc1 - acc0, "results": rows}


if __name__ == "__main__":
    main()
