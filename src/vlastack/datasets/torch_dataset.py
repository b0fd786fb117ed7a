"""A torch Dataset and DataLoader over a :class:`~vlastack.datasets.sampler.WindowSampler`.

Batches follow the data contract: images uint8 (B, T, H, W, 3), state (B, T, D_s) and
action (B, H, D_a) float32, ``<key>_is_pad`` (B, T) bool, cached features under
``features.<encoder>.<key>``, ``task`` a list of B strings, plus ``episode_index``,
``frame_index`` and ``index`` (B,) int64. The dataset fetches whole batches at once
(``__getitems__``), so every frame of a batch is read in one pass; worker processes each
reopen the store lazily (the open store never crosses a process boundary) and decode frames
straight into shared-memory slots that they reuse from batch to batch
(:mod:`vlastack.datasets.batch_pool`; a slot is reused only once the batch in it is gone).
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from vlastack.types import TASK

from .batch_pool import PooledBatch, pooled_batch
from .sampler import WindowSampler, WindowSpec, split_episodes
from .store import TrajectoryStore


def batch_to_torch(batch: Mapping[str, Any]) -> dict[str, Any]:
    """numpy arrays -> tensors (no copy for contiguous arrays); lists (``task``) pass through."""
    return {k: (torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v) for k, v in batch.items()}


class WindowDataset(Dataset):
    """Map-style dataset of windows; ``dataset[i]`` is one window, ``__getitems__`` a whole batch."""

    def __init__(self, sampler: WindowSampler):
        self.sampler = sampler

    def __len__(self) -> int:
        return len(self.sampler)

    def __getitem__(self, i: int) -> dict[str, Any]:
        """One window as tensors: key -> (T, ...), masks (T,), ``task`` a string."""
        return batch_to_torch(self.sampler[i])

    def __getitems__(self, indices: Sequence[int]) -> dict[str, Any]:
        """A batch. In a worker process the arrays are written straight into a reused shared-memory
        slot of the worker's :class:`~vlastack.datasets.batch_pool.BatchPool`, so handing the batch
        to the main process copies nothing and allocates nothing; in the main process it returns
        numpy (:func:`collate_windows` wraps it)."""
        idx = np.asarray(indices, np.int64)
        if torch.utils.data.get_worker_info() is None:
            return self.sampler.get_batch(idx)
        return pooled_batch(self.sampler, idx)


def collate_windows(batch: Any) -> dict[str, Any]:
    """Collate for :class:`WindowDataset`: a batch dict from ``__getitems__`` or a list of windows."""
    if isinstance(batch, PooledBatch):
        return batch  # in a worker: pickles into tensors over its shared-memory slot
    if isinstance(batch, Mapping):
        return batch_to_torch(batch)
    out: dict[str, Any] = {}
    for k in batch[0]:
        vals = [b[k] for b in batch]
        out[k] = vals if k == TASK else torch.stack([torch.as_tensor(v) for v in vals])
    return out


def _worker_init(worker_id: int) -> None:
    """One thread per worker process: torch's and Blosc's (workers already run side by side)."""
    torch.set_num_threads(1)
    single_thread_blosc()


def single_thread_blosc() -> None:
    """Decompress Blosc chunks in the calling thread only (no Blosc thread pool), where numcodecs is installed.

    In a DataLoader worker numcodecs would start a pool of its own (its default uses threads
    in a process's main thread), so N workers ran up to N x cores decompression threads.
    """
    try:
        from numcodecs import blosc
    except ImportError:  # pragma: no cover - numcodecs comes with zarr
        return
    blosc.use_threads = False


def make_dataloader(store: TrajectoryStore | str | os.PathLike, window: WindowSpec | Mapping[str, Sequence[int]],
                    batch_size: int = 64, split: str = "all", val_fraction: float = 0.1, seed: int = 0,
                    shuffle: bool | None = None, num_workers: int = 0, drop_last: bool | None = None,
                    require_action: bool = False, feature_encoder: str | None = None,
                    persistent_workers: bool | None = None, prefetch_factor: int | None = None,
                    pin_memory: bool = False) -> DataLoader:
    """A DataLoader of windows from ``store`` (path or open store).

    ``split``: "train", "val" or "all" (by episode, seeded by ``seed``); ``shuffle`` and
    ``drop_last`` default to True for "train". The order is deterministic given ``seed``.
    """
    if split not in ("train", "val", "all"):
        raise ValueError(f"split: {split!r} not one of ('train', 'val', 'all')")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size: {batch_size} must be >= 1")
    if not isinstance(store, TrajectoryStore):
        store = TrajectoryStore.open(store, verify="fast")
    episodes = None
    if split != "all":
        train, val = split_episodes(store.num_episodes, val_fraction, seed)
        episodes = train if split == "train" else val
    sampler = WindowSampler(store, window, episodes, require_action=require_action, feature_encoder=feature_encoder)
    if len(sampler) == 0:
        raise ValueError(f"split {split!r} of {store.path} has no windows ({store.num_episodes} episodes, "
                         f"val_fraction={val_fraction})")
    shuffle = (split == "train") if shuffle is None else shuffle
    drop_last = (split == "train" and len(sampler) >= batch_size) if drop_last is None else drop_last
    gen = torch.Generator()
    gen.manual_seed(int(seed))
    kwargs: dict[str, Any] = {}
    if num_workers > 0:
        kwargs["worker_init_fn"] = _worker_init
        kwargs["persistent_workers"] = True if persistent_workers is None else persistent_workers
        if prefetch_factor is not None:
            kwargs["prefetch_factor"] = prefetch_factor
    return DataLoader(WindowDataset(sampler), batch_size=int(batch_size), shuffle=shuffle, drop_last=drop_last,
                      num_workers=int(num_workers), collate_fn=collate_windows, generator=gen,
                      pin_memory=pin_memory, **kwargs)
