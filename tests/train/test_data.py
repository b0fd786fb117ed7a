"""Training data order: micro-batches read ahead in workers equal the inline ones; oversampled tasks."""

import numpy as np
import pytest
import torch

from vlastack.datasets.sampler import WindowSampler, WindowSpec
from vlastack.train import data as D
from vlastack.train.config import DatasetConfig, TrainConfigError

from .helpers import make_store


def test_step_batches_from_workers_equal_inline(tmp_path):
    """Two stores (a batch mixes them), 2 micro-batches per step, read ahead by 2 workers into reused
    shared-memory slots: every micro-batch equals the inline read, also when earlier steps are kept."""
    stores = [make_store(tmp_path / f"s{i}", episodes=3, length=8, size=(8, 8), seed=i) for i in range(2)]
    sampler = D.MultiSampler([WindowSampler(s, WindowSpec(n_obs=2, horizon=3)) for s in stores])
    order = D.StepOrder(len(sampler), batch_size=6, seed=0, grad_accum=2)
    data = D.StepBatches(sampler, order, rank=0)
    held = list(D.step_batches(data, 0, 12, num_workers=2))  # every step kept until the end
    assert len(held) == 12
    for step, micro in enumerate(held):
        want = data[step]
        assert len(micro) == len(want) == 2
        for got, ref in zip(micro, want):
            assert list(got) == list(ref)
            for k, v in ref.items():
                if torch.is_tensor(v):
                    assert got[k].dtype == v.dtype, k
                    np.testing.assert_array_equal(got[k].numpy(), v.numpy(), err_msg=k)
                else:
                    assert got[k] == v, k
    spans = [len(set(np.searchsorted(sampler.offsets, ix, side="right"))) for s in range(12)
             for ix in order.rank_chunks(s, 0)]
    assert max(spans) == 2  # some micro-batches mix the two stores


def test_oversample_reads_a_tasks_windows_k_times_per_epoch(tmp_path):
    """dataset.oversample: every window of the named task is read k times per epoch, the others once,
    in the same (seed, step) order on every run; a task that is not there is refused, naming those that are."""
    store = make_store(tmp_path / "s", episodes=4, length=6, size=(8, 8))  # tasks alternate: open, close
    sampler = D.MultiSampler([WindowSampler(store, WindowSpec(n_obs=1, horizon=2))])
    assert D.oversample_map(sampler, None) is None
    index_map = D.oversample_map(sampler, {"open the drawer": 3})
    task = np.array([sampler.samplers[0].instructions[e] for e in sampler.samplers[0].anchor_episode])  # (N,)
    assert len(index_map) == 3 * (task == "open the drawer").sum() + (task == "close the drawer").sum()
    order = D.StepOrder(len(sampler), batch_size=4, seed=0, index_map=index_map)
    assert len(index_map) % 4 == 0  # 48 positions: one epoch is 12 whole steps
    epoch = np.concatenate([order.step_indices(s) for s in range(len(index_map) // 4)])  # (48,)
    np.testing.assert_array_equal(np.bincount(epoch, minlength=len(sampler)),
                                  np.where(task == "open the drawer", 3, 1))
    again = D.StepOrder(len(sampler), batch_size=4, seed=0, index_map=index_map)
    np.testing.assert_array_equal(again.step_indices(3), order.step_indices(3))
    with pytest.raises(TrainConfigError, match=r"\['OpenOven'\] name no training episode; task ids: \['close the"):
        D.oversample_map(sampler, {"OpenOven": 2})
    for bad in ({"x": 0}, {"x": 1.5}):
        with pytest.raises(TrainConfigError, match="dataset.oversample"):
            DatasetConfig(path="s", oversample=bad)


def test_dataset_tasks_keeps_episodes_by_task_id_or_instruction(tmp_path):
    """dataset.tasks matches an episode by its task id or by its instruction (the same rule as oversample)."""
    from vlastack.datasets.store import TrajectoryStore

    store = TrajectoryStore.open(make_store(tmp_path / "s", episodes=4, length=6, size=(8, 8)), verify="none")
    for tasks, want in ((["open the drawer"], [0, 2]), (["close the drawer", "OpenOven"], [1, 3]), (None, [0, 1, 2, 3])):
        train, _ = D.select_episodes(store, DatasetConfig(path="s", tasks=tasks, val_fraction=0.0), seed=0)
        assert sorted(train.tolist()) == want, tasks
    assert D.task_key({"task_id": "TurnOnStove", "instruction": "turn on the left burner"},
                      {"turn on the left burner": 2, "TurnOnStove": 3}) == "TurnOnStove"  # the task id first
