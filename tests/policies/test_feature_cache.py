"""Feature cache: frozen-encoder grids written to a store and read back, stale caches detected."""
import numpy as np
import pytest
import torch

from vlastack.policies.encoders import make_vision_encoder
from vlastack.policies.feature_cache import (cache_features, cached_meta, frames_to_tensor, grids_to_tensor,
                                             has_cached, load_cached, load_cached_rows)
from vlastack.types import DatasetSpec, fake_batch

SPEC = DatasetSpec.robot(cameras=("left", "wrist"), image_size=(64, 48), state_dim=3, action_dim=2)
LENGTHS = (5, 7, 4)


class _FakeArray:
    """A numpy array with zarr-like ``attrs``."""

    def __init__(self, values, meta):
        self._v = np.array(values)
        self.attrs = {"meta": dict(meta or {})}
        self.shape = self._v.shape

    def __getitem__(self, sel):
        return self._v[sel]


class FakeStore:
    """The duck-typed store protocol feature_cache relies on, in memory."""

    def __init__(self, spec):
        self.spec = spec
        self._eps: list[dict] = []
        self._features: dict[tuple[str, str], _FakeArray] = {}

    @property
    def num_episodes(self):
        return len(self._eps)

    @property
    def num_frames(self):
        return sum(len(e[self.spec.image_keys[0]]) for e in self._eps)

    def append_episode(self, frames, task):
        self._eps.append({k: np.asarray(v) for k, v in frames.items()})

    def episode(self, i, keys=None):
        return {k: v for k, v in self._eps[i].items() if keys is None or k in keys}

    def write_features(self, encoder, key, values, meta=None):
        assert values.shape[0] == self.num_frames and values.dtype in (np.float16, np.float32)
        self._features[(encoder, key)] = _FakeArray(values, meta)

    def has_features(self, encoder, key):
        arr = self._features.get((encoder, key))
        return arr is not None and arr.shape[0] == self.num_frames

    def read_features(self, encoder, key):
        if not self.has_features(encoder, key):
            raise KeyError((encoder, key))
        return self._features[(encoder, key)]


def _episode(t, seed):
    b = fake_batch(SPEC, batch_size=1, n_obs=t, horizon=t, seed=seed, as_torch=False)
    return {k: b[k][0] for k in SPEC.features}


@pytest.fixture(params=["real", "fake"])
def store(request, tmp_path):
    if request.param == "real":
        store_mod = pytest.importorskip("vlastack.datasets.store")
        s = store_mod.TrajectoryStore.create(tmp_path / "demo.zarr", SPEC)
    else:
        s = FakeStore(SPEC)
    for i, t in enumerate(LENGTHS):
        s.append_episode(_episode(t, i), task="open the drawer")
    yield s
    if hasattr(s, "close"):
        s.close()


def _expected(store, encoder, key):
    frames = np.concatenate([store.episode(i, keys=[key])[key] for i in range(store.num_episodes)])
    with torch.no_grad():
        grid, _ = encoder(frames_to_tensor(frames))  # (N, C, h, w)
    return grid.numpy()


@pytest.mark.parametrize("enc_name,kw", [("tiny", {"stride": 8}), ("efficientnet_lite0", {"layer": "block5"})])
def test_round_trip_equals_encoder(store, enc_name, kw):
    enc = make_vision_encoder(enc_name, **kw)
    reports = cache_features(store, enc, batch_size=4, progress=False)
    n = sum(LENGTHS)
    h, w = enc.grid_size((64, 48))
    assert set(reports) == set(SPEC.image_keys)
    assert all(r.status == "written" and r.shape == (n, enc.out_dim, h, w) for r in reports.values())
    cached = load_cached(store, enc)
    for key in SPEC.image_keys:
        got = cached[key]
        assert got.dtype == np.float16 and got.shape == (n, enc.out_dim, h, w)
        want = _expected(store, enc, key)
        np.testing.assert_allclose(got.astype(np.float32), want, rtol=2e-3, atol=2e-3 * max(1.0, np.abs(want).max()))
        meta = cached_meta(store, enc, key)
        assert meta["encoder"] == enc.name and meta["fingerprint"] == enc.fingerprint()
        assert meta["grid"] == [h, w] and meta["image_hw"] == [64, 48] and meta["dtype"] == "float16"
    # the two cameras' features differ (frames differ), rows read back by index
    assert not np.array_equal(cached[SPEC.image_keys[0]], cached[SPEC.image_keys[1]])
    rows = np.array([15, 0, 7, 7])
    np.testing.assert_array_equal(load_cached_rows(store, enc, SPEC.image_keys[1], rows), cached[SPEC.image_keys[1]][rows])
    t = grids_to_tensor(cached)
    assert t[SPEC.image_keys[0]].dtype == torch.float32 and t[SPEC.image_keys[0]].shape == (n, enc.out_dim, h, w)


def test_skip_rewrite_and_stale_detection(store):
    enc = make_vision_encoder("tiny", stride=16, seed=0)
    key = SPEC.image_keys[0]
    assert cache_features(store, enc, keys=key, progress=False)[key].status == "written"
    assert has_cached(store, enc, keys=[key]) and not has_cached(store, enc)  # second camera not cached yet
    assert cache_features(store, enc, keys=[key], progress=False)[key].status == "skipped"
    assert cache_features(store, enc, keys=[key], overwrite=True, progress=False)[key].status == "rewritten"
    # other weights under the same cache name: detected, then rewritten
    other = make_vision_encoder("tiny", stride=16, seed=1)
    assert other.name == enc.name and other.fingerprint() != enc.fingerprint()
    assert not has_cached(store, other, keys=[key])
    with pytest.raises(ValueError, match="other weights"):
        load_cached(store, other, keys=[key])
    assert load_cached(store, "tiny", keys=[key])[key].shape[0] == sum(LENGTHS)  # by name: no fingerprint check
    assert cache_features(store, other, keys=[key], progress=False)[key].status == "rewritten"
    assert has_cached(store, other, keys=[key]) and not has_cached(store, enc, keys=[key])
    # appending an episode makes the cache stale (length mismatch): it reads as absent, then is rebuilt
    store.append_episode(_episode(3, 9), task="close the drawer")
    assert not has_cached(store, other, keys=[key])
    with pytest.raises(KeyError, match="run cache_features"):
        load_cached(store, other, keys=[key])
    assert cache_features(store, other, keys=[key], progress=False)[key].status == "written"
    assert load_cached(store, other, keys=[key], lazy=True)[key].shape[0] == sum(LENGTHS) + 3


def test_bad_input(store):
    trainable = make_vision_encoder("resnet18_gn", base_width=8)
    with pytest.raises(ValueError, match="trainable"):
        cache_features(store, trainable, progress=False)
    enc = make_vision_encoder("tiny")
    with pytest.raises(ValueError, match="not an image key.*observation.images.left"):
        cache_features(store, enc, keys=["observation.state"], progress=False)
    with pytest.raises(ValueError, match="dtype"):
        cache_features(store, enc, dtype="int8", progress=False)
    with pytest.raises(TypeError, match="encoder"):
        load_cached(store, 3)
    with pytest.raises(ValueError, match="uint8 frames"):
        frames_to_tensor(np.zeros((2, 3, 8, 8), np.uint8))


def test_progress_bar_runs(store):
    enc = make_vision_encoder("tiny")
    reports = cache_features(store, enc, progress=True)
    assert all(r.frames_per_second > 0 for r in reports.values())
