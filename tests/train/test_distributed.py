"""Two CPU processes on the gloo backend train what one process trains with the same global batch."""
from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from vlastack.rollout.common import compose
from vlastack.train.checkpoint import load_state, read_pointer
from vlastack.train.config import from_hydra
from vlastack.train.loop import train

from .helpers import make_store


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _overrides(store, run_dir, *extra):
    return ["policy=dust", "policy.preset=tiny", "train=debug", "progress=false", f"dataset.path={store}",
            f"run_dir={run_dir}", "train.steps=3", "train.batch_size=8", "train.val_every=0", "train.ckpt_every=0",
            "train.schedule.warmup_steps=1", *extra]


def _worker(rank: int, world: int, port: int, overrides: list[str]) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    train(from_hydra(compose("train", overrides)))


def _spawn(world: int, overrides: list[str]) -> None:
    mp.spawn(_worker, args=(world, _free_port(), overrides), nprocs=world, join=True)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("dist") / "demos.zarr", episodes=6, length=12)


def test_two_gloo_ranks_match_one_process_with_the_same_global_batch(tmp_path, store):
    # one process: 2 micro-batches of 4 per step; two ranks: 1 micro-batch of 4 each (global batch 8)
    one = train(from_hydra(compose("train", _overrides(store, tmp_path / "one", "train.grad_accum=2"))))
    assert one["world_size"] == 1
    _spawn(2, _overrides(store, tmp_path / "two", "train.grad_accum=1"))
    a = load_state(read_pointer(Path(tmp_path / "one", "checkpoints"), "last"))
    b = load_state(read_pointer(Path(tmp_path / "two", "checkpoints"), "last"))
    assert a["step"] == b["step"] == 3 and b["data"]["world"] == 2
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], atol=1e-5, rtol=1e-4, msg=f"model {k}")
    for k in a["ema"]["shadow"]:
        torch.testing.assert_close(a["ema"]["shadow"][k], b["ema"]["shadow"][k], atol=1e-5, rtol=1e-4)
    # (often bitwise equal: (g1 + g2) / 2 and g1 / 2 + g2 / 2 round alike). A rank that skipped the
    # all-reduce would follow its own chunk only and leave rank 0's weights away from the 1-process run.


def _assert_same(a: dict, b: dict) -> None:
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], atol=1e-5, rtol=1e-4, msg=f"model {k}")
    for k in a["ema"]["shadow"]:
        torch.testing.assert_close(a["ema"]["shadow"][k], b["ema"]["shadow"][k], atol=1e-5, rtol=1e-4)


FSDP = ["train.grad_accum=1", "train.strategy=fsdp"]


def test_fsdp_shards_the_blocks_and_matches_one_process(tmp_path, store):
    """train.strategy=fsdp (FSDP2 on the transformer blocks) trains the same weights as one process."""
    from vlastack.policies.base import make_policy
    from vlastack.train.distributed import wrap_units

    units = wrap_units(make_policy("dust", "tiny"))
    assert units and all(any(p.requires_grad for p in u.parameters()) for u in units)
    assert not any(isinstance(m, (torch.nn.ModuleList, torch.nn.ModuleDict)) for m in units)
    train(from_hydra(compose("train", _overrides(store, tmp_path / "one", "train.grad_accum=2"))))
    _spawn(2, _overrides(store, tmp_path / "two", *FSDP))
    a = load_state(read_pointer(Path(tmp_path / "one", "checkpoints"), "last"))
    b = load_state(read_pointer(Path(tmp_path / "two", "checkpoints"), "last"))
    assert a["step"] == b["step"] == 3
    _assert_same(a, b)


@pytest.mark.slow
def test_fsdp_resume_from_gathered_checkpoint(tmp_path, store):
    """An FSDP run stopped and resumed (optimizer and EMA re-sharded) equals the uninterrupted 1-process run."""
    train(from_hydra(compose("train", _overrides(store, tmp_path / "one", "train.grad_accum=2"))))
    _spawn(2, _overrides(store, tmp_path / "two", *FSDP, "train.stop_after_steps=2"))
    assert load_state(read_pointer(Path(tmp_path / "two", "checkpoints"), "last"))["step"] == 2
    _spawn(2, _overrides(store, tmp_path / "two", *FSDP))
    a = load_state(read_pointer(Path(tmp_path / "one", "checkpoints"), "last"))
    b = load_state(read_pointer(Path(tmp_path / "two", "checkpoints"), "last"))
    assert a["step"] == b["step"] == 3
    _assert_same(a, b)
