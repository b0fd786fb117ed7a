"""Trajectory store round trips: local directory, zip, fsspec URLs, metadata, stats, feature cache."""

import json
import uuid

import numpy as np
import pytest

from vlastack.datasets.store import SCHEMA_VERSION, StoreError, TrajectoryStore
from vlastack.types import ACTION, STATE, DatasetSpec, image_key

SPEC = DatasetSpec.robot(cameras=("left", "wrist"), image_size=(16, 20), state_dim=4, action_dim=7)


def make_episode(spec: DatasetSpec, length: int, seed: int, action: bool = True) -> dict[str, np.ndarray]:
    """Deterministic random frames for ``spec`` (images vary per frame)."""
    rng = np.random.default_rng(seed)
    out = {}
    for k, f in spec.features.items():
        if k == ACTION and not action:
            continue
        if f.kind == "image":
            out[k] = rng.integers(0, 256, (length, *f.shape), dtype=np.uint8)
        else:
            out[k] = rng.standard_normal((length, *f.shape)).astype(f.dtype)
    return out


def fill(store: TrajectoryStore, lengths, spec=SPEC) -> list[dict[str, np.ndarray]]:
    eps = []
    for i, n in enumerate(lengths):
        ep = make_episode(spec, n, seed=i)
        store.append_episode(ep, task=f"task {i % 3}", success=bool(i % 2), source="test", meta={"seed": i})
        eps.append(ep)
    return eps


def assert_same(store: TrajectoryStore, eps: list[dict[str, np.ndarray]]) -> None:
    assert store.num_episodes == len(eps)
    assert store.num_frames == sum(len(e[STATE]) for e in eps)
    for i, ep in enumerate(eps):
        got = store.episode(i)
        assert set(got) == set(ep)
        for k in ep:
            assert got[k].dtype == ep[k].dtype
            np.testing.assert_array_equal(got[k], ep[k], err_msg=f"episode {i} key {k}")


def test_round_trip_local_directory(tmp_path):
    lengths = [5, 9, 1, 12]
    with TrajectoryStore.create(tmp_path / "s", SPEC) as store:
        eps = fill(store, lengths)
        assert_same(store, eps)
    store = TrajectoryStore.open(tmp_path / "s")
    assert_same(store, eps)
    np.testing.assert_array_equal(store.episode_ends, np.cumsum(lengths))
    assert store.episode_ends.dtype == np.int64
    np.testing.assert_array_equal(store.episode_starts, np.cumsum([0] + lengths[:-1]))
    meta = store.episodes
    assert [m["length"] for m in meta] == lengths
    assert [m["instruction"] for m in meta] == [f"task {i % 3}" for i in range(4)]
    assert [m["task_id"] for m in meta] == [f"task {i % 3}" for i in range(4)]  # defaults to the instruction
    assert [m["success"] for m in meta] == [False, True, False, True]
    assert all(m["source"] == "test" and m["has_action"] for m in meta)
    assert [m["meta"]["seed"] for m in meta] == [0, 1, 2, 3]
    assert store.tasks == ["task 0", "task 1", "task 2"]
    assert store.spec == SPEC and store.fps == SPEC.fps
    attrs = store.attrs
    assert attrs["schema_version"] == SCHEMA_VERSION
    assert attrs["fps"] == SPEC.fps
    assert DatasetSpec.from_dict({"features": attrs["features"], "fps": attrs["fps"],
                                  "action_space": attrs["action_space"]}) == SPEC


def test_frame_and_read_rows_match_episodes(tmp_path):
    store = TrajectoryStore.create(tmp_path / "s", SPEC)
    eps = fill(store, [4, 6, 3])
    flat = {k: np.concatenate([e[k] for e in eps]) for k in SPEC.features}
    for g in [0, 3, 4, 9, 12, -1]:
        fr = store.frame(g)
        for k in SPEC.features:
            np.testing.assert_array_equal(fr[k], flat[k][g])
    assert store.locate(5) == (1, 1) and store.locate(10) == (2, 0) and store.locate(-1) == (2, 2)
    rows = np.array([12, 0, 5, 5, 7, 1])  # any order, repeats
    for k in SPEC.features:
        np.testing.assert_array_equal(store.read_rows(k, rows), flat[k][rows])
    with pytest.raises(StoreError, match="out of range"):
        store.read_rows(STATE, np.array([13]))
    with pytest.raises(StoreError, match="out of range"):
        store.frame(13)
    with pytest.raises(StoreError, match="episode index 3 out of range"):
        store.episode(3)
    with pytest.raises(StoreError, match="'nope': unknown key; valid keys are"):
        store.episode(0, keys=["nope"])
    assert set(store.episode(1, keys=[STATE])) == {STATE}


