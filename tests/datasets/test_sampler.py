"""Window sampler properties (hypothesis), splits, feature cache reads and the torch DataLoader."""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vlastack.datasets.features import PooledPixelEncoder, cache_features
from vlastack.datasets.sampler import WindowSampler, WindowSpec, split_episodes, train_val_samplers
from vlastack.datasets.store import StoreError, TrajectoryStore
from vlastack.datasets.torch_dataset import make_dataloader
from vlastack.types import (ACTION, EPISODE_INDEX, FRAME_INDEX, STATE, TASK, DatasetSpec, fake_batch, feature_key,
                            image_key, pad_key)

SPEC = DatasetSpec.robot(cameras=("left", "wrist"), image_size=(8, 8), state_dim=2, action_dim=3)
LEFT, WRIST = image_key("left"), image_key("wrist")
LENGTHS = [1, 2, 5, 9, 3]
VIDEO_ONLY = {2}


def _episode(i: int, n: int, start: int) -> dict[str, np.ndarray]:
    """Frames whose values encode their global index g: every read can be checked exactly."""
    g = np.arange(start, start + n)
    img = np.zeros((n, 8, 8, 3), np.uint8)
    img[:, 0, 0, 0] = g % 256
    img[:, 0, 0, 1] = g // 256
    out = {LEFT: img, WRIST: 255 - img,
           STATE: np.stack([g, g * 10], 1).astype(np.float32),
           ACTION: np.stack([g, -g, g + 0.5], 1).astype(np.float32)}
    if i in VIDEO_ONLY:
        del out[ACTION]
    return out


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("sampler") / "s"
    with TrajectoryStore.create(path, SPEC) as store:
        start = 0
        for i, n in enumerate(LENGTHS):
            store.append_episode(_episode(i, n, start), task=f"instruction {i}")
            start += n
    return path


@pytest.fixture(scope="module")
def store(store_path):
    return TrajectoryStore.open(store_path)


def _global(batch_img: np.ndarray) -> np.ndarray:
    return batch_img[..., 0, 0, 0].astype(np.int64) + 256 * batch_img[..., 0, 0, 1].astype(np.int64)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n_obs=st.integers(1, 4), horizon=st.integers(1, 12), future=st.one_of(st.none(), st.integers(1, 10)),
       n_past=st.integers(0, 3), data=st.data())
def test_windows_stay_in_episode_and_masks_are_exact(store, n_obs, horizon, future, n_past, data):
    n_past = min(n_past, horizon - 1)
    win = WindowSpec(n_obs=n_obs, horizon=horizon, future_offset=future, n_past_actions=n_past)
    sampler = WindowSampler(store, win)
    assert len(sampler) == sum(LENGTHS)
    idx = np.array(data.draw(st.lists(st.integers(0, len(sampler) - 1), min_size=1, max_size=12)))
    b = sampler.get_batch(idx)
    ends = np.cumsum(LENGTHS)
    starts = ends - LENGTHS
    t_img = n_obs + (future is not None)
    assert b[LEFT].shape == (len(idx), t_img, 8, 8, 3) and b[LEFT].dtype == np.uint8
    assert b[STATE].shape == (len(idx), n_obs, 2) and b[ACTION].shape == (len(idx), horizon, 3)
    for j, i in enumerate(idx):
        ep, f = int(b[EPISODE_INDEX][j]), int(b[FRAME_INDEX][j])
        t = starts[ep] + f
        assert b[TASK][j] == f"instruction {ep}"
        offsets = {LEFT: list(range(-n_obs + 1, 1)) + ([future] if future else []),
                   STATE: list(range(-n_obs + 1, 1)), ACTION: list(range(-n_past, horizon - n_past))}
        for key, offs in offsets.items():
            want = t + np.array(offs)
            inside = (want >= starts[ep]) & (want < ends[ep])
            clipped = np.clip(want, starts[ep], ends[ep] - 1)  # edge frame repeated
            pad = ~inside | ((key == ACTION) and ep in VIDEO_ONLY)
            np.testing.assert_array_equal(b[pad_key(key)][j], pad, err_msg=f"{key} mask, anchor {i}")
            assert b[pad_key(key)].dtype == bool
            if key == LEFT:
                got = _global(b[LEFT][j])
                np.testing.assert_array_equal(_global(255 - b[WRIST][j]), clipped)
            elif key == STATE:
                got = b[STATE][j][:, 0].astype(np.int64)
            else:
                if ep in VIDEO_ONLY:
                    assert not b[ACTION][j].any()  # zeros, all masked
                    continue
                got = b[ACTION][j][:, 0].astype(np.int64)
            np.testing.assert_array_equal(got, clipped, err_msg=f"{key}, anchor {i}")
            assert ((got >= starts[ep]) & (got < ends[ep])).all()  # every row inside its episode
        if future is not None:  # the future frame is the last image step
            assert _global(b[LEFT][j, -1]) == min(t + future, ends[ep] - 1)


