"""Datasets: a registry of sources plus deterministic, seeded loaders. Every source module in this package is
imported, so a new dataset only needs its own file (a ``DataSource`` subclass registered in ``DATASETS``)."""
import sys

from splitshield.data.base import DATASETS, DataSource, DatasetInfo, TensorImageDataset
from splitshield.data.loaders import DataBundle, build_data, to_unit
from splitshield.plugins import import_members

import_members(sys.modules[__name__], skip=("base", "loaders", "augment", "prepare"))

__all__ = ["DATASETS", "DataSource", "DatasetInfo", "TensorImageDataset", "DataBundle", "build_data", "to_unit"]
