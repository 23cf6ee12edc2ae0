"""The attack base class: one threat model for every attack, and the chores done once.

Threat model (shared by all attacks): white-box access to the edge encoder (architecture and weights) and to what
leaves the device, i.e. the edge output after the run's defenses (noise, dropout, top-k ...) with their deployed
parameters; full knowledge of the data distribution (the attacker may draw images from it, see _protocols.py).

The base class guarantees that an attack leaves the victim exactly as it found it: parameters and buffers
bit-identical (checked, and restored if a bug changed them), ``.grad`` untouched (victim parameters are frozen with
``requires_grad_(False)`` during the attack and the flags restored) and every submodule's train/eval mode restored.
During the attack the victim runs in eval mode, as deployed.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any, ClassVar, Iterator, Literal, Optional

import torch
from torch import nn
from tqdm.std import tqdm  # not tqdm.auto: it calls iter() on what it wraps when built (train/loop.py)

from splitshield.data import to_unit
from splitshield.precision import Numerics, resolve_numerics

log = logging.getLogger(__name__)


@dataclass
class AttackConfig:
    """Knobs every attack has (subclass Configs add their own hyper-parameters)."""

    train_size: Optional[int] = None  # cap on the attacker's fitting images (seeded subset), None = all
    score_size: Optional[int] = None  # cap on the scored images (a seeded prefix), None = all
    val_fraction: float = 0.05  # of the attacker's own images, held out for checkpoint selection
    batch_size: int = 256
    # The attacker's own network (precision.py): auto = bfloat16 + channels-last on CPUs with native bf16, AMP on
    # CUDA. The victim's edge always runs in float32, as deployed.
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    memory_format: Literal["auto", "channels_last", "contiguous"] = "auto"


class Victim:
    """What an attack may touch: the victim's edge, its defenses and the device (a LoadedRun has all three)."""

    model: nn.Module
    defenses: nn.Module
    device: torch.device


@contextlib.contextmanager
def victim_guard(*modules: nn.Module) -> Iterator[None]:
    """Freeze ``modules`` in eval mode for an attack; afterwards restore modes and requires_grad flags, check that
    parameters, buffers and ``.grad`` are exactly as before (restoring them if not, then raising)."""
    params = [p for m in modules for p in m.parameters()]
    buffers = [b for m in modules for b in m.buffers()]
    flags = [p.requires_grad for p in params]
    grads = [p.grad for p in params]  # identities: nothing may replace or accumulate into them
    grad_values = [None if g is None else g.detach().clone() for g in grads]
    values = [t.detach().clone() for t in params + buffers]
    modes = [(sub, sub.training) for m in modules for sub in m.modules()]
    for p in params:
        p.requires_grad_(False)
    for m in modules:
        m.eval()
    failed = False
    try:
        yield
    except BaseException:
        failed = True
        raise
    finally:
        for sub, mode in modes:
            sub.training = mode
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
        changed = 0
        with torch.no_grad():
            for t, v in zip(params + buffers, values):
                if not torch.equal(t, v):
                    t.copy_(v)
                    changed += 1
            for p, g, gv in zip(params, grads, grad_values):
                if p.grad is not g or (g is not None and not torch.equal(g, gv)):
                    p.grad = g
                    if g is not None:
                        g.copy_(gv)
                    changed += 1
        if changed and not failed:
            raise RuntimeError(f"attack modified {changed} victim tensors (restored); this is a bug in the attack")