@pytest.mark.parametrize("chunk_frames", [1, 3])
def test_image_chunking_and_fast_reader(tmp_path, chunk_frames):
    store = TrajectoryStore.create(tmp_path / "s", SPEC, image_chunk_frames=chunk_frames)
    eps = fill(store, [7, 5])
    key = image_key("left")
    arr = store.array(key)
    assert arr.chunks == (chunk_frames, 16, 20, 3)
    assert store.array(STATE).chunks[0] >= 1024  # low-dim in large chunks
    assert "zstd" in str(arr.metadata.codecs).lower()
    flat = np.concatenate([e[key] for e in eps])
    rows = np.random.default_rng(0).integers(0, 12, 40)
    np.testing.assert_array_equal(store.read_rows(key, rows), flat[rows])
    # the fast local path agrees with zarr's own selection
    np.testing.assert_array_equal(store.read_rows(key, rows), arr.get_orthogonal_selection((rows,)))


def test_append_after_reopen_and_read_only(tmp_path):
    path = tmp_path / "s"
    store = TrajectoryStore.create(path, SPEC)
    eps = fill(store, [3, 4])
    store.close()
    ro = TrajectoryStore.open(path)
    with pytest.raises(StoreError, match="read-only"):
        ro.append_episode(make_episode(SPEC, 2, 9), task="x")
    with pytest.raises(StoreError, match="read-only"):
        ro.write_features("enc", image_key("left"), np.zeros((7, 2), np.float32))
    rw = TrajectoryStore.open(path, mode="a")
    extra = make_episode(SPEC, 5, 42)
    assert rw.append_episode(extra, task="more") == 2
    assert_same(TrajectoryStore.open(path), eps + [extra])
    with pytest.raises(StoreError, match="mode"):
        TrajectoryStore.open(path, mode="w")
    with pytest.raises(StoreError, match="verify"):
        TrajectoryStore.open(path, verify="sometimes")


def test_video_only_episodes(tmp_path):
    store = TrajectoryStore.create(tmp_path / "s", SPEC)
    with_act = make_episode(SPEC, 4, 0)
    video = make_episode(SPEC, 6, 1, action=False)
    store.append_episode(with_act, task="demo")
    store.append_episode(video, task="watch", source="youtube")
    store = TrajectoryStore.open(tmp_path / "s")
    assert [e["has_action"] for e in store.episodes] == [True, False]
    got = store.episode(1)
    assert ACTION not in got and set(got) == set(video)
    assert ACTION not in store.frame(5) and ACTION in store.frame(0)
    stats = store.compute_stats([ACTION])  # only the episode with actions counts
    np.testing.assert_allclose(stats[ACTION]["mean"], with_act[ACTION].mean(0), rtol=1e-5, atol=1e-6)


def test_create_refuses_to_clobber(tmp_path):
    TrajectoryStore.create(tmp_path / "s", SPEC)
    with pytest.raises(StoreError, match="already exists; pass overwrite=True"):
        TrajectoryStore.create(tmp_path / "s", SPEC)
    s = TrajectoryStore.create(tmp_path / "s", SPEC, overwrite=True)
    assert s.num_episodes == 0
    other = tmp_path / "mydir"
    other.mkdir()
    (other / "precious.txt").write_text("keep me")
    with pytest.raises(StoreError, match="not a store; refusing"):
        TrajectoryStore.create(other, SPEC, overwrite=True)
    assert (other / "precious.txt").read_text() == "keep me"
    with pytest.raises(StoreError, match="spec"):
        TrajectoryStore.create(tmp_path / "t", {"features": {}})


def test_zip_round_trip(tmp_path):
    zpath = tmp_path / "d.zip"
    with TrajectoryStore.create(zpath, SPEC) as store:
        eps = fill(store, [3, 5])
    assert zpath.is_file() and not [p for p in tmp_path.iterdir() if p.is_dir()]  # staging cleaned up
    store = TrajectoryStore.open(zpath)
    assert_same(store, eps)
    np.testing.assert_array_equal(store.read_rows(image_key("wrist"), np.array([7, 0])),
                                  np.concatenate([e[image_key("wrist")] for e in eps])[[7, 0]])
    with pytest.raises(StoreError, match="read-only"):
        store.append_episode(eps[0], task="x")
    # append mode repacks the zip on close
    with TrajectoryStore.open(zpath, mode="a") as rw:
        extra = make_episode(SPEC, 2, 7)
        rw.append_episode(extra, task="zip more")
    assert_same(TrajectoryStore.open(zpath), eps + [extra])
    (tmp_path / "bad.zip").write_bytes(b"not a zip at all")
    with pytest.raises(StoreError, match="bad.zip: not a valid zip"):
        TrajectoryStore.open(tmp_path / "bad.zip")


