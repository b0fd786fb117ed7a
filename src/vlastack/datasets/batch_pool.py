"""Shared-memory batch buffers that a DataLoader worker reuses from batch to batch.

A worker process hands each batch to the training process through shared memory. A fresh
shared-memory buffer per array per batch (torch's default) costs about 5 ms of CPU per 6 MiB:
the kernel zero-fills and maps every page, and frees them again when the batch dies. Here a
worker keeps a few buffers ("slots"), one per batch for all of its arrays, and writes each batch
into a free one, so the pages are faulted in once per slot, not once per batch; the batch crosses
the process boundary as one storage (one file descriptor) instead of one per array.

Lifetime: byte 0 of a slot says whether a batch uses it. The worker sets it when it fills the
slot; the receiving process clears it when the last tensor of that batch is gone (views and
slices of it included): the tensors are numpy-backed views of a lease object whose ``__del__``
clears the byte (in the process that received it: a forked child's copy does not count). So a
slot is never refilled while any part of a batch that uses it is alive, however long the training
loop holds it. When every slot is in use, the worker adds one, up
to ``max_slots``; past that it sends one-off buffers (freed with their batch, as torch does).
"""

from __future__ import annotations

import ctypes
import os
from typing import Any, Mapping

import numpy as np
import torch

_HEADER = 64  # bytes before the first array; byte 0: 1 while a batch uses the slot
_ALIGN = 64


def _aligned(n: int) -> int:
    return (int(n) + _ALIGN - 1) // _ALIGN * _ALIGN


class _Slot:
    """One shared-memory buffer of ``nbytes`` (header included) and a uint8 view of it."""

    def __init__(self, nbytes: int, pooled: bool):
        self.storage = torch.UntypedStorage._new_shared(int(nbytes))
        self.mem = torch.empty(0, dtype=torch.uint8).set_(self.storage).numpy()  # (nbytes,) uint8
        self.pooled = pooled

    @property
    def nbytes(self) -> int:
        return len(self.mem)

    @property
    def free(self) -> bool:
        return self.mem[0] == 0


class BatchPool:
    """A worker's slots. :meth:`batch` returns a :class:`PooledBatch` with arrays laid out in a free slot."""

    def __init__(self, max_slots: int = 8):
        if int(max_slots) < 1:
            raise ValueError(f"max_slots: {max_slots} must be >= 1")
        self.max_slots = int(max_slots)
        self.slots: list[_Slot] = []
        self.pid = os.getpid()
        self.one_off = 0  # batches sent in one-off buffers (every slot was in use)

    def _take(self, nbytes: int) -> _Slot:
        """A free slot of at least ``nbytes``, marked in use."""
        free = [i for i, s in enumerate(self.slots) if s.free]
        fits = [i for i in free if self.slots[i].nbytes >= nbytes]
        if fits:
            slot = self.slots[fits[0]]
        elif free:  # a free slot too small for this layout: replace it
            slot = self.slots[free[0]] = _Slot(nbytes, pooled=True)
        elif len(self.slots) < self.max_slots:
            slot = _Slot(nbytes, pooled=True)
            self.slots.append(slot)
        else:
            self.one_off += 1
            slot = _Slot(nbytes, pooled=False)
        slot.mem[0] = 1
        return slot

    def batch(self, layout: Mapping[str, tuple[tuple[int, ...], np.dtype]]) -> "PooledBatch":
        """Room for the arrays ``layout`` (key -> (shape, dtype)) in one slot: a :class:`PooledBatch`."""
        entries: dict[str, tuple[int, tuple[int, ...], np.dtype]] = {}
        off = _HEADER
        for key, (shape, dtype) in layout.items():
            dtype = np.dtype(dtype)
            entries[key] = (off, tuple(int(s) for s in shape), dtype)
            off = _aligned(off + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize)
        return PooledBatch(self._take(off), entries)


_pool: BatchPool | None = None


