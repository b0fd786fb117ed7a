"""Store writers: the writer lock, concurrent appends, the commit record, failed writes, zip staging."""

import errno
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from vlastack.datasets import store as store_mod
from vlastack.datasets.store import LOCK_NAME, StoreError, TrajectoryStore
from vlastack.types import ACTION, STATE, DatasetSpec, image_key

# Shared by the tests and the child processes: episode (writer w, number j) is a pure function of (w, j).
_GEN = textwrap.dedent('''
    import numpy as np
    from vlastack.types import DatasetSpec

    WSPEC = DatasetSpec.robot(cameras=("left",), image_size=(8, 8), state_dim=3, action_dim=4)

    def writer_episode(w, j):
        rng = np.random.default_rng(10_000 * (w + 1) + j)
        n = 2 + (3 * w + j) % 7
        return {"observation.images.left": rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8),
                "observation.state": rng.standard_normal((n, 3)).astype(np.float32),
                "action": rng.standard_normal((n, 4)).astype(np.float32)}
''')
_ns: dict = {}
exec(_GEN, _ns)
WSPEC, writer_episode = _ns["WSPEC"], _ns["writer_episode"]

# A writer process: opens the store, waits for the start file, appends and reports every index it got.
_WRITER = _GEN + textwrap.dedent('''
    import os, sys, time
    from vlastack.datasets.store import TrajectoryStore

    path, w, n, go = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    store = TrajectoryStore.open(path, mode="a", verify="none", lock_timeout=60)
    print("ready", flush=True)
    while not os.path.exists(go):
        time.sleep(0.005)
    for j in range(n):
        i = store.append_episode(writer_episode(w, j), task=f"writer {w} episode {j}", meta={"w": w, "j": j})
        print(f"appended {w} {j} {i}", flush=True)
        time.sleep(0.03)  # a collector spends time between episodes (the lock is not fair to back-to-back appends)
    store.close()
''')

# Holds the store's writer lock until killed.
_HOLDER = textwrap.dedent('''
    import sys, time
    from vlastack.datasets.store import TrajectoryStore

    store = TrajectoryStore.open(sys.argv[1], mode="a", verify="none")
    with store.locked():
        print("locked", flush=True)
        time.sleep(120)
''')


def _env() -> dict:
    src = os.path.join(os.path.dirname(store_mod.__file__), "..", "..")
    return {**os.environ, "PYTHONPATH": os.path.abspath(src) + os.pathsep + os.environ.get("PYTHONPATH", "")}


@pytest.fixture
def wstore(tmp_path):
    path = tmp_path / "w.zarr"
    with TrajectoryStore.create(path, WSPEC) as s:
        s.append_episode(writer_episode(9, 0), task="seed episode")
    return path


def _check_exact(store: TrajectoryStore, index: int, w: int, j: int) -> None:
    want = writer_episode(w, j)
    got = store.episode(index)
    assert set(got) == set(want), f"episode {index}"
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=f"episode {index} (writer {w}, #{j}) key {k}")
    assert store.episodes[index]["meta"] == {"w": w, "j": j}
    assert store.episodes[index]["instruction"] == f"writer {w} episode {j}"


# --------------------------------------------------------------------------- concurrent writers


