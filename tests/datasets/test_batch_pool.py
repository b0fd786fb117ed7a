"""Shared-memory batch slots: reuse, lifetime of received batches, growth and one-off buffers."""

import os
from multiprocessing.reduction import ForkingPickler

import numpy as np
import pytest
import torch
import torch.multiprocessing  # noqa: F401  (registers the storage reductions the queue uses)

from vlastack.datasets.batch_pool import BatchPool, PooledBatch

LAYOUT = {"img": ((2, 3, 4, 4, 3), np.uint8), "state": ((2, 3, 5), np.float32)}


def _fill(pool: BatchPool, value: int, layout=LAYOUT) -> PooledBatch:
    b = pool.batch(layout)
    for k, (shape, dtype) in layout.items():
        b[k] = b.array(k, shape, dtype)
        b[k][...] = value
    b["img_is_pad"] = np.array([[False, True, False]] * 2)  # (2, 3) travels by value
    b["task"] = ["a", "b"]
    return b


def _send(b: PooledBatch) -> dict:
    """What the main process gets: the batch pickled as a DataLoader worker's queue does it."""
    return ForkingPickler.loads(bytes(ForkingPickler.dumps(b)))


def test_a_received_batch_is_tensors_and_frees_its_slot_when_its_last_view_is_gone():
    pool = BatchPool(max_slots=4)
    got = _send(_fill(pool, 7))
    assert list(got) == ["img", "state", "img_is_pad", "task"] and got["task"] == ["a", "b"]
    assert got["img"].dtype == torch.uint8 and got["img"].shape == (2, 3, 4, 4, 3) and bool((got["img"] == 7).all())
    assert got["state"].dtype == torch.float32 and got["img_is_pad"].dtype == torch.bool
    assert not pool.slots[0].free
    part = got["state"][1, :2]  # a view outlives the batch dict
    del got
    assert not pool.slots[0].free
    second = _send(_fill(pool, 9))  # slot 0 is held: a second slot
    assert len(pool.slots) == 2 and bool((part == 7).all()) and bool((second["state"] == 9).all())
    del part
    assert pool.slots[0].free
    third = _send(_fill(pool, 11))  # slot 0 again, no new slot
    assert len(pool.slots) == 2 and not pool.slots[0].free and bool((third["img"] == 11).all())
    assert bool((second["state"] == 9).all())


def test_full_pool_sends_one_off_buffers_and_a_larger_layout_replaces_a_free_slot():
    pool = BatchPool(max_slots=2)
    held = [_send(_fill(pool, v)) for v in (1, 2, 3, 4)]
    assert len(pool.slots) == 2 and pool.one_off == 2
    assert [int(b["img"][0, 0, 0, 0, 0]) for b in held] == [1, 2, 3, 4]
    del held
    assert all(s.free for s in pool.slots)
    big = {"img": ((8, 3, 4, 4, 3), np.uint8), "state": ((8, 3, 5), np.float32)}
    b = _send(_fill(pool, 5, big))
    assert len(pool.slots) == 2 and pool.slots[0].nbytes >= 8 * 3 * (48 + 20) and bool((b["img"] == 5).all())


def test_a_forked_child_dropping_its_copy_of_a_batch_does_not_free_the_slot():
    pool = BatchPool()
    got = _send(_fill(pool, 3))
    pid = os.fork()
    if pid == 0:  # the child drops its copy and leaves
        del got
        os._exit(0)
    assert os.waitpid(pid, 0)[1] == 0
    assert not pool.slots[0].free and bool((got["img"] == 3).all())
    del got
    assert pool.slots[0].free


def test_layout_mismatch_and_release():
    pool = BatchPool()
    b = pool.batch(LAYOUT)
    with pytest.raises(ValueError, match="img: asked for"):
        b.array("img", (3, 3, 4, 4, 3), np.uint8)
    b.release()
    assert pool.slots[0].free
    with pytest.raises(ValueError, match="max_slots"):
        BatchPool(max_slots=0)
