"""Datasets: a registry of sources plus deterministic, seeded loaders."""
from splitshield.data import cifar, folders, idx, synthetic  # noqa: F401  (registration)
from splitshield.data.base import DATASETS, DataSource, DatasetInfo, TensorImageDataset
from splitshield.data.loaders import DataBundle, build_data, to_unit

__all__ = ["DATASETS", "DataSource", "DatasetInfo", "TensorImageDataset", "DataBundle", "build_data", "to_unit"]