def test_four_concurrent_writers_keep_every_episode(wstore, tmp_path):
    """4 processes append 12 episodes each at once: all 48 reported episodes are in the store, exact."""
    writers, per = 4, 12
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(wstore), str(w), str(per), str(go)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
             for w in range(writers)]
    try:
        for p in procs:
            line = p.stdout.readline()
            assert line.strip() == "ready", f"writer failed to start: {line!r} {p.stderr.read() if p.poll() else ''}"
        go.touch()  # every writer has the store open in append mode before anyone appends
        outs = [p.communicate(timeout=240) for p in procs]
    finally:
        for p in procs:
            p.kill()
            p.wait()
    reported = []
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
        reported += [tuple(map(int, line.split()[1:])) for line in out.splitlines() if line.startswith("appended")]
    assert len(reported) == writers * per
    try:
        store = TrajectoryStore.open(wstore, verify="full")
    except StoreError as e:
        pytest.fail(f"concurrent writers: {len(reported)} episodes reported, the store no longer opens: {e}")
    kept = 0
    for w, j, i in reported:
        try:
            _check_exact(store, i, w, j)
            kept += 1
        except (AssertionError, StoreError):
            pass
    by_index = [w for w, _, _ in sorted(reported, key=lambda r: r[2])]
    switches = sum(a != b for a, b in zip(by_index, by_index[1:]))  # how interleaved the appends were
    print(f"concurrent writers: {writers} x {per} appended, {len(reported)} reported, {kept} present and exact; "
          f"the store holds {store.num_episodes - 1} new episodes; writer changed {switches} times in index order")
    assert kept == writers * per
    assert store.num_episodes == 1 + writers * per
    assert sorted(i for _, _, i in reported) == list(range(1, 1 + writers * per))
    assert not list(wstore.rglob("*.partial"))


def _hold_lock(path):
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env())
    line = proc.stdout.readline()
    assert line.strip() == "locked", f"holder failed: {line!r} {proc.stderr.read() if proc.poll() else ''}"
    return proc


def _stop(proc) -> None:
    proc.kill()
    proc.wait()


def test_second_writer_waits_then_is_refused_naming_the_holder(wstore):
    holder = _hold_lock(wstore)
    try:
        store = TrajectoryStore.open(wstore, mode="a", lock_timeout=0.4)  # opening never waits
        t0 = time.monotonic()
        with pytest.raises(StoreError, match=rf"w\.zarr: .*locked by another writer \(pid {holder.pid}\).*lock_timeout"):
            store.append_episode(writer_episode(0, 0), task="blocked")
        waited = time.monotonic() - t0
        assert 0.35 < waited < 5, waited
        with pytest.raises(StoreError, match=rf"pid {holder.pid}"):
            store.write_features("enc", image_key("left"), np.zeros((store.num_frames, 4), np.float32))
        assert TrajectoryStore.open(wstore).num_episodes == 1  # nothing written by the refused writer
    finally:
        _stop(holder)
    # the holder died: the kernel dropped its lock; the waiting writer goes on
    assert store.append_episode(writer_episode(0, 0), task="after") == 1
    store.close()


def test_a_waiting_writer_proceeds_when_the_lock_frees(wstore):
    holder = _hold_lock(wstore)
    store = TrajectoryStore.open(wstore, mode="a", lock_timeout=30)
    import threading

    threading.Timer(0.5, _stop, args=(holder,)).start()
    t0 = time.monotonic()
    assert store.append_episode(writer_episode(0, 0), task="waited") == 1
    assert time.monotonic() - t0 >= 0.4
    store.close()


def test_open_for_append_leaves_another_writers_temporary_files(wstore):
    """Only the lock holder cleans ``.partial`` leftovers: they may be another writer's write in flight."""
    holder = _hold_lock(wstore)
    inflight = wstore / "data" / STATE / "c" / "0.0123456789abcdef0123456789abcdef.partial"
    inflight.parent.mkdir(parents=True, exist_ok=True)
    inflight.write_bytes(b"in flight")
    try:
        TrajectoryStore.open(wstore, mode="a").close()
        assert inflight.exists(), "opening for append deleted a file the lock holder is writing"
    finally:
        _stop(holder)
    TrajectoryStore.open(wstore, mode="a").close()  # the lock is free now: leftovers are cleaned
    assert not inflight.exists()