def test_fsspec_memory_and_file_urls(tmp_path):
    url = f"memory://vlastack-test-{uuid.uuid4().hex}"
    store = TrajectoryStore.create(url, SPEC)
    eps = fill(store, [4, 2])
    opened = TrajectoryStore.open(url)
    assert_same(opened, eps)
    flat = np.concatenate([e[image_key("left")] for e in eps])
    np.testing.assert_array_equal(opened.read_rows(image_key("left"), np.array([5, 1, 1])), flat[[5, 1, 1]])
    with pytest.raises(StoreError, match="no such store"):
        TrajectoryStore.open(f"memory://vlastack-missing-{uuid.uuid4().hex}")
    furl = "file://" + str(tmp_path / "f")
    fstore = TrajectoryStore.create(furl, SPEC)
    eps2 = fill(fstore, [3])
    assert_same(TrajectoryStore.open(furl), eps2)
    assert_same(TrajectoryStore.open(tmp_path / "f"), eps2)  # same store as a plain path


def test_stats_match_numpy_and_persist(tmp_path):
    store = TrajectoryStore.create(tmp_path / "s", SPEC)
    eps = fill(store, [20, 30])
    assert store.stats is None
    stats = store.compute_stats()
    for k in (STATE, ACTION):
        x = np.concatenate([e[k] for e in eps]).astype(np.float64)
        np.testing.assert_allclose(stats[k]["mean"], x.mean(0), rtol=1e-6)
        np.testing.assert_allclose(stats[k]["std"], x.std(0), rtol=1e-6)
        np.testing.assert_allclose(stats[k]["min"], x.min(0))
        np.testing.assert_allclose(stats[k]["max"], x.max(0))
        np.testing.assert_allclose(stats[k]["q01"], np.quantile(x, 0.01, axis=0), rtol=1e-6)
        np.testing.assert_allclose(stats[k]["q99"], np.quantile(x, 0.99, axis=0), rtol=1e-6)
    img = np.concatenate([e[image_key("left")] for e in eps]).reshape(-1, 3) / 255.0
    s = stats[image_key("left")]
    assert s["mean"].shape == (3,)
    np.testing.assert_allclose(s["mean"], img.mean(0), rtol=1e-6)
    np.testing.assert_allclose(s["std"], img.std(0), rtol=1e-6)
    np.testing.assert_allclose(s["q99"], np.quantile(img, 0.99, axis=0, method="inverted_cdf"), atol=1 / 255)
    saved = TrajectoryStore.open(tmp_path / "s").stats
    np.testing.assert_allclose(saved[ACTION]["std"], stats[ACTION]["std"], rtol=1e-6)
    json.dumps(TrajectoryStore.open(tmp_path / "s").attrs["stats"])  # JSON in the attributes
    # an append makes saved stats stale: they are dropped in the same commit
    store.append_episode(make_episode(SPEC, 3, 5), task="x")
    assert TrajectoryStore.open(tmp_path / "s").stats is None


def test_feature_cache(tmp_path):
    store = TrajectoryStore.create(tmp_path / "s", SPEC)
    fill(store, [5, 6])
    key = image_key("left")
    assert not store.has_features("pool", key)
    with pytest.raises(StoreError, match="no complete feature cache"):
        store.read_features("pool", key)
    feats = np.random.default_rng(0).standard_normal((11, 8)).astype(np.float16)
    store.write_features("pool", key, feats, meta={"dim": 8})
    reopened = TrajectoryStore.open(tmp_path / "s", mode="a")
    assert reopened.has_features("pool", key)
    arr = reopened.read_features("pool", key)
    assert arr.dtype == np.float16 and arr.shape == (11, 8)
    np.testing.assert_array_equal(arr[:], feats)
    np.testing.assert_array_equal(reopened.read_feature_rows("pool", key, np.array([10, 2])), feats[[10, 2]])
    assert reopened.list_features() == {"pool": [key]}
    with pytest.raises(StoreError, match="mismatched length"):
        reopened.write_features("pool", key, feats[:5])
    with pytest.raises(StoreError, match="wrong dtype int64"):
        reopened.write_features("pool", key, np.zeros((11, 8), np.int64))
    with pytest.raises(StoreError, match="NaN or inf"):
        reopened.write_features("pool", key, np.full((11, 8), np.nan, np.float32))
    with pytest.raises(StoreError, match="not a valid name"):
        reopened.write_features("a/b", key, feats)
    with pytest.raises(StoreError, match="unknown key"):
        reopened.write_features("pool", "observation.images.nope", feats)
    # an append makes the cache stale
    reopened.append_episode(make_episode(SPEC, 2, 3), task="x")
    assert not reopened.has_features("pool", key)
    assert reopened.list_features() == {}


def test_store_does_not_pickle(tmp_path):
    import pickle

    store = TrajectoryStore.create(tmp_path / "s", SPEC)
    with pytest.raises(TypeError, match="pass its path"):
        pickle.dumps(store)
