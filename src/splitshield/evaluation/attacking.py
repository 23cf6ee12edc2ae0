"""``attack_images``: split by protocol, attack any victim, score and assess; ``run_attack``: the same on a stored run
(its config's attack settings, its data), storing the result."""
from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict
from typing import Any, Optional, Union

import torch
from torch.utils.data import Dataset, Subset

from splitshield.attacks import ATTACKS
from splitshield.attacks._protocols import ProtocolSplit, split_protocol
from splitshield.attacks.base import Victim
from splitshield.config import ExperimentConfig
from splitshield.errors import ConfigError
from splitshield.evaluation.metrics import reconstruction_metrics
from splitshield.data import DataBundle, build_data
from splitshield.runs import RESULTS_DIR, AttackKey, ResultSink, RunFolder
from splitshield.train.build import LoadedRun, load_run

log = logging.getLogger(__name__)

FIGURE_IMAGES = 8  # reconstructions kept per attack for figures (the first scored images: same under both protocols)


def dataset_images(dataset: Dataset) -> torch.Tensor:
    """All images of a (possibly Subset-wrapped) in-memory dataset as one uint8 (N, C, H, W) tensor."""
    if isinstance(dataset, Subset):
        return dataset_images(dataset.dataset)[torch.as_tensor(dataset.indices)]
    images = getattr(dataset, "images", None)
    if isinstance(images, torch.Tensor):
        return images
    return torch.stack([dataset[i][0] for i in range(len(dataset))])  # type: ignore[arg-type]


def resolve_attack_config(cfg: ExperimentConfig, name: str, params: Optional[dict[str, Any]] = None) -> Any:
    """The run config's ``attacks:`` entry for ``name`` (else the attack's defaults = paper budgets) plus
    ``params``. Only the config: deciding whether a stored result is reusable loads no model."""
    base = next((dict(spec.params) for spec in cfg.attacks if spec.name == name), {})
    return ATTACKS.config_of(name, {**base, **(params or {})}, "attacks")


def victim_accuracy(folder: RunFolder) -> Optional[float]:
    """The victim's test accuracy as recorded by training (last epoch), or None for a run without a log."""
    records = [r for r in folder.metrics() if "test_accuracy" in r] if folder.path else []
    return float(records[-1]["test_accuracy"]) if records else None


def mean_image_baseline(x_fit: torch.Tensor, x_score: torch.Tensor) -> dict[str, float]:
    """Metrics of predicting the attacker's mean training image for every input (what no feature leaks)."""
    mean = x_fit.float().div(255).mean(0, keepdim=True)
    target = x_score.float().div(255)
    return reconstruction_metrics(mean.expand_as(target), target)


def assess(record: dict[str, Any], num_classes: int) -> dict[str, Any]:
    """Whether an attack result counts as evidence (docs/attacks.md, "What counts").

    - ``learned``: its MSE is below the mean-image baseline's (else it extracted nothing a constant guess lacks);
    - ``converged``: a fitted attacker stopped on a validation plateau within its budget (attacks with nothing to
      fit count as converged; None = a fixed budget without early stopping, unknown, not held against it);
    - ``victim_at_chance``: the victim's accuracy is at most 1.5 / classes, so there is no model to defend;
    - ``counts``: learned and converged on a victim above chance; tables and averages use only these, and mark the
      rest "did not learn" / "not converged" / "victim at chance"."""
    learned = float(record["mse"]) < float(record["baseline"]["mse"])
    converged = record.get("info", {}).get("converged", True)
    acc = record.get("victim_accuracy")
    at_chance = acc is not None and float(acc) <= 1.5 / max(num_classes, 1)
    status = ("victim at chance" if at_chance else "did not learn" if not learned else
              "not converged" if converged is False else "ok")
    return {"learned": learned, "converged": converged, "victim_at_chance": at_chance, "counts": status == "ok",
            "status": status}