def test_lock_is_released_after_close_and_after_a_failed_write(wstore, monkeypatch):
    a = TrajectoryStore.open(wstore, mode="a", lock_timeout=0)
    b = TrajectoryStore.open(wstore, mode="a", lock_timeout=0)  # another handle: a separate lock holder
    real = store_mod._write_file
    monkeypatch.setattr(store_mod, "_write_file", _raising(real, 1, errno.ENOSPC))
    with pytest.raises(StoreError, match="no space left"):
        a.append_episode(writer_episode(0, 0), task="fails")
    monkeypatch.setattr(store_mod, "_write_file", real)
    assert b.append_episode(writer_episode(0, 1), task="b") == 1  # a's lock was released by the error
    with a.locked():
        with pytest.raises(StoreError, match=rf"locked by another writer \(pid {os.getpid()}\)"):
            b.append_episode(writer_episode(0, 2), task="b again")
        assert a.append_episode(writer_episode(0, 3), task="a inside its lock") == 2  # re-entrant
    a.close()
    assert b.append_episode(writer_episode(0, 2), task="b again") == 3
    b.close()
    store = TrajectoryStore.open(wstore, verify="full")
    assert [e["instruction"] for e in store.episodes] == ["seed episode", "b", "a inside its lock", "b again"]
    assert (wstore / LOCK_NAME).is_file()


def test_training_feature_cache_does_not_deadlock_on_its_own_handles(tmp_path):
    """Training opens the store read-only, then again in append mode for the feature cache."""
    path = tmp_path / "f.zarr"
    with TrajectoryStore.create(path, WSPEC) as s:
        s.append_episode(writer_episode(0, 0), task="x")
    reader = TrajectoryStore.open(path)
    writer = TrajectoryStore.open(path, mode="a", lock_timeout=0)
    writer.write_features("enc", image_key("left"), np.ones((writer.num_frames, 2), np.float32))
    writer.compute_stats()
    writer.close()
    again = TrajectoryStore.open(path, mode="a", lock_timeout=0)
    again.write_features("enc2", image_key("left"), np.ones((again.num_frames, 2), np.float32))
    again.close()
    assert TrajectoryStore.open(path).list_features() == {"enc": [image_key("left")], "enc2": [image_key("left")]}
    reader.close()


# --------------------------------------------------------------------------- the commit record


def _zarr_writes_in_place(monkeypatch):
    """Make zarr's local store write every key in place (what zarr < 3.1.3 did)."""
    import zarr.storage._local as local

    def put(path, value, exclusive=False):
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "r+b" if path.exists() else "wb") as f:
            f.truncate(0)
            return f.write(value.as_buffer_like())

    monkeypatch.setattr(local, "_put", put)


@pytest.mark.parametrize("zarr_in_place", [False, True], ids=["zarr", "zarr-writes-in-place"])
def test_commit_record_is_replaced_never_written_in_place(wstore, monkeypatch, zarr_in_place):
    """The root zarr.json goes to a temporary file that replaces the old one: a reader holding the old
    file (or a crash halfway through the write) never sees a half-written commit record."""
    if zarr_in_place:
        _zarr_writes_in_place(monkeypatch)
    root = wstore / "zarr.json"
    old = wstore.parent / "old-zarr.json"
    os.link(root, old)  # a second name for the current commit record's inode
    before = old.read_bytes()
    with TrajectoryStore.open(wstore, mode="a") as s:
        s.append_episode(writer_episode(0, 0), task="one more")
    assert os.stat(root).st_ino != os.stat(old).st_ino, "the commit record was rewritten in place"
    assert old.read_bytes() == before
    assert TrajectoryStore.open(wstore, verify="full").num_episodes == 2


def test_zarr_version_is_pinned_for_atomic_chunk_writes():
    """Appends rewrite the chunk holding the last committed rows; zarr writes chunks atomically from 3.1.3."""
    import tomllib
    from pathlib import Path

    import zarr
    from packaging.version import Version

    pyproject = Path(store_mod.__file__).parents[3] / "pyproject.toml"
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    assert any(d.replace(" ", "").startswith("zarr>=3.1.3") for d in deps), deps
    assert Version(zarr.__version__) >= Version("3.1.3")


