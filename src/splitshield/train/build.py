"""Model + defenses for a config: the one place both are constructed (training, resume, attacks, deployment)."""
from __future__ import annotations

from splitshield.config import ExperimentConfig
from splitshield.data.base import DatasetInfo
from splitshield.defenses import DefenseEnv, DefenseStack
from splitshield.models import SplitModel, build_model


def build_components(cfg: ExperimentConfig, info: DatasetInfo, train_size: int) -> tuple[SplitModel, DefenseStack]:
    model = build_model(cfg.model, info)
    env = DefenseEnv(num_classes=info.num_classes, input_shape=info.input_shape, feature_shape=model.feature_shape,
                     train_size=train_size, epochs=cfg.train.epochs, batch_size=cfg.data.batch_size, seed=cfg.seed)
    defenses = DefenseStack.from_specs(cfg.defenses, env)
    model = defenses.adapt_model(model)
    env.feature_shape = model.feature_shape  # shared by every defense; an adapted edge may change it
    return model, defenses
