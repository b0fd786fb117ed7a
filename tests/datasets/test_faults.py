"""Bad input and faults: every problem raises StoreError naming key and problem; SIGKILL mid-append is safe."""

import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import numpy as np
import pytest
import zarr

from vlastack.datasets.store import StoreError, TrajectoryStore
from vlastack.types import ACTION, STATE, DatasetSpec, image_key

SPEC = DatasetSpec.robot(cameras=("left", "wrist"), image_size=(8, 8), state_dim=3, action_dim=7)
LEFT = image_key("left")


def episode(length: int = 6, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {k: rng.integers(0, 256, (length, *f.shape), dtype=np.uint8) for k, f in SPEC.features.items()
           if f.kind == "image"}
    out[STATE] = rng.standard_normal((length, 3)).astype(np.float32)
    out[ACTION] = rng.standard_normal((length, 7)).astype(np.float32)
    return out


@pytest.fixture
def store_path(tmp_path):
    path = tmp_path / "s"
    with TrajectoryStore.create(path, SPEC) as store:
        for i, n in enumerate([6, 5, 7]):
            store.append_episode(episode(n, i), task=f"t{i}")
    return path


# --------------------------------------------------------------------------- bad input to append_episode


def _bad(ep: dict, **changes) -> dict:
    ep = dict(ep)
    for k, v in changes.items():
        k = {"state": STATE, "action": ACTION, "left": LEFT}[k]
        if v is None:
            del ep[k]
        else:
            ep[k] = v
    return ep


@pytest.mark.parametrize("frames, pattern", [
    (_bad(episode(), state=None), r"'observation.state': missing key"),
    (_bad(episode(), left=None), r"'observation.images.left': missing key"),
    ({**episode(), "observation.images.top": np.zeros((6, 8, 8, 3), np.uint8)},
     r"'observation.images.top': unknown key; valid keys are"),
    (_bad(episode(), state=np.zeros((5, 3), np.float32)), r"mismatched lengths: .*observation.state': 5"),
    (_bad(episode(), action=np.zeros((7, 7), np.float32)), r"mismatched lengths: .*'action': 7"),
    (_bad(episode(), left=np.zeros((6, 8, 8, 3), np.float32)),
     r"observation.images.left: wrong dtype float32, expected uint8"),
    (_bad(episode(), state=np.array([["a", "b", "c"]] * 6)), r"observation.state: wrong dtype <U1, expected float32"),
    (_bad(episode(), state=np.zeros((6, 4), np.float32)), r"observation.state: wrong shape \(6, 4\), expected \(T, 3\)"),
    (_bad(episode(), left=np.zeros((6, 8, 9, 3), np.uint8)), r"observation.images.left: wrong shape"),
    (_bad(episode(), action=np.where(np.arange(42).reshape(6, 7) == 23, np.nan, 0).astype(np.float32)),
     r"action: NaN or inf at frame 3, element 2"),
    (_bad(episode(), state=np.where(np.arange(18).reshape(6, 3) == 4, np.inf, 0).astype(np.float32)),
     r"observation.state: NaN or inf at frame 1, element 1"),
    ({k: v[:0] for k, v in episode().items()}, r"empty episode"),
    ("not a dict", r"frames: expected a dict"),
])
def test_append_rejects_bad_frames(store_path, frames, pattern):
    store = TrajectoryStore.open(store_path, mode="a")
    with pytest.raises(StoreError, match=pattern):
        store.append_episode(frames, task="bad")
    # nothing was written: the store is as before
    again = TrajectoryStore.open(store_path, verify="full")
    assert again.num_episodes == 3 and again.num_frames == 18


def test_append_rejects_bad_arguments_and_casts_safely(store_path):
    store = TrajectoryStore.open(store_path, mode="a")
    with pytest.raises(StoreError, match="task: expected a non-empty instruction"):
        store.append_episode(episode(), task="  ")
    with pytest.raises(StoreError, match="task_id: expected a string"):
        store.append_episode(episode(), task="x", task_id=3)
    with pytest.raises(StoreError, match="meta: not JSON-serialisable"):
        store.append_episode(episode(), task="x", meta={"f": object()})
    ep = episode(4, 9)
    ep64 = {**ep, STATE: ep[STATE].astype(np.float64)}  # same-kind numbers are cast, not rejected
    i = store.append_episode(ep64, task="cast", task_id="Cast")
    got = TrajectoryStore.open(store_path).episode(i)
    assert got[STATE].dtype == np.float32
    np.testing.assert_array_equal(got[STATE], ep[STATE])
    assert TrajectoryStore.open(store_path).episodes[i]["task_id"] == "Cast"


# --------------------------------------------------------------------------- bad stores on open


def test_open_nonexistent_paths(tmp_path):
    with pytest.raises(StoreError, match=r"nowhere: no such store"):
        TrajectoryStore.open(tmp_path / "nowhere")
    with pytest.raises(StoreError, match=r"nowhere.zip: no such file"):
        TrajectoryStore.open(tmp_path / "nowhere.zip")
    with pytest.raises(StoreError, match=r"no such store"):
        TrajectoryStore.open(f"memory://nowhere-{uuid.uuid4().hex}")
    with pytest.raises(StoreError, match=r"no such store"):
        TrajectoryStore.open("file://" + str(tmp_path / "nowhere"))


def test_open_foreign_group_and_corrupt_root(tmp_path, store_path):
    zarr.open_group(tmp_path / "plain", mode="w").attrs["x"] = 1
    with pytest.raises(StoreError, match="not a vlastack trajectory store"):
        TrajectoryStore.open(tmp_path / "plain")
    (store_path / "zarr.json").write_bytes(b"\x00garbage{")
    with pytest.raises(StoreError, match="not a readable zarr v3 group"):
        TrajectoryStore.open(store_path)


def test_open_missing_key(store_path):
    shutil.rmtree(store_path / "data" / ACTION)
    with pytest.raises(StoreError, match=r"data/action: missing key"):
        TrajectoryStore.open(store_path)


def test_open_missing_meta(store_path):
    shutil.rmtree(store_path / "meta" / "episode_ends")
    with pytest.raises(StoreError, match=r"meta/episode_ends: missing key"):
        TrajectoryStore.open(store_path)


def test_open_mismatched_lengths(store_path):
    zarr.open_array(store_path / "data" / STATE, mode="r+").resize((15, 3))
    with pytest.raises(StoreError, match=r"data/observation.state: mismatched length: 15 frames but episode_ends says 18"):
        TrajectoryStore.open(store_path)


def test_open_episode_metadata_disagrees(store_path):
    arr = zarr.open_array(store_path / "meta" / "episodes", mode="r+")
    arr[1:2] = np.array(['{"broken json'], dtype=object)
    with pytest.raises(StoreError, match=r"meta/episodes\[1\]: not valid JSON"):
        TrajectoryStore.open(store_path)
    arr[1:2] = np.array(['{"task_id": "t", "instruction": "t", "success": true, "length": 99, '
                         '"source": "", "has_action": true}'], dtype=object)
    with pytest.raises(StoreError, match=r"meta/episodes\[1\]: mismatched length: 99"):
        TrajectoryStore.open(store_path)


def test_open_episode_ends_not_increasing(store_path):
    zarr.open_array(store_path / "meta" / "episode_ends", mode="r+")[1:2] = np.array([3], np.int64)
    with pytest.raises(StoreError, match=r"meta/episode_ends: not strictly increasing"):
        TrajectoryStore.open(store_path)


def test_open_wrong_dtype(store_path):
    old = zarr.open_array(store_path / "data" / STATE, mode="r")[:]
    g = zarr.open_group(store_path / "data", mode="r+")
    g.create_array(STATE, shape=old.shape, dtype="float64", overwrite=True)[:] = old.astype(np.float64)
    with pytest.raises(StoreError, match=r"data/observation.state: wrong dtype float64, spec says float32"):
        TrajectoryStore.open(store_path)


def test_open_wrong_frame_shape(store_path):
    g = zarr.open_group(store_path / "data", mode="r+")
    g.create_array(LEFT, shape=(18, 8, 8, 4), dtype="uint8", overwrite=True)
    with pytest.raises(StoreError, match=r"data/observation.images.left: wrong per-frame shape \(8, 8, 4\)"):
        TrajectoryStore.open(store_path)


@pytest.mark.parametrize("key, row, value", [(ACTION, 8, np.nan), (ACTION, 17, -np.inf), (STATE, 0, np.inf)])
def test_open_nan_or_inf(store_path, key, row, value):
    arr = zarr.open_array(store_path / "data" / key, mode="r+")
    block = arr[row:row + 1]
    block[0, 1] = value
    arr[row:row + 1] = block
    ep = int(np.searchsorted([6, 11, 18], row, side="right"))
    with pytest.raises(StoreError, match=rf"data/{key}: NaN or inf at frame {row} \(episode {ep}, element 1\)"):
        TrajectoryStore.open(store_path)
    TrajectoryStore.open(store_path, verify="none")  # structure alone is fine


def _chunk_file(store_path, key, row):
    arr = zarr.open_array(store_path / "data" / key, mode="r")
    ci = row // arr.chunks[0]
    return store_path / "data" / key / arr.metadata.encode_chunk_key((ci,) + (0,) * (arr.ndim - 1))


@pytest.mark.parametrize("garbage", [b"garbage" * 5, bytes(range(256)) * 4])
def test_open_corrupt_low_dim_chunk(store_path, garbage):
    _chunk_file(store_path, ACTION, 0).write_bytes(garbage)
    with pytest.raises(StoreError, match=r"data/action: corrupt chunk"):
        TrajectoryStore.open(store_path)


def test_corrupt_image_chunk(store_path):
    f = _chunk_file(store_path, LEFT, 8)
    f.write_bytes(np.random.default_rng(0).integers(0, 256, f.stat().st_size, dtype=np.uint8).tobytes())
    # "fast" verification skips image payloads; reading the frame names key and chunk
    store = TrajectoryStore.open(store_path)
    store.episode(0)  # other chunks still read
    with pytest.raises(StoreError, match=r"data/observation.images.left: corrupt chunk.*chunk 8 \(rows 8..8\)"):
        store.episode(1)
    with pytest.raises(StoreError, match=r"observation.images.left: corrupt chunk 8"):
        store.read_rows(LEFT, np.array([2, 8]))
    with pytest.raises(StoreError, match=r"data/observation.images.left: corrupt chunk"):
        TrajectoryStore.open(store_path, verify="full")


def test_corrupt_chunk_in_zip(tmp_path, store_path):
    _chunk_file(store_path, LEFT, 3).write_bytes(b"\x02\x01garbage")
    import zipfile

    with zipfile.ZipFile(tmp_path / "c.zip", "w") as zf:
        for p in store_path.rglob("*"):
            if p.is_file():
                zf.write(p, p.relative_to(store_path).as_posix())
    store = TrajectoryStore.open(tmp_path / "c.zip")
    with pytest.raises(StoreError, match=r"data/observation.images.left: corrupt chunk"):
        store.read_rows(LEFT, np.array([3]))


def test_future_schema_version(store_path):
    g = zarr.open_group(store_path, mode="r+")
    g.attrs["schema_version"] = 99
    with pytest.raises(StoreError, match="schema_version 99 is newer"):
        TrajectoryStore.open(store_path)


# --------------------------------------------------------------------------- SIGKILL mid-append

# Shared by the test and the child process: episode i is a pure function of i.
_GEN = textwrap.dedent('''
    import numpy as np
    from vlastack.types import DatasetSpec

    KILL_SPEC = DatasetSpec.robot(cameras=("left", "wrist"), image_size=(48, 48), state_dim=5, action_dim=7)

    def kill_episode(i):
        rng = np.random.default_rng(1000 + i)
        n = 4 + (i * 7) % 23
        out = {k: rng.integers(0, 256, (n, *f.shape), dtype=np.uint8) for k, f in KILL_SPEC.features.items()
               if f.kind == "image"}
        out["observation.state"] = rng.standard_normal((n, 5)).astype(np.float32)
        if i % 5 != 4:  # every fifth episode is video-only
            out["action"] = rng.standard_normal((n, 7)).astype(np.float32)
        return out
''')

_CHILD = _GEN + textwrap.dedent('''
    import sys
    from vlastack.datasets.store import TrajectoryStore

    store = TrajectoryStore.open(sys.argv[1], mode="a", verify="none")
    print("ready", flush=True)
    while True:
        i = store.num_episodes
        store.append_episode(kill_episode(i), task=f"task {i}", success=i % 2 == 0, meta={"i": i})
''')


def _partial_evidence(path, store) -> bool:
    """Whether a killed append left uncommitted rows or temporary files behind."""
    for key in store.keys:
        if zarr.open_array(path / "data" / key, mode="r").shape[0] > store.num_frames:
            return True
    if zarr.open_array(path / "meta" / "episodes", mode="r").shape[0] > store.num_episodes:
        return True
    return any(p.name.endswith(".partial") for p in path.rglob("*.partial"))


def test_sigkill_mid_append_leaves_consistent_store(tmp_path):
    ns: dict = {}
    exec(_GEN, ns)
    kill_episode, spec = ns["kill_episode"], ns["KILL_SPEC"]
    path = tmp_path / "killed"
    TrajectoryStore.create(path, spec).close()
    rnd = random.Random(0)
    kills, partial, last_count, checked = 0, 0, 0, 0
    expected: dict[int, dict] = {}
    t0 = time.monotonic()
    while kills < 24 or (partial < 5 and kills < 40):
        proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(path)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            line = proc.stdout.readline()
            assert line.strip() == "ready", f"child failed: {line!r} {proc.stderr.read() if proc.poll() is not None else ''}"
            time.sleep(rnd.uniform(0.0, 0.15))
            assert proc.poll() is None, f"child died on its own: {proc.stderr.read()}"
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait()
        assert proc.returncode == -signal.SIGKILL
        kills += 1
        store = TrajectoryStore.open(path, verify="full")
        partial += _partial_evidence(path, store)
        assert store.num_episodes >= last_count
        # every committed episode is complete and exact; check the new ones (and a few old ones) fully
        todo = list(range(last_count, store.num_episodes)) + rnd.sample(range(store.num_episodes),
                                                                        min(3, store.num_episodes))
        for i in todo:
            want = expected.setdefault(i, kill_episode(i))
            got = store.episode(i)
            assert set(got) == set(want), f"episode {i}"
            for k in want:
                np.testing.assert_array_equal(got[k], want[k], err_msg=f"episode {i} key {k}")
            meta = store.episodes[i]
            assert meta["meta"] == {"i": i} and meta["length"] == len(want[STATE])
            assert meta["has_action"] == (ACTION in want)
            checked += 1
        last_count = store.num_episodes
    print(f"kills={kills} partial={partial} episodes={last_count} checked={checked} {time.monotonic() - t0:.1f}s")
    assert time.monotonic() - t0 < 120
    assert last_count > 0, "no episode was ever committed"
    # the kills really landed mid-write: uncommitted rows or temporary files were left behind
    assert partial >= 5, f"only {partial} of {kills} kills hit an append in progress"
    # an append after the last kill still works and the leftovers are gone
    store = TrajectoryStore.open(path, mode="a")
    assert not any(path.rglob("*.partial"))
    store.append_episode(kill_episode(store.num_episodes), task="after")
    assert TrajectoryStore.open(path, verify="full").num_episodes == last_count + 1
