"""Split models: a registry of builders with an explicit edge/cloud seam."""
from splitshield.models import resnet, vgg  # noqa: F401  (registration)
from splitshield.models.base import MODELS, Edge, SplitModel, build_model

__all__ = ["MODELS", "Edge", "SplitModel", "build_model"]
