"""The experiment config: typed dataclasses with their defaults, loaded from YAML presets plus ``--set`` overrides.

Defenses and attacks are lists of components (``{name: gaussian_noise, sigma: 0.025}``). This module knows no
plugins: a component's hyper-parameters are validated against that component's own ``Config`` dataclass by its
registry when the config is resolved (splitshield/resolve.py, which every entry point uses), so that the config
layer sits below everything it configures.

A YAML file may start from another: ``base: ../quick-fmnist.yaml`` (relative to the file) loads that file first and
merges this one over it (mappings key by key, lists and values replaced), so presets name their base instead of
copying it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

import yaml

from splitshield.configtools import apply_overrides, from_dict, load_composed, to_dict
from splitshield.errors import ConfigError


@dataclass
class ComponentSpec:
    """One plugin in a list: its registry name and its hyper-parameters (validated by the plugin's Config)."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_config(cls, value: Any, path: str) -> "ComponentSpec":
        if isinstance(value, str):
            return cls(name=value)
        if not isinstance(value, dict) or "name" not in value:
            raise ConfigError(f"{path}: expected {{name: ..., <hyper-parameters>}}, got {value!r}")
        params = {k: v for k, v in value.items() if k != "name"}
        return cls(name=str(value["name"]), params=params)

    def to_config(self) -> dict[str, Any]:
        return {"name": self.name, **to_dict(self.params)}


@dataclass
class DataConfig:
    name: str = "fashion-mnist"
    root: Optional[str] = None  # overrides the dataset's default location
    train_size: Optional[int] = None  # deterministic subset (first seeded permutation), None = all
    test_size: Optional[int] = None
    batch_size: int = 128
    eval_batch_size: int = 512
    augment: bool = True  # the dataset's paper augmentation (crop+flip+rotation for CIFAR-like data)
    num_workers: int = 0  # loader processes; the datasets are in memory, so 0 is fastest on CPU
    download: bool = True  # allowed to download when the data is missing and the network is reachable
    # Under torchrun with N processes: "global" = batch_size is the global batch (B/N rows per rank: the same
    # optimisation as one process, bit for bit; more GPUs shorten each step); "per_rank" = every rank takes
    # batch_size rows (global batch N x B: N times the throughput per step; scale lr yourself, e.g. linearly).
    ddp_batch: Literal["global", "per_rank"] = "global"

    def check(self, path: str) -> None:
        for key in ("train_size", "test_size"):
            value = getattr(self, key)
            if value is not None and value <= 0:
                raise ConfigError(f"{path}.{key}: must be positive, got {value}")
        if self.batch_size <= 0 or self.eval_batch_size <= 0:
            raise ConfigError(f"{path}.batch_size: must be positive")


@dataclass
class ModelConfig:
    name: str = "vgg11_bn"
    cut: int = 2  # VGG: conv layers c1..c4 on the edge; ResNet-20: convs on the edge (1, 3, 5, ... block ends)
    width: float = 1.0  # channel multiplier (CPU presets use < 1)
    # The paper's 8-channel bottleneck before transmission (every defense row of its tables has it); null: the
    # plain cut (the paper's No_defense row), whose features are the cut layer's own (channels x h x w).
    bottleneck_channels: Optional[int] = 8

    def check(self, path: str) -> None:
        if self.width <= 0:
            raise ConfigError(f"{path}.width: must be positive, got {self.width}")
        if self.bottleneck_channels is not None and self.bottleneck_channels <= 0:
            raise ConfigError(f"{path}.bottleneck_channels: must be positive, or null for no bottleneck")


@dataclass
class TrainConfig:
    epochs: int = 240
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.999)  # adam only
    amsgrad: bool = False  # adam only
    schedule: Literal["multistep", "cosine", "constant"] = "multistep"
    milestones: list[int] = field(default_factory=lambda: [60, 120, 180])
    gamma: float = 0.2
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    # auto: float16 AMP on CUDA, bfloat16 autocast on CPUs with native bf16 (AVX-512 BF16/AMX), else float32
    # (splitshield/precision.py; `splitshield bench train-speed` measures the modes); fp32 is the reference.
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    memory_format: Literal["auto", "channels_last", "contiguous"] = "auto"  # auto: channels-last with bf16/CUDA
    cudnn_benchmark: bool = True  # CUDA: let cuDNN pick the fastest kernels (GPU runs are not bit-reproducible)
    progress: bool = True
    max_steps_per_epoch: Optional[int] = None  # cap for smoke tests and benchmarks

    def check(self, path: str) -> None:
        if self.epochs <= 0:
            raise ConfigError(f"{path}.epochs: must be positive, got {self.epochs}")
        if self.lr <= 0:
            raise ConfigError(f"{path}.lr: must be positive, got {self.lr}")


# Keys that do not change what a run computes (see ``ExperimentConfig.identity``).
IDENTITY_EXCLUDED: tuple[str, ...] = ("name", "data.root", "data.download", "data.num_workers", "data.eval_batch_size",
                                      "train.device", "train.progress", "train.cudnn_benchmark")

# Component parameters added after runs with them at these values existed: (component, parameter) -> that value.
# identity() leaves them out at that value, so the earlier runs keep their folders and results (components
# register theirs where they define the parameter, e.g. defenses/cem.py).
IDENTITY_DEFAULTS: dict[tuple[str, str], Any] = {}


@dataclass
class ExperimentConfig:
    name: str = "experiment"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    defenses: list[ComponentSpec] = field(default_factory=list)  # applied in order; bottleneck is in the model
    attacks: list[ComponentSpec] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def identity(self) -> dict[str, Any]:
        """What makes two runs the same experiment: the config without its label and the knobs that change where
        or how visibly it runs, not what it computes (name, data location, loader workers, device, progress bars,
        evaluation batch size). Meaningful for a resolved config (every component with all its parameters)."""
        view = self.to_dict()
        for dotted in IDENTITY_EXCLUDED:
            node = view
            *parents, leaf = dotted.split(".")
            for key in parents:
                node = node[key]
            node.pop(leaf, None)
        for section in ("defenses", "attacks"):
            for spec in view.get(section, []):
                for (component, key), value in IDENTITY_DEFAULTS.items():
                    if spec.get("name") == component and key in spec and spec[key] == value:
                        del spec[key]
        return view

    def digest(self) -> str:
        """Stable hash of ``identity()``: the run's identity (run folder names, results database)."""
        blob = json.dumps(self.identity(), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def replace(self, **changes: Any) -> "ExperimentConfig":
        return dataclasses.replace(self, **changes)


def _migrate(raw: dict[str, Any]) -> dict[str, Any]:
    """Configs saved before ``train.precision`` existed had ``train.amp`` (mixed precision on CUDA only)."""
    train = raw.get("train")
    if isinstance(train, dict) and "amp" in train:
        amp = train.pop("amp")
        train.setdefault("precision", "auto" if amp else "fp32")
    return raw


def load_config(source: str | dict, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """Load a YAML path (its ``base:`` chain merged) or a raw dict, apply ``--set`` overrides and type-check it.

    Components are checked by name and parameters only when resolved (``splitshield.resolve.load_experiment``)."""
    if isinstance(source, str):
        raw = load_composed(source)
        if not raw:
            raise ConfigError(f"{source} is empty; an experiment config needs at least its data, model and train "
                              "sections (or base: PRESET.yaml), e.g. copy configs/quick-fmnist.yaml")
    else:
        raw = json.loads(json.dumps(source))
    raw = apply_overrides(_migrate(raw), overrides)
    return from_dict(ExperimentConfig, raw, "config")
