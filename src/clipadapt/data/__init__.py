"""Datasets: registry, loaders (hub, folder, digits), transforms and prompt data."""

from clipadapt.data import digits, folder, hub  # noqa: F401  (registration)
from clipadapt.data.base import ClassificationDataset, Split
from clipadapt.data.registry import DATASETS, DataConfig, dataset_usages, load_dataset
from clipadapt.world import tasks as _world_tasks  # noqa: F401  (registration)

__all__ = ["DATASETS", "ClassificationDataset", "DataConfig", "Split", "dataset_usages", "load_dataset"]