def test_window_spec_and_fake_batch_agree(store):
    for future in (None, 3):
        win = WindowSpec(n_obs=2, horizon=4, future_offset=future)
        b = WindowSampler(store, win).get_batch(np.arange(4))
        fake = fake_batch(SPEC, batch_size=4, n_obs=2, horizon=4, future_offset=future, as_torch=False)
        for k, v in fake.items():
            if k == TASK:
                assert isinstance(b[k], list) and len(b[k]) == 4
                continue
            assert b[k].shape == v.shape and b[k].dtype == v.dtype, k
    d = WindowSpec(n_obs=2, horizon=3, future_offset=5, future_keys=(LEFT,)).delta_indices(SPEC)
    assert d == {LEFT: [-1, 0, 5], WRIST: [-1, 0], STATE: [-1, 0], ACTION: [0, 1, 2]}
    with pytest.raises(ValueError, match="n_obs"):
        WindowSpec(n_obs=0)
    with pytest.raises(ValueError, match="future_offset"):
        WindowSpec(future_offset=0)


def test_policy_delta_indices_drive_the_sampler(store):
    deltas = {LEFT: [-2, 0, 4], ACTION: [-1, 0, 1, 2]}  # any offsets, as a policy declares them
    b = WindowSampler(store, deltas).get_batch([len(LENGTHS) + 3])
    assert set(k for k in b if not k.endswith("_is_pad")) == {LEFT, ACTION, TASK, EPISODE_INDEX, FRAME_INDEX, "index"}
    assert b[LEFT].shape[1] == 3 and b[ACTION].shape[1] == 4
    with pytest.raises(StoreError, match="'observation.images.top': the window asks for a key the store lacks"):
        WindowSampler(store, {image_key("top"): [0]})


def test_split_by_episode_is_deterministic(store):
    for n in (1, 2, 5, 37):
        tr, va = split_episodes(n, 0.2, seed=3)
        assert sorted(np.concatenate([tr, va]).tolist()) == list(range(n))
        assert len(tr) >= 1 and (len(va) >= 1 or n < 2)
        tr2, va2 = split_episodes(n, 0.2, seed=3)
        np.testing.assert_array_equal(tr, tr2)
        np.testing.assert_array_equal(va, va2)
    assert any(not np.array_equal(split_episodes(37, 0.2, s)[1], split_episodes(37, 0.2, 0)[1]) for s in (1, 2, 3))
    train, val = train_val_samplers(store, WindowSpec(n_obs=2, horizon=3), val_fraction=0.4, seed=1)
    assert set(train.episodes) & set(val.episodes) == set()
    assert set(train.episodes) | set(val.episodes) == set(range(len(LENGTHS)))
    assert len(train) + len(val) == sum(LENGTHS)
    assert set(train.get_batch(np.arange(len(train)))[EPISODE_INDEX]) == set(train.episodes)
    only_action = WindowSampler(store, WindowSpec(), require_action=True)
    assert 2 not in only_action.episodes and len(only_action) == sum(LENGTHS) - LENGTHS[2]
    with pytest.raises(ValueError, match="val_fraction"):
        split_episodes(5, 1.0)


