"""Datasets: registry, loaders (hub, folder, digits), transforms and prompt data.

Every module of this package is imported here, so a new dataset loader is one new file that registers itself with
``@register_dataset`` (docs/architecture.md).
"""

from clipadapt.data.base import ClassificationDataset, Split
from clipadapt.data.registry import DATASETS, DataConfig, dataset_usages, load_dataset
from clipadapt.registry import import_submodules

import_submodules(__name__, __path__)

__all__ = ["DATASETS", "ClassificationDataset", "DataConfig", "Split", "dataset_usages", "load_dataset"]