def attack_images(victim: Victim, name: str, protocol: str, cfg: Any, train_images: torch.Tensor,
                  test_images: torch.Tensor, *, num_classes: int, seed: int = 0,
                  victim_acc: Optional[float] = None, artifacts: Optional[str] = None, store: bool = False,
                  progress: bool = False) -> tuple[dict[str, Any], torch.Tensor, ProtocolSplit, torch.Tensor]:
    """The attack itself on any victim (a stored run or a user's own encoder): split ``train_images`` (uint8, the
    victim's training set) and ``test_images`` by ``protocol``, fit, reconstruct, score against the mean-image
    baseline and assess. Returns (record, reconstructions of the scored images, the split, the scored images).

    ``cfg`` is the attack's resolved ``Config``; ``artifacts`` a path prefix for attacker weights shared between
    attacks (the GAN starts from the saved decoder), written only with ``store``."""
    split: ProtocolSplit = split_protocol(protocol, len(train_images), len(test_images), seed=seed,
                                          val_fraction=cfg.val_fraction, train_size=cfg.train_size,
                                          score_size=cfg.score_size)
    own = train_images if split.fit_source == "train" else test_images
    x_fit, x_val, x_score = own[split.fit], own[split.val], test_images[split.score]
    if len(x_fit) < 1 or len(x_score) < 1:
        raise ConfigError(f"protocol {protocol!r} leaves no images to fit or score; use a larger dataset")
    image_shape = tuple(int(s) for s in test_images.shape[1:])
    attack = ATTACKS.get(name)(cfg, victim, image_shape=image_shape, seed=seed, artifacts=artifacts,
                               save_artifacts=store, progress=progress)
    log.info("attack %s (%s protocol): fit %d, val %d, score %d images", name, protocol, len(x_fit), len(x_val),
             len(x_score))
    started = time.perf_counter()
    # fork_rng: the defenses' noise and the attacker's initialisation are seeded without disturbing the caller's
    # global RNG state.
    device = torch.device(victim.device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        recon = attack.attack(x_fit, x_val, x_score)
    seconds = time.perf_counter() - started
    target = x_score.float().div(255)
    record: dict[str, Any] = {
        "attack": name, "protocol": protocol, "seed": seed, "config": asdict(cfg), "split": split.summary(),
        **reconstruction_metrics(recon, target), "victim_accuracy": victim_acc,
        "baseline": mean_image_baseline(x_fit, x_score), "seconds": seconds, "info": attack.info,
    }
    record.update(assess(record, num_classes))
    log.info("attack %s (%s): mse %.5f  psnr %.2f dB  ssim %.4f  (%.1fs) %s", name, protocol, record["mse"],
             record["psnr"], record["ssim"], seconds, record["status"])
    return record, recon, split, x_score


def run_attack(run: Union[str, LoadedRun], name: str, protocol: str, params: Optional[dict[str, Any]] = None,
               seed: int = 0, *, store: bool = True, device: Optional[str] = None,
               data: Optional[DataBundle] = None, sink: Optional[ResultSink] = None,
               folder: Optional[RunFolder] = None, progress: bool = False) -> dict[str, Any]:
    """Run attack ``name`` under ``protocol`` ("train" or "infer") against a trained run and score it.

    Returns {"attack", "protocol", "seed", "config", "split", "mse", "psnr", "ssim", "n", "victim_accuracy",
    "baseline" (mean-image metrics), "seconds", "info"}; with ``store``, also writes it to
    results/attack-<name>-<protocol>.json in the run directory, with reconstructions of the first scored images
    (results/attack-<name>-<protocol>.recon.pt, for figures), and to ``sink`` (a results database) if given.
    ``data``: the run's datasets when the caller has them already (built once per run, not once per attack);
    ``folder``: the run's folder object when the caller holds one (``splitshield.Run``).
    """
    if isinstance(run, str):
        run = load_run(run, device or "cpu")
    cfg = resolve_attack_config(run.cfg, name, params)
    data = data or build_data(run.cfg.data, run.cfg.seed)
    test = dataset_images(data.test)
    train = dataset_images(data.train) if protocol == "train" else test[:0]
    folder = folder or RunFolder(run.run_dir, sink, run.cfg)
    artifacts = os.path.join(run.run_dir, RESULTS_DIR, f"attack-{protocol}-s{seed}-") if run.run_dir else None
    record, recon, split, x_score = attack_images(
        run, name, protocol, cfg, train, test, num_classes=int(run.info.num_classes), seed=seed,
        victim_acc=victim_accuracy(folder), artifacts=artifacts, store=store, progress=progress)
    if store and run.run_dir:
        key = AttackKey(name, protocol)
        folder.write(key, record)
        k = min(FIGURE_IMAGES, len(recon))
        # clone(): a slice saved as it is takes its whole storage along (every scored image: 7.9 MB on 10k images)
        torch.save({"indices": split.score[:k].clone(), "original": x_score[:k].clone(),
                    "reconstruction": recon[:k].mul(255).round().to(torch.uint8)}, folder.result_path(key, ".recon.pt"))
    return record