# --------------------------------------------------------------------------- read-only directory, full disk


def _raising(real, at: int, code: int):
    """``real`` that raises OSError(code) on its ``at``-th call (1-based)."""
    calls = {"n": 0}

    def f(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == at:
            raise OSError(code, os.strerror(code), str(args[0]))
        return real(*args, **kwargs)

    f.calls = calls
    return f


def _count_writes(monkeypatch, wstore) -> int:
    import zarr.storage._local as local

    counted = {"n": 0}
    real_put, real_write = local._put, store_mod._write_file

    def put(*a, **k):
        counted["n"] += 1
        return real_put(*a, **k)

    def write(*a, **k):
        counted["n"] += 1
        return real_write(*a, **k)

    with monkeypatch.context() as m:
        m.setattr(local, "_put", put)
        m.setattr(store_mod, "_write_file", write)
        probe = wstore.parent / "probe.zarr"
        shutil.copytree(wstore, probe)
        with TrajectoryStore.open(probe, mode="a") as s:
            s.append_episode(writer_episode(1, 1), task="probe")
    return counted["n"]


@pytest.mark.parametrize("code, words, every", [(errno.ENOSPC, "no space left", True),
                                                (errno.EROFS, "read-only file system", False),
                                                (errno.EACCES, "permission denied", False)])
def test_failed_write_at_every_point_of_an_append_is_a_store_error(wstore, monkeypatch, code, words, every):
    """A write that fails part-way (read-only directory, full disk) raises StoreError naming the path
    and the problem; the committed episodes stay intact and the next append works. ENOSPC fails at
    every write point of an append, the others at the first, a middle and the last (the commit)."""
    import zarr.storage._local as local

    n = _count_writes(monkeypatch, wstore)
    assert n >= 5
    pristine = wstore.parent / "pristine.zarr"
    shutil.copytree(wstore, pristine)
    for at in (range(1, n + 1) if every else (1, n // 2, n)):
        shutil.rmtree(wstore)
        shutil.copytree(pristine, wstore)  # every write point starts from the same store
        real_put, real_write = local._put, store_mod._write_file
        shared = {"n": 0}

        def counting(real):
            def f(*args, **kwargs):
                shared["n"] += 1
                if shared["n"] == at:
                    raise OSError(code, os.strerror(code), str(args[0]))
                return real(*args, **kwargs)
            return f

        s = TrajectoryStore.open(wstore, mode="a")
        with monkeypatch.context() as m:
            m.setattr(local, "_put", counting(real_put))
            m.setattr(store_mod, "_write_file", counting(real_write))
            with pytest.raises(StoreError) as ei:
                s.append_episode(writer_episode(1, 1), task="probe")
        msg = str(ei.value)
        assert str(wstore) in msg and words in msg.lower(), msg
        s.close()
        after = TrajectoryStore.open(wstore, verify="full")
        assert after.num_episodes == 1, f"write {at} of {n}: a failed append changed the commit record"
        np.testing.assert_array_equal(after.episode(0)[STATE], writer_episode(9, 0)[STATE])
    print(f"{os.strerror(code)} injected at {'each' if every else '3'} of {n} write points of an append: "
          "StoreError, store intact")
    with TrajectoryStore.open(wstore, mode="a") as s:
        i = s.append_episode(writer_episode(3, 0), task="disk has room again", meta={"w": 3, "j": 0})
    assert i == 1
    store = TrajectoryStore.open(wstore, verify="full")
    np.testing.assert_array_equal(store.episode(1)[ACTION], writer_episode(3, 0)[ACTION])


def test_failed_feature_cache_and_stats_writes_are_store_errors(wstore, monkeypatch):
    import zarr.storage._local as local

    s = TrajectoryStore.open(wstore, mode="a")
    monkeypatch.setattr(local, "_put", _raising(local._put, 2, errno.ENOSPC))
    with pytest.raises(StoreError, match=rf"{wstore}.*no space left"):
        s.write_features("enc", image_key("left"), np.ones((s.num_frames, 3), np.float32))
    monkeypatch.setattr(store_mod, "_write_file", _raising(store_mod._write_file, 1, errno.EROFS))
    with pytest.raises(StoreError, match=rf"{wstore}.*read-only"):
        s.compute_stats()
    s.close()
    assert TrajectoryStore.open(wstore, verify="full").list_features() == {}


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_copy_refuses_writes_with_a_store_error(wstore, tmp_path):
    ro = tmp_path / "ro.zarr"
    shutil.copytree(wstore, ro)
    for p in [ro, *ro.rglob("*")]:
        p.chmod(0o555 if p.is_dir() else 0o444)
    try:
        with pytest.raises(StoreError, match=rf"{ro}.*(permission denied|read-only)"):
            s = TrajectoryStore.open(ro, mode="a")
            s.append_episode(writer_episode(0, 0), task="x")
        assert TrajectoryStore.open(ro, verify="full").num_episodes == 1
    finally:
        for p in [ro, *ro.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)


# --------------------------------------------------------------------------- zip stores

_ZIP_CHILD = _GEN + textwrap.dedent('''
    import sys, time
    from vlastack.datasets.store import TrajectoryStore

    store = TrajectoryStore.open(sys.argv[1], mode="a", verify="none")
    for j in range(3):
        store.append_episode(writer_episode(5, j), task="lost on kill")
    print("appended", flush=True)
    time.sleep(120)
''')


def test_zip_kill_loses_the_open_session_and_staging_is_cleaned(tmp_path):
    zpath = tmp_path / "k.zip"
    with TrajectoryStore.create(zpath, WSPEC) as s:
        s.append_episode(writer_episode(9, 0), task="committed before")
    proc = subprocess.Popen([sys.executable, "-c", _ZIP_CHILD, str(zpath)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env())
    try:
        line = proc.stdout.readline()
        assert line.strip() == "appended", proc.stderr.read() if proc.poll() is not None else line
        # a second writer of the same zip is refused while the first is alive (its close would lose data)
        with pytest.raises(StoreError, match=rf"k\.zip: .*locked by another writer \(pid {proc.pid}\)"):
            TrajectoryStore.open(zpath, mode="a", lock_timeout=0.2)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        _stop(proc)
    stale = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert stale, "the killed writer left no staging folder (test does not test anything)"
    store = TrajectoryStore.open(zpath, verify="full")
    assert store.num_episodes == 1  # the killed session's 3 episodes are lost, the earlier one is intact
    with TrajectoryStore.open(zpath, mode="a") as s:  # opening for append cleans the stale staging folder
        assert not [p for p in stale if p.exists()]
        s.append_episode(writer_episode(6, 0), task="after the kill")
    assert not [p for p in tmp_path.iterdir() if p.is_dir()]
    assert TrajectoryStore.open(zpath, verify="full").num_episodes == 2


def test_zip_session_lock_is_released_on_close(tmp_path):
    zpath = tmp_path / "c.zip"
    TrajectoryStore.create(zpath, WSPEC).close()
    with TrajectoryStore.open(zpath, mode="a", lock_timeout=0) as s:
        s.append_episode(writer_episode(0, 0), task="a")
    with TrajectoryStore.open(zpath, mode="a", lock_timeout=0) as s:
        s.append_episode(writer_episode(0, 1), task="b")
    assert TrajectoryStore.open(zpath).num_episodes == 2


@pytest.mark.parametrize("bad", [-1, "soon", None])
def test_bad_lock_timeout_names_the_choices(wstore, bad):
    with pytest.raises(StoreError, match=r"lock_timeout: expected seconds >= 0"):
        TrajectoryStore.open(wstore, mode="a", lock_timeout=bad)
