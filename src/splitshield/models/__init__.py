"""Split models: a registry of builders with an explicit edge/cloud seam. Every module in this package is
imported, so a new model only needs its own file (a builder registered in ``MODELS``)."""
import sys

from splitshield.models.base import MODELS, Edge, SplitModel, build_model
from splitshield.plugins import import_members

import_members(sys.modules[__name__], skip=("base",))

__all__ = ["MODELS", "Edge", "SplitModel", "build_model"]
