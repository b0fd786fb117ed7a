"""Zarr trajectory stores, window sampler, statistics, feature cache and converters."""

from .sampler import WindowSampler, WindowSpec, split_episodes, train_val_samplers
from .store import SCHEMA_VERSION, StoreError, TrajectoryStore, open_store

__all__ = ["TrajectoryStore", "StoreError", "SCHEMA_VERSION", "open_store", "WindowSpec", "WindowSampler",
           "split_episodes", "train_val_samplers", "make_dataloader", "WindowDataset"]


def __getattr__(name):
    # torch-backed names load on first use, so importing vlastack.datasets stays light
    if name in ("make_dataloader", "WindowDataset"):
        from . import torch_dataset

        return getattr(torch_dataset, name)
    raise AttributeError(f"module 'vlastack.datasets' has no attribute {name!r}")