def worker_pool() -> BatchPool:
    """This process's pool, made on first use (a forked child makes its own)."""
    global _pool
    if _pool is None or _pool.pid != os.getpid():
        _pool = BatchPool()
    return _pool


def pooled_batch(sampler: Any, indices: np.ndarray) -> "PooledBatch":
    """``sampler.get_batch(indices)`` written straight into a slot of this process's pool.

    ``sampler``: a :class:`~vlastack.datasets.sampler.WindowSampler` or anything with its
    ``batch_layout(n)`` and ``get_batch(indices, alloc=)``.
    """
    batch = worker_pool().batch(sampler.batch_layout(len(indices)))
    try:
        batch.update(sampler.get_batch(indices, alloc=batch.array))
    except BaseException:
        batch.release()
        raise
    return batch


class PooledBatch(dict):
    """A batch being filled in a worker: a dict whose arrays in ``entries`` live in one pool slot.

    Pickled (sent to the main process) it becomes a plain dict of tensors over the slot's shared
    memory, numpy values as tensors and other values (``task``) as they are; the slot is freed
    when the last of those tensors is gone. Values set besides the slot's arrays travel by value.
    """

    def __init__(self, slot: _Slot, entries: Mapping[str, tuple[int, tuple[int, ...], np.dtype]]):
        super().__init__()
        self.slot = slot
        self.entries = dict(entries)

    def array(self, key: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """The slot's array for ``key`` (an ``alloc`` for :meth:`WindowSampler.get_batch`); must match the layout."""
        off, want_shape, want_dtype = self.entries[key]
        if tuple(shape) != want_shape or np.dtype(dtype) != want_dtype:
            raise ValueError(f"{key}: asked for {tuple(shape)} {np.dtype(dtype)}, the layout has {want_shape} {want_dtype}")
        n = int(np.prod(want_shape, dtype=np.int64)) * want_dtype.itemsize
        return self.slot.mem[off:off + n].view(want_dtype).reshape(want_shape)

    def release(self) -> None:
        """Give the slot back unsent (the batch failed)."""
        self.slot.mem[0] = 0

    def __reduce__(self):
        items = [(k, self.entries[k][0] if k in self.entries else None, v if k not in self.entries else None)
                 for k, v in self.items()]
        return _rebuild, (self.slot.storage, self.slot.pooled, self.entries, items)


class _Lease:
    """Owner of a received batch's memory: numpy arrays over the slot point here; frees the slot when dropped."""

    def __init__(self, storage: torch.UntypedStorage, pooled: bool):
        self.storage = storage  # keeps the mapping alive until the flag is cleared
        self.pooled = pooled
        self.pid = os.getpid()  # a forked child's copy of a batch is not the batch
        self.__array_interface__ = {"data": (storage.data_ptr(), False), "shape": (storage.nbytes(),),
                                    "typestr": "|u1", "version": 3}

    def __del__(self):
        if self.pooled and os.getpid() == self.pid:
            ctypes.memset(self.storage.data_ptr(), 0, 1)


def _rebuild(storage: torch.UntypedStorage, pooled: bool, entries: Mapping[str, tuple[int, tuple[int, ...], np.dtype]],
             items: list[tuple[str, int | None, Any]]) -> dict[str, Any]:
    """The receiving side of :meth:`PooledBatch.__reduce__`: key -> tensor over the slot, in the batch's order."""
    mem = np.asarray(_Lease(storage, pooled))  # (nbytes,) uint8; its base is the lease
    out: dict[str, Any] = {}
    for key, off, value in items:
        if off is not None:
            _, shape, dtype = entries[key]
            n = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            out[key] = torch.from_numpy(mem[off:off + n].view(dtype).reshape(shape))  # (B, ...) in shared memory
        elif isinstance(value, np.ndarray):
            out[key] = torch.from_numpy(value)
        else:
            out[key] = value
    return out
