"""Site data: built-in datasets, partitioners, user-data loaders and privacy-safe statistics.

Everything ends in a ``FederatedDataset`` (``fedblend.data.base``). Built-in datasets are read
from the data directory (``--data-dir`` / ``FEDBLEND_DATA_DIR``), never downloaded.
"""

from __future__ import annotations

from fedblend.data import partition
from fedblend.data.base import ArraySplit, FederatedDataset, SiteData
from fedblend.data.datadir import DATA_DIR_ENV, resolve_data_dir
from fedblend.data.federate import federate, site_names
from fedblend.data.heart import load_heart_disease
from fedblend.data.idx import load_idx_pair, read_idx
from fedblend.data.leaf import SHAKESPEARE_VOCAB, encode_text, load_femnist, load_shakespeare
from fedblend.data.registry import DATASETS, DatasetInfo, load_dataset
from fedblend.data.stats import (
    heterogeneity,
    js_divergence,
    label_counts,
    label_distribution,
    site_stats,
    summary_table,
)
from fedblend.data.user import from_arrays, from_torch_dataset, load_tabular_sites, torch_to_split

__all__ = [
    "ArraySplit",
    "SiteData",
    "FederatedDataset",
    "DATA_DIR_ENV",
    "resolve_data_dir",
    "DATASETS",
    "DatasetInfo",
    "load_dataset",
    "load_heart_disease",
    "load_idx_pair",
    "read_idx",
    "load_femnist",
    "load_shakespeare",
    "SHAKESPEARE_VOCAB",
    "encode_text",
    "load_tabular_sites",
    "from_arrays",
    "from_torch_dataset",
    "torch_to_split",
    "federate",
    "site_names",
    "partition",
    "site_stats",
    "label_counts",
    "label_distribution",
    "js_divergence",
    "heterogeneity",
    "summary_table",
]