def test_batches_are_deterministic(store):
    s = WindowSampler(store, WindowSpec(n_obs=2, horizon=3))
    a = [b["index"] for b in s.batches(4, seed=7)]
    b = [b["index"] for b in s.batches(4, seed=7)]
    c = [b["index"] for b in s.batches(4, seed=8)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
    assert sorted(np.concatenate(a).tolist()) == list(range(len(s)))


def test_feature_cache_replaces_images(tmp_path, store_path):
    import shutil

    path = tmp_path / "f"
    shutil.copytree(store_path, path)
    store = TrajectoryStore.open(path, mode="a")
    win = WindowSpec(n_obs=2, horizon=3, future_offset=2)
    with pytest.raises(StoreError, match="no up-to-date feature cache"):
        WindowSampler(store, win, feature_encoder="pool2x2")
    enc = PooledPixelEncoder((2, 2))
    shapes = cache_features(store, enc)
    assert shapes == {LEFT: (sum(LENGTHS), 3, 2, 2), WRIST: (sum(LENGTHS), 3, 2, 2)}
    img = WindowSampler(store, win)
    feat = WindowSampler(store, win, feature_encoder=enc.name)
    fk = feature_key(enc.name, LEFT)
    assert fk == f"features.{enc.name}.{LEFT}"
    idx = np.arange(len(img))
    bi, bf = img.get_batch(idx), feat.get_batch(idx)
    assert LEFT not in bf and fk in bf and bf[fk].dtype == np.float16
    assert bf[fk].shape == (len(idx), 3, 3, 2, 2)
    np.testing.assert_array_equal(bf[pad_key(fk)], bi[pad_key(LEFT)])
    want = enc.encode(bi[LEFT].reshape(-1, 8, 8, 3)).reshape(len(idx), 3, 3, 2, 2)
    np.testing.assert_allclose(bf[fk].astype(np.float32), want, atol=2e-3)
    # large caches are read from the store instead of memory: same values
    lazy = WindowSampler(store, win, feature_encoder=enc.name, max_memory_bytes=0)
    np.testing.assert_array_equal(lazy.get_batch(idx)[fk], bf[fk])


def test_feature_key_matches_policies():
    from vlastack.policies.base import feature_key as policy_feature_key

    assert policy_feature_key("enc", LEFT) == feature_key("enc", LEFT)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_dataloader_batches_follow_the_contract(store_path, num_workers):
    win = WindowSpec(n_obs=2, horizon=4, future_offset=3)
    dl = make_dataloader(store_path, win, batch_size=5, split="train", val_fraction=0.2, seed=0,
                         num_workers=num_workers)
    seen = []
    for batch in dl:
        assert batch[LEFT].dtype == torch.uint8 and batch[LEFT].shape == (5, 3, 8, 8, 3)
        assert batch[STATE].dtype == torch.float32 and batch[STATE].shape == (5, 2, 2)
        assert batch[ACTION].shape == (5, 4, 3)
        assert batch[pad_key(ACTION)].dtype == torch.bool and batch[pad_key(LEFT)].shape == (5, 3)
        assert isinstance(batch[TASK], list) and all(isinstance(t, str) for t in batch[TASK])
        seen.append(batch["index"])
    order = torch.cat(seen)
    again = torch.cat([b["index"] for b in make_dataloader(store_path, win, batch_size=5, split="train",
                                                           val_fraction=0.2, seed=0, num_workers=num_workers)])
    assert torch.equal(order, again)  # deterministic given the seed, workers or not
    train_eps = set(make_dataloader(store_path, win, split="train", val_fraction=0.2).dataset.sampler.episodes)
    val = make_dataloader(store_path, win, batch_size=100, split="val", val_fraction=0.2)
    assert not val.drop_last and set(next(iter(val))[EPISODE_INDEX].tolist()).isdisjoint(train_eps)


def _assert_batch_equal(got: dict, want: dict) -> None:
    """A DataLoader batch (tensors) equals an in-process ``get_batch`` (numpy) bit for bit, key order included."""
    assert list(got) == list(want)
    for k, v in want.items():
        if isinstance(v, np.ndarray):
            assert got[k].dtype == torch.from_numpy(v).dtype and tuple(got[k].shape) == v.shape, k
            np.testing.assert_array_equal(got[k].numpy(), v, err_msg=k)
        else:
            assert got[k] == v, k


def test_worker_batches_equal_in_process_batches(store_path):
    """2 workers, shared-memory slots reused across batches: every batch (the short last one included)
    equals the in-process read of the same windows, whatever the loop drops or keeps."""
    win = WindowSpec(n_obs=2, horizon=4, future_offset=3)
    dl = make_dataloader(store_path, win, batch_size=3, shuffle=False, num_workers=2)
    sampler = dl.dataset.sampler
    starts = range(0, len(sampler), 3)
    for epoch in range(2):  # persistent workers: the second epoch refills the same slots
        n = 0
        for s, batch in zip(starts, dl):
            _assert_batch_equal(batch, sampler.get_batch(np.arange(s, min(s + 3, len(sampler)))))
            n += 1
        assert n == len(starts)


def test_held_worker_batches_are_never_overwritten(store_path):
    """The training loop may keep batches (or a slice of one) while later ones are read: a slot is
    refilled only after the last tensor of its batch is gone. Holding every batch of 3 epochs uses up
    each worker's slots (8) and then one-off buffers; all held batches still equal in-process reads."""
    dl = make_dataloader(store_path, WindowSpec(n_obs=2, horizon=3), batch_size=2, shuffle=True, seed=3,
                         num_workers=2)
    sampler = dl.dataset.sampler
    held = []
    for epoch in range(3):  # 10 batches per epoch: 15 per worker
        for i, batch in enumerate(dl):
            held.append(batch if i % 2 else {k: v[1:] for k, v in batch.items()})
            del batch  # of the even batches only a slice is kept
    assert len(held) == 30
    for b in held:
        want = sampler.get_batch(b["index"].numpy())
        for k, v in want.items():
            if isinstance(v, np.ndarray):
                np.testing.assert_array_equal(b[k].numpy(), v, err_msg=k)


def test_dataloader_single_items_and_errors(store_path):
    dl = make_dataloader(store_path, WindowSpec(n_obs=1, horizon=2), batch_size=3)
    item = dl.dataset[4]
    assert item[LEFT].shape == (1, 8, 8, 3) and isinstance(item[TASK], str)
    with pytest.raises(ValueError, match="split"):
        make_dataloader(store_path, WindowSpec(), split="test")


def test_read_rows_into_a_buffer_equals_a_plain_read(store):
    """Frames decoded straight into a caller's buffer (the DataLoader's shared memory): same values,
    repeats and any order included; a strided buffer and a wrong shape are handled."""
    key = image_key("left")
    rows = np.array([7, 2, 7, 0, store.num_frames - 1, 2])
    want = np.stack([store.read_rows(key, np.array([r]))[0] for r in rows])  # one frame per call
    out = np.zeros((len(rows), *want.shape[1:]), want.dtype)
    assert store.read_rows(key, rows, out=out) is out
    np.testing.assert_array_equal(out, want)
    np.testing.assert_array_equal(store.read_rows(key, rows), want)
    wide = np.zeros((len(rows), *want.shape[1:-1], 4), want.dtype)
    store.read_rows(key, rows, out=wide[..., :3])  # not contiguous: decoded, then copied
    np.testing.assert_array_equal(wide[..., :3], want)
    with pytest.raises(ValueError, match="out has shape"):
        store.read_rows(key, rows, out=out[:-1])
    s = store.read_rows(STATE, rows, out=np.zeros((len(rows), store.spec.features[STATE].shape[0]), np.float32))
    np.testing.assert_array_equal(s, store.read_rows(STATE, rows))


def test_workers_decompress_in_their_own_thread():
    from numcodecs import blosc

    from vlastack.datasets.torch_dataset import single_thread_blosc

    before = blosc.use_threads
    try:
        blosc.use_threads = None
        single_thread_blosc()
        assert blosc.use_threads is False
    finally:
        blosc.use_threads = before
