"""Example (b): measure how much an already-trained encoder leaks: decoder and kNN attacks, the entropy audit, and
one figure of reconstructions.

Bring your own encoder: any ``nn.Module`` that maps images in [0, 1] to features, loaded however you load it. Here
``--weights edge.pt`` loads a state dict into the example's encoder; without it the example first trains one for a
few epochs (so it runs anywhere)::

    python examples/measure_leakage.py --out leakage.png
    python examples/measure_leakage.py --data fashion-mnist --train-size 15000 --noise 0.025 --out leakage.png

``--noise`` is the std of the Gaussian noise your deployment adds to the features (0: none). The audit's bound on
I(x; z) holds only for noisy features; without noise it reports the case as degenerate.
"""
from __future__ import annotations

import argparse
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

import splitshield
from cem_in_your_loop import as_float, datasets, make_model


def quick_encoder(train_set: Any, classes: int, epochs: int, seed: int) -> nn.Module:
    """Stand-in for "your already-trained encoder": a few epochs of plain training."""
    torch.manual_seed(seed)
    edge, cloud = make_model(train_set[0][0].shape[0], classes, train_set[0][0].shape[-1])
    optimizer = torch.optim.Adam(list(edge.parameters()) + list(cloud.parameters()), lr=1e-3)
    for _ in range(epochs):
        for images, y in DataLoader(train_set, batch_size=64, shuffle=True):
            loss = F.cross_entropy(cloud(edge(as_float(images))), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return edge.eval()


def main(argv: Any = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="synthetic")
    p.add_argument("--train-size", type=int)
    p.add_argument("--test-size", type=int)
    p.add_argument("--weights", help="a state dict for the example's encoder (else one is trained first)")
    p.add_argument("--epochs", type=int, default=3, help="training epochs when no --weights are given")
    p.add_argument("--noise", type=float, default=0.025, help="std of the Gaussian noise on the features")
    p.add_argument("--attack-epochs", type=int, default=50)
    p.add_argument("--out", default="leakage.png")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    train_set, test_set, classes = datasets(args)
    if args.weights:
        encoder = make_model(train_set[0][0].shape[0], classes, train_set[0][0].shape[-1])[0]
        encoder.load_state_dict(torch.load(args.weights, map_location="cpu", weights_only=True))
        encoder.eval()
    else:
        encoder = quick_encoder(train_set, classes, args.epochs, args.seed)
    # What the device transmits: the encoder's features plus the deployment's noise (none at --noise 0).
    defense = splitshield.defense("gaussian_noise", sigma=args.noise, num_classes=classes, epochs=1,
                                  loader=DataLoader(train_set, batch_size=64), encoder=encoder)
    results = [splitshield.attack(encoder, train_set, test_set, name, defense=defense, params=params,
                                  num_classes=classes, seed=args.seed, progress=False)
               for name, params in (("decoder", {"epochs": args.attack_epochs}), ("knn", {"k": 5}))]
    for r in results:
        print(r.summary())
    counting = [r for r in results if r.counts]
    worst = min(counting, key=lambda r: r.mse) if counting else None
    print("strongest attack: " + (f"{worst.attack}, MSE {worst.mse:.5f}" if worst else "none counts"))
    bound = splitshield.audit(encoder, train_set, defense=defense, num_classes=classes)
    if bound["degenerate"]:
        print(f"audit: {bound['reason']}")
    else:
        print(f"audit: I(x; z) <= {bound['mi_bound']:.1f} nats ({bound['mi_bound_bits_per_dim']:.4f} bits per "
              f"input dimension) for noise std {bound['noise_std']:.3g}")
    print(f"figure: {splitshield.save_reconstructions(results, args.out)}")
    return {"results": results, "audit": bound, "figure": args.out}


if __name__ == "__main__":
    main()
