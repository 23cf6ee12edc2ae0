"""Model + defenses for a config: the one place both are constructed (training, resume, attacks, deployment), and
loading a trained run back from its folder."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional

import torch

from splitshield.config import ExperimentConfig
from splitshield.data.base import DatasetInfo
from splitshield.data.loaders import make_source
from splitshield.defenses import DefenseEnv, DefenseStack
from splitshield.errors import CheckpointError
from splitshield.models import SplitModel, build_model
from splitshield.runs import load_run_config
from splitshield.train.checkpoint import CHECKPOINT, load_checkpoint


def build_components(cfg: ExperimentConfig, info: DatasetInfo, train_size: int) -> tuple[SplitModel, DefenseStack]:
    """The split model and its defense stack (architecture defenses applied to the model, in order)."""
    model = build_model(cfg.model, info)
    from splitshield import parallel

    cap = cfg.train.max_steps_per_epoch
    world = parallel.world_size()
    batch = cfg.data.batch_size * (world if cfg.data.ddp_batch == "per_rank" else 1)  # the global batch
    per_epoch = min(train_size, cap * batch) if cap is not None else None
    env = DefenseEnv(num_classes=info.num_classes, input_shape=info.input_shape, feature_shape=model.feature_shape,
                     train_size=train_size, epochs=cfg.train.epochs, batch_size=batch, seed=cfg.seed,
                     samples_per_epoch=per_epoch, precision=cfg.train.precision,
                     memory_format=cfg.train.memory_format)
    defenses, model = DefenseStack.build(cfg.defenses, env, model)
    return model, defenses  # type: ignore[return-value]


@dataclass
class LoadedRun:
    """A trained run ready for attacks, audits and deployment (eval mode, on ``device``)."""

    run_dir: str
    cfg: ExperimentConfig
    model: torch.nn.Module  # SplitModel
    defenses: torch.nn.Module  # DefenseStack
    info: Any  # DatasetInfo
    epoch: int
    device: torch.device

    def transmit(self, x: torch.Tensor) -> torch.Tensor:
        """What leaves the device for input x in [0, 1]: defenses applied to the edge output."""
        return self.defenses.transform(self.model.edge(x))


def load_run(run_dir: str, device: str | torch.device = "cpu", info: Optional[DatasetInfo] = None,
             cfg: Optional[ExperimentConfig] = None) -> LoadedRun:
    """Rebuild model and defenses from a run directory and load its last checkpoint."""
    cfg = cfg or load_run_config(run_dir)
    state = load_checkpoint(os.path.join(run_dir, CHECKPOINT), map_location="cpu")
    info = info or make_source(cfg.data).dataset_info()
    model, defenses = build_components(cfg, info, train_size=int(state.get("train_size", 1)))
    try:
        model.load_state_dict(state["model"])
        defenses.load_state_dict(state["defenses"])
    except (RuntimeError, KeyError) as exc:
        raise CheckpointError(f"checkpoint in {run_dir} does not match its config.yaml ({str(exc)[:100]}...); "
                              "was the config edited after training?") from None
    device = torch.device(device)
    model.to(device).eval()
    defenses.to(device).eval()
    return LoadedRun(run_dir, cfg, model, defenses, info, int(state["epoch"]), device)