class Attack:
    """Base class. Subclasses set ``Config`` and implement ``fit`` (optional) and ``invert``.

    ``fit(x_fit, x_val)`` trains the attacker on images it is allowed to have (uint8, (N, C, H, W)), querying the
    victim through ``self.transmit`` (exactly what leaves the device). ``invert(z)`` maps transmitted features
    (B, *feature_shape) to reconstructions (B, C, H, W) in [0, 1]. Callers use ``attack`` or ``run_attack``.
    """

    Config: ClassVar[type] = AttackConfig
    registry_name: ClassVar[str] = ""

    def __init__(self, cfg: Any, victim: Victim, *, image_shape: tuple[int, int, int], seed: int = 0,
                 artifacts: Optional[str] = None, save_artifacts: bool = False, progress: bool = False) -> None:
        self.cfg = cfg
        self.victim = victim
        self.device = torch.device(victim.device)
        self.image_shape = image_shape
        self.seed = seed
        self.artifacts = artifacts  # path prefix of attacker weights shared between attacks (decoder), or None
        self.save_artifacts = save_artifacts  # write them there (else only read)
        self.progress = progress  # a progress bar over the fit's epochs (a runtime choice, not part of the config)
        self.info: dict[str, Any] = {}  # attack-specific facts for the result record (epochs run, val MSE ...)
        self.numerics: Numerics = resolve_numerics(cfg.precision, cfg.memory_format, self.device)
        self._edge_cache: dict[tuple[int, tuple[int, ...]], torch.Tensor] = {}

    # --- helpers for subclasses ---
    def epoch_bar(self, epochs: int) -> Iterator[int]:
        """``range(epochs)`` behind a progress bar when ``progress`` (a fit that stops early leaves it short)."""
        return iter(tqdm(range(epochs), desc=self.registry_name or "attack", disable=not self.progress,
                         leave=False))

    @torch.no_grad()
    def transmit(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [0, 1] -> what leaves the device, (B, *feature_shape), defenses as deployed."""
        return self.victim.defenses.transform(self.victim.model.edge(x))

    @torch.no_grad()
    def edge_features(self, images: torch.Tensor) -> torch.Tensor:
        """The victim's edge outputs z_hat (N, *feature_shape) of uint8 images, on the attack device.

        Computed once per image set and kept: the edge is deterministic in eval mode, so every epoch of a fitted
        attacker only has to draw the defenses' random transforms (noise, dropout) afresh on these (``pairs``)."""
        key = (images.data_ptr(), tuple(images.shape))
        if key not in self._edge_cache:
            edge = self.victim.model.edge
            self._edge_cache[key] = torch.cat([edge(to_unit(images[i:i + 1024].to(self.device))).float()
                                               for i in range(0, len(images), 1024)]) if len(images) else \
                torch.empty(0, device=self.device)
        return self._edge_cache[key]

    def batches(self, images: torch.Tensor, *, shuffle: bool = False,
                generator: Optional[torch.Generator] = None) -> Iterator[torch.Tensor]:
        """uint8 (N, C, H, W) -> float [0, 1] batches on the attack device."""
        for x, _ in self._batches(images, None, shuffle, generator):
            yield x

    def pairs(self, images: torch.Tensor, *, shuffle: bool = False,
              generator: Optional[torch.Generator] = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(x in [0, 1], transmitted z) batches: z is the defenses' transform of the cached edge output, drawn
        afresh on every call (noise-aware: a new noise sample per pass, as the device would send)."""
        return self._batches(images, self.edge_features(images), shuffle, generator)

    def _batches(self, images: torch.Tensor, feats: Optional[torch.Tensor], shuffle: bool,
                 generator: Optional[torch.Generator]) -> Iterator[tuple[torch.Tensor, Any]]:
        order = torch.randperm(len(images), generator=generator) if shuffle else torch.arange(len(images))
        for i in range(0, len(images), self.cfg.batch_size):
            idx = order[i:i + self.cfg.batch_size]
            x = to_unit(images[idx].to(self.device))
            if feats is None:
                yield x, None
                continue
            with torch.no_grad():
                z = self.victim.defenses.transform(feats[idx.to(feats.device)])
            yield x, z

    # --- the work ---
    def fit(self, x_fit: torch.Tensor, x_val: torch.Tensor) -> None:
        """Train the attacker (no-op for attacks without a learned part)."""

    def invert(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def attack(self, x_fit: torch.Tensor, x_val: torch.Tensor, x_score: torch.Tensor) -> torch.Tensor:
        """Fit, then reconstruct ``x_score`` (uint8) from its transmitted features -> float (N, C, H, W) on CPU."""
        with victim_guard(self.victim.model, self.victim.defenses):
            self.fit(x_fit, x_val)
            outputs = []
            for _, z in self.pairs(x_score):
                outputs.append(self.invert(z).detach().float().clamp(0, 1).cpu())
            self._edge_cache.clear()
        return torch.cat(outputs)
