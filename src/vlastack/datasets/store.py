"""Zarr v3 trajectory store: episodes of LeRobot-keyed frames, appended atomically.

Layout (one store per dataset: a directory, a ``.zip``, or any fsspec URL zarr v3 opens)::

    zarr.json                    root attributes: schema_version, fps, features, action_space,
                                 stats, and the commit record (num_episodes, num_frames)
    data/<key>                   every frame of every episode concatenated on axis 0
                                 (images: 1 frame per chunk by default, Blosc zstd + bitshuffle;
                                 low-dim: ~1 MiB chunks)
    meta/episode_ends            int64 cumulative ends (Diffusion Policy's replay buffer)
    meta/episodes                one JSON document per episode: task_id, instruction, success,
                                 length, source, has_action, meta
    features/<encoder>/<key>     optional cache of a frozen encoder's per-frame outputs

Atomic append: an episode's rows are written *past* the committed end (arrays grow first),
then its ``episode_ends`` / ``episodes`` rows, and only then the commit record in the root
``zarr.json`` is replaced in one step: written to a temporary file, fsynced and renamed over the
old one (by this module, not by zarr). Readers trust only the commit record and ignore rows past
it, so a process killed at any point leaves every earlier episode intact and no partial episode;
the next append overwrites the leftovers. An append also rewrites the chunk that holds the last
committed rows, so it needs zarr >= 3.1.3, whose local store writes every chunk to a temporary
file and renames it (older zarr wrote in place; the store refuses to write with it). Chunks are
not fsynced: this protects against process crashes, not against power loss.

Writers: every write (append, feature cache, stats) holds an exclusive ``fcntl.flock`` on the
store's lock file (``<store>/.vlastack-writer.lock``, holding the writer's pid) and re-reads the
commit record under it, so any number of processes may keep a store open in append mode and
append concurrently. A writer waits up to ``lock_timeout`` seconds for the lock and then raises
:class:`StoreError` naming the holder's pid (``lock_timeout=0`` refuses at once);
:meth:`TrajectoryStore.locked` holds the lock across several writes. Waiters poll every few
milliseconds, so the lock is not fair: a writer that appends back to back with no pause at all
can keep the others waiting. Temporary files of killed
writes (``*.partial``) are removed only by a process holding the lock. Remote (fsspec) stores
have no lock: one writer at a time is the caller's job there. A read-only directory or a full
disk raises :class:`StoreError` naming the path and the problem; committed data stay intact.

Zip stores are built in a staging directory beside the zip (``.<name>.zip.staging-*``) and packed
into the zip on :meth:`close` (use the store as a context manager); a writer holds the zip's lock
(``<name>.zip.lock``) from open to close. A writer killed before ``close`` therefore loses every
episode it appended since it opened the zip (the zip itself stays as it was) and leaves its
staging directory behind; the next writer removes it. Append to a directory store when a crash
must not lose the session, and pack it into a zip at the end. ``file://`` URLs open as local
directories; other URLs go through fsspec. Every problem raises :class:`StoreError` naming the
key and the problem.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
import warnings
import weakref
import zipfile
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from vlastack.types import (
    ACTION,
    EPISODE_INDEX,
    FRAME_INDEX,
    STATE,
    TASK,
    TIMESTAMP,
    DatasetSpec,
    FeatureSpec,
)

SCHEMA_VERSION = 1
FORMAT_NAME = "vlastack.trajectory_store"

#: per-frame bookkeeping a LeRobot row carries; the store keeps it implicitly, so
#: ``append_episode`` drops these keys instead of rejecting them.
IMPLICIT_KEYS = frozenset({EPISODE_INDEX, FRAME_INDEX, TIMESTAMP, "index", "task_index", TASK})

#: verification levels for :meth:`TrajectoryStore.open`.
VERIFY_LEVELS = ("none", "fast", "full")

_EPISODE_FIELDS = ("task_id", "instruction", "success", "length", "source", "has_action")
_PARTIAL_RE = re.compile(r"\.[0-9a-f]{32}\.partial$")
_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")

#: the writer lock file inside a directory store (a zip store's is ``<name>.zip.lock`` beside it).
LOCK_NAME = ".vlastack-writer.lock"
#: seconds a writer waits for another writer's lock by default.
DEFAULT_LOCK_TIMEOUT = 60.0
#: the first zarr whose local store writes every key to a temporary file and renames it.
MIN_ZARR = (3, 1, 3)


class StoreError(ValueError):
    """A store (or the data offered to it) is wrong; the message names the key and the problem."""


def _blosc(clevel: int, shuffle: str):
    from zarr.codecs import BloscCodec

    return BloscCodec(cname="zstd", clevel=clevel, shuffle=shuffle)


def _is_checked_float(f: FeatureSpec) -> bool:
    """Features whose values must be finite: states and actions."""
    return (f.kind in ("state", "action") or f.key in (STATE, ACTION)) and np.issubdtype(np.dtype(f.dtype), np.floating)


# ---------------------------------------------------------------------------------------------
# backends: local directory, zip (staged), fsspec URL
# ---------------------------------------------------------------------------------------------


class _Location:
    """Where a store lives and how to reach it as a zarr ``Store``."""

    def __init__(self, raw: str | os.PathLike):
        self.raw = os.fspath(raw)
        s = self.raw
        if s.startswith("file://"):
            s = s[len("file://"):]
        self.is_url = "://" in s
        self.is_zip = (not self.is_url) and s.lower().endswith(".zip")
        self.local = None if self.is_url else Path(s)

    def exists(self) -> bool:
        """Whether a zarr root is there (without creating anything)."""
        if self.is_url:
            import fsspec

            fs, path = fsspec.core.url_to_fs(self.raw)
            return fs.exists(path.rstrip("/") + "/zarr.json")
        if self.is_zip:
            return self.local.is_file()
        return (self.local / "zarr.json").is_file()

    def zarr_store(self, read_only: bool, root: Path | None = None):
        """A zarr store object for this location (``root`` overrides for zip staging)."""
        from zarr.storage import FsspecStore, LocalStore, ZipStore

        if root is not None:
            return LocalStore(root, read_only=read_only)
        if self.is_url:
            return FsspecStore.from_url(self.raw, read_only=read_only)
        if self.is_zip:
            return ZipStore(self.local, mode="r", read_only=True)
        return LocalStore(self.local, read_only=read_only)

    def lock(self, timeout: float) -> "_WriterLock | None":
        """The writer lock of this location (None for remote stores, which have none)."""
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout >= 0:
            raise StoreError(f"lock_timeout: expected seconds >= 0 (0 refuses at once), got {timeout!r}")
        if self.is_url:
            return None
        path = self.local.with_name(self.local.name + ".lock") if self.is_zip else self.local / LOCK_NAME
        return _WriterLock(path, self.raw, timeout)


def _pack_zip(src: Path, dst: Path) -> None:
    """Write directory ``src`` as zip ``dst`` atomically (temporary file, then replace)."""
    tmp = dst.with_name(dst.name + f".tmp-{os.getpid()}")
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            for p in sorted(src.rglob("*")):
                if p.is_file() and not _PARTIAL_RE.search(p.name) and p.name != LOCK_NAME:
                    zf.write(p, p.relative_to(src).as_posix())
        os.replace(tmp, dst)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _finish_staging(staging: str, zip_path: str, pack: bool, lock: "_WriterLock | None") -> None:
    try:
        if pack:
            _pack_zip(Path(staging), Path(zip_path))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if lock is not None:
            lock.release()


def _staging_prefix(zip_path: Path) -> str:
    """Name prefix of a zip store's staging directories (beside the zip)."""
    return f".{zip_path.name}.staging-"


def _remove_stale_staging(zip_path: Path) -> list[str]:
    """Remove what killed writers of ``zip_path`` left: staging directories and half-packed zips.

    Call only while holding the zip's writer lock (every other writer of this zip is gone)."""
    removed = []
    for p in zip_path.parent.glob(f"{_staging_prefix(zip_path)}*"):
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p.name)
    for p in zip_path.parent.glob(f"{zip_path.name}.tmp-*"):
        with contextlib.suppress(OSError):
            p.unlink()
            removed.append(p.name)
    return removed


def _remove_partials(root: Path) -> None:
    """Delete temporary files left by a write that was killed (``*.<uuid>.partial``).

    Call only while holding the store's writer lock: another writer's temporary files are in flight."""
    for dirpath, _, files in os.walk(root):
        for name in files:
            if _PARTIAL_RE.search(name):
                try:
                    os.unlink(os.path.join(dirpath, name))
                except OSError:
                    pass


def _write_file(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically: temporary file, fsync, rename.

    The fsync keeps a power loss from leaving an empty or torn file under the final name; the
    directory is not synced (the store promises crash safety, not durability of the last append)."""
    tmp = path.with_suffix(f".{uuid.uuid4().hex}.partial")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


_OS_HINTS = {errno.EROFS: "open the store with mode='r' or copy it somewhere writable",
             errno.EACCES: "open the store with mode='r' or copy it somewhere writable",
             errno.EPERM: "open the store with mode='r' or copy it somewhere writable",
             errno.ENOSPC: "free some space and write again",
             errno.EDQUOT: "free some space (disk quota) and write again"}


def _os_error(where: str, doing: str, e: OSError) -> StoreError:
    """A StoreError for an OSError raised while ``doing`` something to the store at ``where``."""
    problem = os.strerror(e.errno).lower() if e.errno else str(e)
    path = f" ({e.filename})" if getattr(e, "filename", None) else ""
    hint = _OS_HINTS.get(e.errno, "")
    return StoreError(f"{where}: cannot {doing}: {problem}{path}; committed episodes are intact"
                      + (f"; {hint}" if hint else ""))


def _undo_open(loc: "_Location", staging: str | None, lock: "_WriterLock | None", e: BaseException,
               doing: str) -> BaseException:
    """Clean up after a failed create/open (staging directory, lock); returns the exception to raise."""
    if staging is not None:
        shutil.rmtree(staging, ignore_errors=True)
    while lock is not None and lock.held:
        lock.release()
    return _os_error(loc.raw, doing, e) if isinstance(e, OSError) else e


def _require_atomic_zarr() -> None:
    """Refuse to write with a zarr that writes chunks in place (a crash could tear committed rows)."""
    import zarr

    have = tuple(int(x) for x in re.findall(r"\d+", zarr.__version__)[:3])
    if have < MIN_ZARR:
        raise StoreError(f"zarr {zarr.__version__} writes chunks in place, so a crash mid-append could damage "
                         f"committed episodes; writing needs zarr>={'.'.join(map(str, MIN_ZARR))} "
                         "(pip install -U zarr)")


class _WriterLock:
    """An exclusive ``fcntl.flock`` on a lock file, re-entrant within one handle; the file holds the
    holder's pid so a waiting writer can name it. The kernel drops the lock when the holder dies."""

    def __init__(self, path: Path, where: str, timeout: float):
        self.path, self.where, self.timeout = Path(path), where, float(timeout)
        self._fd: int | None = None
        self._depth = 0

    @property
    def held(self) -> bool:
        """Whether this handle holds the lock now."""
        return self._depth > 0

    def _holder(self, fd: int) -> str:
        with contextlib.suppress(OSError, ValueError):
            pid = os.pread(fd, 32, 0).decode().strip()
            if pid.isdigit():
                return pid
        return "unknown"

    def acquire(self, wait: bool = True) -> bool:
        """Take the lock (waiting up to ``timeout`` s); ``wait=False`` returns False when it is busy."""
        if self._depth:
            self._depth += 1
            return True
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise _os_error(self.where, "take the writer lock", e) from None
        deadline = time.monotonic() + max(self.timeout, 0.0)
        delay = 0.005
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if wait and time.monotonic() < deadline:
                    time.sleep(min(delay, max(deadline - time.monotonic(), 0.001)))
                    delay = min(delay * 2, 0.02)
                    continue
                holder = self._holder(fd)
                os.close(fd)
                if not wait:
                    return False
                raise StoreError(f"{self.where}: locked by another writer (pid {holder}) through {self.path}; "
                                 f"waited {self.timeout:g} s. Let that writer finish, or pass a longer "
                                 "lock_timeout= (0 refuses at once)") from None
            except OSError as e:
                os.close(fd)
                raise _os_error(self.where, "take the writer lock", e) from None
        with contextlib.suppress(OSError):  # the pid is only for messages
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd, self._depth = fd, 1
        return True

    def release(self) -> None:
        """Drop one level of the lock; the last one unlocks."""
        if self._depth == 0:
            return
        self._depth -= 1
        if self._depth == 0 and self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


# ---------------------------------------------------------------------------------------------
# fast local chunk reads
# ---------------------------------------------------------------------------------------------


class _LocalChunkReader:
    """Reads rows of a local zarr array chunked only along axis 0, decoding chunks with Blosc directly.

    zarr's generic selection costs ~0.4 ms per call; a window sampler reads a few frames at a
    time, so this path reads the chunk files itself (keys from ``metadata.encode_chunk_key``)
    and decodes them with numcodecs (the same Blosc frames zarr writes). Used only when the
    array's codecs are exactly bytes + blosc and its chunks span whole frames.
    """

    def __init__(self, array, root: Path):
        md = array.metadata
        self.key = array.path
        self.rows_per_chunk = int(md.chunks[0])
        self.frame_shape = tuple(array.shape[1:])
        self.dtype = np.dtype(array.dtype).newbyteorder("<")
        self.fill = md.fill_value
        self.dir = root / array.path
        self._dir = str(self.dir)
        self._encode = md.encode_chunk_key
        self.frame_nbytes = int(np.prod(self.frame_shape, dtype=np.int64)) * self.dtype.itemsize
        self._local = threading.local()  # a read buffer per thread (a reader may serve several threads)

    @staticmethod
    def supports(array) -> bool:
        from zarr.codecs import BloscCodec, BytesCodec

        md = array.metadata
        codecs = list(getattr(md, "codecs", ()))
        ok_codecs = (len(codecs) == 2 and isinstance(codecs[0], BytesCodec) and isinstance(codecs[1], BloscCodec)
                     and (codecs[0].endian is None or codecs[0].endian.value == "little"))
        chunks = getattr(md, "chunks", None)
        return bool(ok_codecs and chunks is not None and tuple(chunks[1:]) == tuple(array.shape[1:]))

    def _chunk(self, ci: int, dest: np.ndarray | None = None) -> np.ndarray:
        """Chunk ``ci`` decoded -> (rows_per_chunk, *frame_shape); into ``dest`` (C-contiguous, that shape) when given."""
        from numcodecs import blosc

        path = os.path.join(self._dir, self._encode((ci,) + (0,) * len(self.frame_shape)))
        shape = (self.rows_per_chunk, *self.frame_shape)
        try:
            raw = self._read_file(path)
        except FileNotFoundError:  # never written (all fill value)
            if dest is None:
                return np.full(shape, self.fill, self.dtype)
            dest[...] = self.fill
            return dest
        expected = self.rows_per_chunk * self.frame_nbytes
        nbytes = int.from_bytes(raw[4:8], "little") if len(raw) >= 16 else -1  # the Blosc header's size field
        if nbytes != expected:
            raise StoreError(f"{self._corrupt(ci)}: its header says {nbytes} bytes, expected {expected}")
        try:
            buf = blosc.decompress(raw, dest)  # into dest: one copy less
        except Exception as e:
            raise StoreError(f"{self._corrupt(ci)}: blosc says {e}") from None
        return dest if dest is not None else np.frombuffer(buf, self.dtype).reshape(shape)

    def _corrupt(self, ci: int) -> str:
        return f"{self.key}: corrupt chunk {ci} (rows {ci * self.rows_per_chunk}..{(ci + 1) * self.rows_per_chunk - 1})"

    def _read_file(self, path: str) -> memoryview:
        """A chunk file's bytes, read into this thread's reused buffer (valid until its next read)."""
        buf = getattr(self._local, "buf", None)
        if buf is None:  # room for an incompressible chunk plus Blosc's header
            buf = self._local.buf = bytearray(self.rows_per_chunk * self.frame_nbytes + 4096)
        fd = os.open(path, os.O_RDONLY)
        try:
            n = os.readv(fd, [buf])
            if n < len(buf):
                return memoryview(buf)[:n]
            rest = b"".join(iter(lambda: os.read(fd, 1 << 20), b""))  # larger than any valid chunk
            return memoryview(bytes(buf) + rest)
        finally:
            os.close(fd)

    def read(self, rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Rows ``rows`` (any order, repeats allowed) -> (len(rows), *frame_shape), written into ``out`` when given.

        With one frame per chunk each frame is decoded straight into its place in ``out`` (a
        repeated row is decoded once and copied).
        """
        rows = np.asarray(rows, np.int64).reshape(-1)
        if out is None:
            out = np.empty((len(rows), *self.frame_shape), self.dtype)
        if self.rows_per_chunk == 1:
            direct = out.dtype == self.dtype and out.flags.c_contiguous
            first: dict[int, int] = {}
            for j, r in enumerate(rows.tolist()):
                if r in first:
                    out[j] = out[first[r]]
                    continue
                first[r] = j
                if direct:
                    self._chunk(r, out[j:j + 1])
                else:
                    out[j] = self._chunk(r)[0]
            return out
        cis = rows // self.rows_per_chunk
        for ci in np.unique(cis):
            sel = np.nonzero(cis == ci)[0]
            out[sel] = self._chunk(int(ci))[rows[sel] - ci * self.rows_per_chunk]
        return out


# ---------------------------------------------------------------------------------------------
# the store
# ---------------------------------------------------------------------------------------------


class TrajectoryStore:
    """A Zarr v3 store of robot episodes. Build with :meth:`create` or :meth:`open`."""

    def __init__(self, group, location: _Location, mode: str, spec: DatasetSpec, staging: str | None = None,
                 lock: _WriterLock | None = None):
        """Internal: use :meth:`create` or :meth:`open`. ``lock``: the writer lock (held already for zip staging)."""
        self._group = group
        self._loc = location
        self._mode = mode
        self._spec = spec
        self._staging = staging
        self._lock = lock
        self._closed = False
        self._finalizer = None
        if staging is not None:
            self._finalizer = weakref.finalize(self, _finish_staging, staging, str(location.local), mode != "r", lock)
        self._readers: dict[str, Any] = {}
        self._load_commit()

    # ----------------------------------------------------------------- constructors

    @classmethod
    def create(cls, path: str | os.PathLike, spec: DatasetSpec, overwrite: bool = False,
               image_chunk_frames: int = 1, lock_timeout: float = DEFAULT_LOCK_TIMEOUT) -> "TrajectoryStore":
        """A new empty store for ``spec`` at ``path`` (directory, ``*.zip`` or fsspec URL).

        ``overwrite`` replaces an existing store (never a non-empty directory that is not one).
        Images are chunked ``image_chunk_frames`` frames per chunk (1-4 is sensible).
        ``lock_timeout``: seconds to wait for another writer's lock (see the module docstring).
        """
        if not isinstance(spec, DatasetSpec):
            raise StoreError(f"spec: expected a DatasetSpec, got {type(spec).__name__}")
        if not spec.features:
            raise StoreError("spec: no features; a store needs at least one key")
        if not 1 <= int(image_chunk_frames) <= 64:
            raise StoreError(f"image_chunk_frames: {image_chunk_frames} not in 1..64")
        for k in spec.features:
            if "/" in k or not k:
                raise StoreError(f"{k!r}: feature keys may not be empty or contain '/'")
        _require_atomic_zarr()
        loc = _Location(path)
        if loc.exists() and not overwrite:
            raise StoreError(f"{loc.raw}: a store already exists; pass overwrite=True to replace it")
        lock = loc.lock(lock_timeout)
        staging = None
        try:
            if loc.is_zip:
                if not loc.local.parent.is_dir():
                    raise StoreError(f"{loc.raw}: parent directory does not exist")
                lock.acquire()  # held until close: the zip is rewritten then
                _remove_stale_staging(loc.local)
                staging = tempfile.mkdtemp(prefix=_staging_prefix(loc.local), dir=loc.local.parent)
                zstore = loc.zarr_store(read_only=False, root=Path(staging))
            elif loc.is_url:
                zstore = loc.zarr_store(read_only=False)
            else:
                p = loc.local
                if p.exists():
                    if not p.is_dir():
                        raise StoreError(f"{loc.raw}: exists and is not a directory")
                    if any(c.name != LOCK_NAME for c in p.iterdir()) and not (p / "zarr.json").is_file():
                        raise StoreError(f"{loc.raw}: non-empty directory that is not a store; refusing to overwrite")
                p.mkdir(parents=True, exist_ok=True)
                lock.acquire()  # no writer of the old store is mid-write while it is replaced
                for c in p.iterdir():
                    if c.name != LOCK_NAME:
                        shutil.rmtree(c) if c.is_dir() and not c.is_symlink() else c.unlink()
                zstore = loc.zarr_store(read_only=False)
            root = cls._init_group(zstore, spec, image_chunk_frames, mode="w" if loc.is_url else "a")
            store = cls(root, loc, "a", spec, staging, lock)
        except BaseException as e:
            err = _undo_open(loc, staging, lock, e, "create the store")
            if err is e:
                raise
            raise err from None
        if lock is not None and staging is None:
            lock.release()  # directory stores lock per write
        return store

    @staticmethod
    def _init_group(zstore, spec: DatasetSpec, image_chunk_frames: int, mode: str):
        """Write an empty store's arrays and attributes into ``zstore``; returns the root group."""
        import zarr

        root = zarr.open_group(store=zstore, mode=mode)
        data = root.create_group("data")
        for key, f in spec.features.items():
            shape = tuple(f.shape)
            if f.kind == "image":
                chunks = (int(image_chunk_frames), *shape)
                comp = _blosc(3, "bitshuffle")
            else:
                row = max(1, int(np.prod(shape, dtype=np.int64)) * np.dtype(f.dtype).itemsize)
                chunks = (max(1024, (1 << 20) // row), *shape)
                comp = _blosc(5, "shuffle")
            data.create_array(key, shape=(0, *shape), chunks=chunks, dtype=f.dtype, compressors=comp, fill_value=0)
        meta = root.create_group("meta")
        meta.create_array("episode_ends", shape=(0,), chunks=(4096,), dtype="int64", fill_value=0,
                          compressors=_blosc(5, "shuffle"))
        meta.create_array("episodes", shape=(0,), chunks=(1024,), dtype=str,
                          attributes={"fields": list(_EPISODE_FIELDS) + ["meta"], "encoding": "json"})
        root.create_group("features")
        sd = spec.to_dict()
        root.update_attributes({
            "format": FORMAT_NAME, "schema_version": SCHEMA_VERSION, "fps": float(spec.fps),
            "features": sd["features"], "action_space": sd["action_space"], "stats": None,
            "num_episodes": 0, "num_frames": 0,
        })
        return root

    @classmethod
    def open(cls, path: str | os.PathLike, mode: str = "r", verify: str = "fast",
             lock_timeout: float = DEFAULT_LOCK_TIMEOUT) -> "TrajectoryStore":
        """Open and validate an existing store.

        ``mode``: "r" (read only) or "a" (append). ``verify``: "none" (structure only),
        "fast" (structure, plus every low-dim array decoded and checked for NaN/inf) or
        "full" (also decode every image chunk). ``lock_timeout``: seconds each write waits for
        another writer's lock (a zip store is locked from open to close, so open waits there).
        Problems raise :class:`StoreError`.
        """
        if mode not in ("r", "a"):
            raise StoreError(f"mode: {mode!r} not one of ('r', 'a')")
        if verify not in VERIFY_LEVELS:
            raise StoreError(f"verify: {verify!r} not one of {VERIFY_LEVELS}")
        import zarr

        loc = _Location(path)
        try:
            exists = loc.exists()
        except Exception as e:
            raise StoreError(f"{loc.raw}: cannot reach the store location ({type(e).__name__}: {e})") from None
        if not exists:
            what = "file" if loc.is_zip else "store (no zarr.json)"
            raise StoreError(f"{loc.raw}: no such {what}; create it with TrajectoryStore.create")
        if mode == "a":
            _require_atomic_zarr()
        lock = loc.lock(lock_timeout) if mode == "a" else None
        staging = None
        store = None
        try:
            if loc.is_zip:
                if mode == "a":
                    lock.acquire()  # held until close: the zip is rewritten then
                    _remove_stale_staging(loc.local)
                    staging = tempfile.mkdtemp(prefix=_staging_prefix(loc.local), dir=loc.local.parent)
                    try:
                        with zipfile.ZipFile(loc.local) as zf:
                            zf.extractall(staging)
                    except zipfile.BadZipFile as e:
                        raise StoreError(f"{loc.raw}: not a valid zip file ({e})") from None
                    zstore = loc.zarr_store(read_only=False, root=Path(staging))
                else:
                    if not zipfile.is_zipfile(loc.local):
                        raise StoreError(f"{loc.raw}: not a valid zip file")
                    zstore = loc.zarr_store(read_only=True)
            else:
                if lock is not None and lock.acquire(wait=False):  # busy: the holder may be mid-write
                    try:
                        _remove_partials(loc.local)
                    finally:
                        lock.release()
                zstore = loc.zarr_store(read_only=(mode == "r"))
            try:
                root = zarr.open_group(store=zstore, mode="r" if mode == "r" else "r+")
            except Exception as e:
                raise StoreError(f"{loc.raw}: not a readable zarr v3 group ({type(e).__name__}: {e})") from None
            spec = cls._spec_from_attrs(loc.raw, dict(root.attrs))
            store = cls(root, loc, mode, spec, staging, lock)
            store.verify(verify)
        except BaseException as e:
            if store is not None and store._finalizer is not None:
                store._finalizer.detach()  # nothing was written: no repacking
            err = _undo_open(loc, staging, lock, e, "open the store for writing")
            if err is e:
                raise
            raise err from None
        return store

    @staticmethod
    def _spec_from_attrs(where: str, attrs: Mapping[str, Any]) -> DatasetSpec:
        if attrs.get("format") != FORMAT_NAME:
            raise StoreError(f"{where}: attrs.format is {attrs.get('format')!r}, expected {FORMAT_NAME!r} "
                             "(not a vlastack trajectory store)")
        ver = attrs.get("schema_version")
        if not isinstance(ver, int):
            raise StoreError(f"{where}: attrs.schema_version missing or not an integer ({ver!r})")
        if ver > SCHEMA_VERSION:
            raise StoreError(f"{where}: schema_version {ver} is newer than this vlastack reads ({SCHEMA_VERSION})")
        for k in ("features", "fps", "num_episodes", "num_frames"):
            if k not in attrs:
                raise StoreError(f"{where}: attrs.{k} is missing")
        try:
            return DatasetSpec.from_dict({"features": attrs["features"], "fps": attrs["fps"],
                                          "action_space": attrs.get("action_space") or {}})
        except Exception as e:
            raise StoreError(f"{where}: attrs.features/action_space do not parse ({type(e).__name__}: {e})") from None

    # ----------------------------------------------------------------- commit record

    def _load_commit(self) -> None:
        """Read the commit record and the committed rows of meta/ into memory."""
        attrs = dict(self._group.attrs)
        self._attrs = attrs
        n_ep, n_fr = attrs.get("num_episodes"), attrs.get("num_frames")
        if not (isinstance(n_ep, int) and isinstance(n_fr, int) and n_ep >= 0 and n_fr >= 0):
            raise StoreError(f"{self._loc.raw}: attrs.num_episodes/num_frames invalid ({n_ep!r}, {n_fr!r})")
        ends_arr = self._node("meta/episode_ends")
        eps_arr = self._node("meta/episodes")
        if np.dtype(ends_arr.dtype) != np.int64:
            raise StoreError(f"meta/episode_ends: wrong dtype {ends_arr.dtype}, expected int64")
        for name, arr in (("meta/episode_ends", ends_arr), ("meta/episodes", eps_arr)):
            if arr.ndim != 1 or arr.shape[0] < n_ep:
                raise StoreError(f"{name}: mismatched length: {arr.shape[0] if arr.ndim else 0} rows but "
                                 f"the commit record says {n_ep} episodes")
        ends = self._read_node(ends_arr, slice(0, n_ep)).astype(np.int64)
        if n_ep and (np.any(np.diff(np.concatenate([[0], ends])) <= 0) or ends[-1] != n_fr):
            raise StoreError(f"meta/episode_ends: not strictly increasing to num_frames={n_fr} "
                             f"(got {ends[:5].tolist()}...{ends[-3:].tolist()})")
        raw = self._read_node(eps_arr, slice(0, n_ep)) if n_ep else []
        episodes = []
        lengths = np.diff(np.concatenate([[0], ends]))
        for i, doc in enumerate(raw):
            try:
                ep = json.loads(str(doc))
            except json.JSONDecodeError as e:
                raise StoreError(f"meta/episodes[{i}]: not valid JSON ({e})") from None
            missing = [f for f in _EPISODE_FIELDS if f not in ep]
            if missing:
                raise StoreError(f"meta/episodes[{i}]: missing fields {missing}")
            if int(ep["length"]) != int(lengths[i]):
                raise StoreError(f"meta/episodes[{i}]: mismatched length: {ep['length']} vs episode_ends "
                                 f"span {int(lengths[i])}")
            episodes.append(ep)
        self._ends = ends
        self._episodes = episodes
        self._num_frames = n_fr

    def _node(self, name: str):
        try:
            return self._group[name]
        except KeyError:
            raise StoreError(f"{name}: missing key in store {self._loc.raw}") from None
        except Exception as e:
            raise StoreError(f"{name}: cannot open ({type(e).__name__}: {e})") from None

    def _read_node(self, arr, sel) -> np.ndarray:
        try:
            return np.asarray(arr[sel])
        except StoreError:
            raise
        except Exception as e:
            where = f"rows {sel}"
            if isinstance(sel, slice) and arr.ndim >= 1:  # name the first chunk that fails
                c = int(arr.chunks[0])
                start, stop = sel.start or 0, min(arr.shape[0], sel.stop if sel.stop is not None else arr.shape[0])
                for ci in range(start // c, (stop + c - 1) // c):
                    try:
                        arr[ci * c:min(arr.shape[0], (ci + 1) * c)]
                    except Exception:
                        where = f"chunk {ci} (rows {ci * c}..{(ci + 1) * c - 1})"
                        break
            raise StoreError(f"{arr.path}: corrupt chunk or unreadable data: {where} "
                             f"({type(e).__name__}: {e})") from None

    # ----------------------------------------------------------------- validation

    def verify(self, level: str = "full") -> None:
        """Check the store against its spec; raise :class:`StoreError` naming key and problem.

        "none": keys, dtypes, shapes and lengths; "fast": also decode low-dim arrays and check
        states/actions are finite; "full": also decode every image chunk.
        """
        if level not in VERIFY_LEVELS:
            raise StoreError(f"verify: {level!r} not one of {VERIFY_LEVELS}")
        n = self._num_frames
        for key, f in self._spec.features.items():
            arr = self._node(f"data/{key}")
            if np.dtype(arr.dtype) != np.dtype(f.dtype):
                raise StoreError(f"data/{key}: wrong dtype {arr.dtype}, spec says {f.dtype}")
            if tuple(arr.shape[1:]) != tuple(f.shape):
                raise StoreError(f"data/{key}: wrong per-frame shape {tuple(arr.shape[1:])}, spec says {f.shape}")
            if arr.shape[0] < n:
                raise StoreError(f"data/{key}: mismatched length: {arr.shape[0]} frames but episode_ends "
                                 f"says {n}")
        if level == "none":
            return
        for key, f in self._spec.features.items():
            if f.kind == "image" and level != "full":
                continue
            arr = self._group[f"data/{key}"]
            step = int(arr.metadata.chunks[0]) * max(1, (1 << 24) // max(1, int(arr.metadata.chunks[0]) * arr.dtype.itemsize
                                                                            * int(np.prod(f.shape, dtype=np.int64))))
            for s in range(0, n, step):
                block = self._read_node(arr, slice(s, min(n, s + step)))
                if _is_checked_float(f) and not np.isfinite(block).all():
                    bad = np.argwhere(~np.isfinite(block.reshape(len(block), -1)))[0]
                    row = s + int(bad[0])
                    ep = int(np.searchsorted(self._ends, row, side="right"))
                    raise StoreError(f"data/{key}: NaN or inf at frame {row} (episode {ep}, element {int(bad[1])})")

    # ----------------------------------------------------------------- properties

    @property
    def path(self) -> str:
        """The location this store was opened from."""
        return self._loc.raw

    @property
    def mode(self) -> str:
        """"r" or "a"."""
        return self._mode

    @property
    def spec(self) -> DatasetSpec:
        """Features, fps and action space of the stored data."""
        return self._spec

    @property
    def fps(self) -> float:
        """Frames per second."""
        return float(self._spec.fps)

    @property
    def attrs(self) -> dict[str, Any]:
        """Root attributes (schema_version, fps, features, action_space, stats, commit record)."""
        return dict(self._attrs)

    @property
    def keys(self) -> list[str]:
        """Data keys, in spec order."""
        return list(self._spec.features)

    @property
    def num_episodes(self) -> int:
        """Committed episodes."""
        return len(self._ends)

    @property
    def num_frames(self) -> int:
        """Committed frames (all episodes)."""
        return int(self._num_frames)

    @property
    def episode_ends(self) -> np.ndarray:
        """int64 (num_episodes,) cumulative episode ends."""
        return self._ends.copy()

    @property
    def episode_starts(self) -> np.ndarray:
        """int64 (num_episodes,) first global frame of each episode."""
        return np.concatenate([[0], self._ends[:-1]]).astype(np.int64) if len(self._ends) else np.zeros(0, np.int64)

    @property
    def episodes(self) -> list[dict[str, Any]]:
        """Per-episode metadata: task_id, instruction, success, length, source, has_action, meta."""
        return [dict(e) for e in self._episodes]

    @property
    def tasks(self) -> list[str]:
        """Distinct instructions, in order of first appearance."""
        return list(dict.fromkeys(e["instruction"] for e in self._episodes))

    @property
    def stats(self) -> dict[str, dict[str, np.ndarray]] | None:
        """Saved statistics (see :meth:`compute_stats`); None when absent or stale after an append."""
        from vlastack.datasets.stats import stats_from_json

        s = self._attrs.get("stats")
        return stats_from_json(s) if s else None

    def __len__(self) -> int:
        return self.num_frames

    def __repr__(self) -> str:
        return (f"TrajectoryStore({self._loc.raw!r}, mode={self._mode!r}, episodes={self.num_episodes}, "
                f"frames={self.num_frames}, keys={self.keys})")

    # ----------------------------------------------------------------- reading

    def _check_episode(self, i: int) -> int:
        n = self.num_episodes
        if not isinstance(i, (int, np.integer)) or not -n <= int(i) < n:
            raise StoreError(f"episode index {i!r} out of range for {n} episodes")
        return int(i) % n

    def _check_keys(self, keys: Iterable[str] | None) -> list[str]:
        if keys is None:
            return self.keys
        keys = [keys] if isinstance(keys, str) else list(keys)
        for k in keys:
            if k not in self._spec.features:
                raise StoreError(f"{k!r}: unknown key; valid keys are {self.keys}")
        return keys

    def episode_range(self, i: int) -> tuple[int, int]:
        """Global [start, end) frame range of episode ``i``."""
        i = self._check_episode(i)
        return (int(self._ends[i - 1]) if i else 0), int(self._ends[i])

    def locate(self, global_index: int) -> tuple[int, int]:
        """(episode, frame within episode) of a global frame index."""
        n = self.num_frames
        if not isinstance(global_index, (int, np.integer)) or not -n <= int(global_index) < n:
            raise StoreError(f"frame index {global_index!r} out of range for {n} frames")
        g = int(global_index) % n
        ep = int(np.searchsorted(self._ends, g, side="right"))
        return ep, g - (int(self._ends[ep - 1]) if ep else 0)

    def array(self, key: str):
        """The raw zarr array ``data/<key>`` (rows past :attr:`num_frames` are uncommitted)."""
        self._check_keys([key])
        return self._node(f"data/{key}")

    def episode(self, i: int, keys: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """Frames of episode ``i``: key -> (T, ...). ``action`` is left out of video-only episodes."""
        i = self._check_episode(i)
        keys = self._check_keys(keys)
        s, e = self.episode_range(i)
        out = {}
        for k in keys:
            if k == ACTION and not self._episodes[i]["has_action"]:
                continue
            out[k] = self._read_node(self._node(f"data/{k}"), slice(s, e))
        return out

    def frame(self, global_index: int, keys: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """One frame: key -> (...). ``action`` is left out for video-only episodes."""
        ep, _ = self.locate(global_index)
        g = int(global_index) % self.num_frames
        keys = self._check_keys(keys)
        return {k: self.read_rows(k, np.array([g]))[0] for k in keys
                if not (k == ACTION and not self._episodes[ep]["has_action"])}

    def read_rows(self, key: str, rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Rows ``rows`` (global frame indices, any order, repeats allowed) of ``data/<key>`` -> (N, ...).

        ``out``: an array of that shape to write the rows into (e.g. a batch buffer in shared
        memory); local stores then decode each frame straight into it.
        """
        rows = np.asarray(rows, np.int64).reshape(-1)
        if len(rows) and (rows.min() < 0 or rows.max() >= self.num_frames):
            raise StoreError(f"{key}: rows out of range [0, {self.num_frames})")
        return self._rows(f"data/{key}", rows, out)

    def _rows(self, name: str, rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        reader = self._readers.get(name)
        if reader is None:
            arr = self._node(name)
            root = getattr(self._group.store, "root", None)
            if isinstance(root, Path) and _LocalChunkReader.supports(arr):
                reader = _LocalChunkReader(arr, root)
            else:
                reader = arr
            self._readers[name] = reader
        frame = reader.frame_shape if isinstance(reader, _LocalChunkReader) else tuple(reader.shape[1:])
        if out is not None and tuple(out.shape) != (len(rows), *frame):
            raise ValueError(f"{name}: out has shape {tuple(out.shape)}, expected {(len(rows), *frame)}")
        if isinstance(reader, _LocalChunkReader):
            return reader.read(rows, out)
        if len(rows) == 0:
            return np.zeros((0, *reader.shape[1:]), reader.dtype) if out is None else out
        uniq, inv = np.unique(rows, return_inverse=True)
        try:
            block = reader.get_orthogonal_selection((uniq,))
        except Exception as e:
            raise StoreError(f"{name}: corrupt chunk or unreadable data ({type(e).__name__}: {e})") from None
        if out is None:
            return np.asarray(block)[inv]
        np.take(np.asarray(block), inv, axis=0, out=out)
        return out

    # ----------------------------------------------------------------- writing

    def _require_writable(self) -> None:
        if self._closed:
            raise StoreError(f"{self._loc.raw}: store is closed")
        if self._mode != "a":
            raise StoreError(f"{self._loc.raw}: opened read-only; open with mode='a' to write")

    @contextlib.contextmanager
    def locked(self):
        """Hold the store's writer lock (re-entrant) across several writes; other writers wait.

        Each write takes the lock by itself; use this to make several appends one unit that no
        other writer interleaves with. The commit record is re-read when the lock is taken.
        """
        with self._write_op("write"):
            yield self

    @contextlib.contextmanager
    def _write_op(self, doing: str):
        """Writer lock + fresh commit record around a write; OSError -> StoreError naming the problem."""
        self._require_writable()
        lock = self._lock
        first = lock is not None and not lock.held
        if lock is not None:
            lock.acquire()
        try:
            if first:
                self._refresh()
            yield
        except OSError as e:
            raise _os_error(self._loc.raw, doing, e) from None
        finally:
            if lock is not None:
                lock.release()

    def _refresh(self) -> None:
        """Re-read the commit record (another writer may have appended since this handle last looked)."""
        import zarr

        self._group = zarr.open_group(store=self._group.store, mode="r+")
        attrs = dict(self._group.attrs)
        if (attrs.get("num_episodes"), attrs.get("num_frames")) != (len(self._episodes), self._num_frames):
            self._load_commit()
        self._attrs = attrs
        self._readers.clear()

    def _commit(self, updates: dict[str, Any]) -> None:
        """Replace the root attributes' ``updates`` in one atomic write of the root ``zarr.json``."""
        root = getattr(self._group.store, "root", None)
        if isinstance(root, Path):
            doc = json.loads((root / "zarr.json").read_bytes())
            doc.setdefault("attributes", {}).update(updates)
            _write_file(root / "zarr.json", json.dumps(doc, indent=2).encode())
            # the group object's cached attributes are stale now; writes re-open it (_refresh)
            self._attrs = doc["attributes"]
        else:  # remote object stores replace a key in one put
            self._group.update_attributes(updates)
            self._attrs = dict(self._group.attrs)

    def _check_frames(self, frames: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], int]:
        if not isinstance(frames, Mapping):
            raise StoreError(f"frames: expected a dict of key -> (T, ...) arrays, got {type(frames).__name__}")
        unknown = [k for k in frames if k not in self._spec.features and k not in IMPLICIT_KEYS]
        if unknown:
            raise StoreError(f"{unknown[0]!r}: unknown key; valid keys are {self.keys}")
        missing = [k for k in self._spec.features if k not in frames and k != ACTION]
        if missing:
            raise StoreError(f"{missing[0]!r}: missing key (every episode needs {[k for k in self.keys if k != ACTION]}"
                             f"; only {ACTION!r} may be left out)")
        out: dict[str, np.ndarray] = {}
        lengths: dict[str, int] = {}
        for key, f in self._spec.features.items():
            if key not in frames:
                continue
            v = frames[key]
            if hasattr(v, "detach"):  # torch tensor
                v = v.detach().cpu().numpy()
            v = np.asarray(v)
            want = np.dtype(f.dtype)
            if v.dtype != want:
                castable = (f.kind != "image" and v.dtype.kind in "biuf" and np.can_cast(v.dtype, want, "same_kind"))
                if not castable:
                    raise StoreError(f"{key}: wrong dtype {v.dtype}, expected {f.dtype}"
                                     + (" (images are uint8)" if f.kind == "image" else ""))
            if v.ndim != 1 + len(f.shape) or tuple(v.shape[1:]) != tuple(f.shape):
                raise StoreError(f"{key}: wrong shape {v.shape}, expected (T, {', '.join(map(str, f.shape))})")
            if _is_checked_float(f) and not np.isfinite(v).all():
                bad = np.argwhere(~np.isfinite(v.reshape(len(v), -1)))[0]
                raise StoreError(f"{key}: NaN or inf at frame {int(bad[0])}, element {int(bad[1])}")
            out[key] = np.ascontiguousarray(v, dtype=want)
            lengths[key] = len(v)
        if len(set(lengths.values())) > 1:
            raise StoreError(f"mismatched lengths: {lengths}; every key needs the same number of frames")
        t = next(iter(lengths.values()))
        if t == 0:
            raise StoreError("frames: empty episode (0 frames)")
        return out, t

    def append_episode(self, frames: Mapping[str, np.ndarray], task: str, success: bool = True, source: str = "",
                       task_id: str | None = None, meta: dict | None = None) -> int:
        """Append one episode atomically and return its index.

        ``frames``: flat LeRobot keys -> (T, ...) arrays; ``action`` may be absent (video-only
        episode: stored as zeros and flagged ``has_action=False``). ``task`` is the instruction;
        ``task_id`` defaults to it. ``meta`` is any JSON-serialisable dict.
        """
        self._require_writable()
        if not isinstance(task, str) or not task.strip():
            raise StoreError(f"task: expected a non-empty instruction string, got {task!r}")
        if task_id is not None and not isinstance(task_id, str):
            raise StoreError(f"task_id: expected a string or None, got {type(task_id).__name__}")
        arrays, t = self._check_frames(frames)
        has_action = ACTION in arrays or ACTION not in self._spec.features
        if ACTION in self._spec.features and ACTION not in arrays:
            f = self._spec.features[ACTION]
            arrays[ACTION] = np.zeros((t, *f.shape), f.dtype)
        doc = {"task_id": task_id if task_id is not None else task, "instruction": task, "success": bool(success),
               "length": int(t), "source": str(source), "has_action": bool(has_action), "meta": meta or {}}
        try:
            doc_json = json.dumps(doc, sort_keys=True)
        except (TypeError, ValueError) as e:
            raise StoreError(f"meta: not JSON-serialisable ({e})") from None
        with self._write_op("append an episode"):
            n0, e0 = self.num_frames, self.num_episodes
            n1 = n0 + t
            # 1) frames past the committed end
            for key, value in arrays.items():
                arr = self._group[f"data/{key}"]
                arr.resize((n1, *arr.shape[1:]))
                arr[n0:n1] = value
            # 2) meta rows past the committed count
            ends = self._group["meta/episode_ends"]
            ends.resize((e0 + 1,))
            ends[e0:e0 + 1] = np.array([n1], np.int64)
            eps = self._group["meta/episodes"]
            eps.resize((e0 + 1,))
            eps[e0:e0 + 1] = np.array([doc_json], dtype=object)
            # 3) commit: one atomic replace of the root zarr.json
            self._commit({"num_episodes": e0 + 1, "num_frames": n1, "stats": None})
            self._ends = np.append(self._ends, np.int64(n1))
            self._episodes.append(json.loads(doc_json))
            self._num_frames = n1
            self._readers.clear()
        return e0

    def compute_stats(self, keys: Iterable[str] | None = None, max_image_frames: int = 2000,
                      seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
        """Per-key mean, std, min, max, q01, q99 (images: per channel in [0, 1], on a frame sample).

        Saved in ``attrs["stats"]`` when the store is writable. Actions count only episodes that have them.
        """
        from vlastack.datasets.stats import compute_store_stats, stats_to_json

        if self.num_frames == 0:
            raise StoreError(f"{self._loc.raw}: no frames; append episodes before computing stats")
        n = self.num_frames
        stats = compute_store_stats(self, self._check_keys(keys), max_image_frames=max_image_frames, seed=seed)
        if self._mode == "a" and not self._closed:
            with self._write_op("save statistics"):
                if self.num_frames != n:
                    warnings.warn(f"{self._loc.raw}: another writer appended while statistics were computed "
                                  f"({n} -> {self.num_frames} frames); not saving them", stacklevel=2)
                else:
                    self._commit({"stats": stats_to_json(stats)})
        return stats

    # ----------------------------------------------------------------- feature cache

    def _feature_path(self, encoder: str, key: str) -> str:
        if not isinstance(encoder, str) or not _NAME_RE.match(encoder):
            raise StoreError(f"encoder: {encoder!r} is not a valid name (letters, digits, '_', '-', '.')")
        self._check_keys([key])
        return f"features/{encoder}/{key}"

    def write_features(self, encoder: str, key: str, values: np.ndarray, meta: dict | None = None) -> None:
        """Cache a frozen encoder's outputs for ``key``: values (num_frames, ...) float16/float32.

        Written under ``features/<encoder>/<key>``; marked complete only after the data is in,
        so a killed write reads as absent.
        """
        self._require_writable()
        name = self._feature_path(encoder, key)
        if hasattr(values, "detach"):
            values = values.detach().cpu().numpy()
        values = np.asarray(values)
        if values.dtype not in (np.float16, np.float32):
            raise StoreError(f"{name}: wrong dtype {values.dtype}, expected float16 or float32")
        if not np.isfinite(values).all():
            raise StoreError(f"{name}: NaN or inf in features")
        try:
            json.dumps(meta or {})
        except (TypeError, ValueError) as e:
            raise StoreError(f"meta: not JSON-serialisable ({e})") from None
        with self._write_op(f"write the feature cache {name}"):
            if values.ndim < 2 or values.shape[0] != self.num_frames:
                raise StoreError(f"{name}: mismatched length: shape {values.shape}, expected ({self.num_frames}, ...)")
            row = int(np.prod(values.shape[1:], dtype=np.int64)) * values.dtype.itemsize
            chunks = (max(1, min(max(1, values.shape[0]), (1 << 20) // max(1, row))), *values.shape[1:])
            grp = self._group.require_group(f"features/{encoder}")
            arr = grp.create_array(key, shape=values.shape, chunks=chunks, dtype=values.dtype,
                                   compressors=_blosc(3, "shuffle"), fill_value=0, overwrite=True,
                                   attributes={"complete": False})
            arr[:] = values
            arr.update_attributes({"complete": True, "num_frames": self.num_frames, "meta": meta or {}})
            self._readers.pop(name, None)

    def has_features(self, encoder: str, key: str) -> bool:
        """Whether a complete, up-to-date cache exists for (encoder, key)."""
        name = self._feature_path(encoder, key)
        try:
            arr = self._group[name]
        except KeyError:
            return False
        a = dict(arr.attrs)
        return bool(a.get("complete")) and a.get("num_frames") == self.num_frames and arr.shape[0] == self.num_frames

    def read_features(self, encoder: str, key: str):
        """The zarr array ``features/<encoder>/<key>`` (num_frames, ...); StoreError if absent or stale."""
        name = self._feature_path(encoder, key)
        if not self.has_features(encoder, key):
            have = self.list_features()
            raise StoreError(f"{name}: no complete feature cache for {self.num_frames} frames; cached: {have}")
        return self._group[name]

    def read_feature_rows(self, encoder: str, key: str, rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Rows of a feature cache -> (N, ...) (written into ``out`` when given, as :meth:`read_rows`)."""
        self.read_features(encoder, key)
        return self._rows(f"features/{encoder}/{key}", np.asarray(rows, np.int64).reshape(-1), out)

    def list_features(self) -> dict[str, list[str]]:
        """encoder -> keys with a complete cache."""
        out: dict[str, list[str]] = {}
        try:
            fgroup = self._group["features"]
        except KeyError:
            return out
        for enc, g in fgroup.groups():
            keys = [k for k, _ in g.arrays() if self.has_features(enc, k)]
            if keys:
                out[enc] = sorted(keys)
        return out

    # ----------------------------------------------------------------- lifecycle

    def close(self) -> None:
        """Finish writing (zip stores are packed now) and release the store."""
        if self._closed:
            return
        self._closed = True
        self._readers.clear()
        if self._finalizer is not None:
            try:
                self._finalizer()  # packs (when writable), removes the staging directory, drops the lock
            except OSError as e:
                raise _os_error(self._loc.raw, "pack the zip (this session's episodes are lost; the zip is "
                                "as it was before it was opened)", e) from None
        while self._lock is not None and self._lock.held:  # closed inside ``locked()``
            self._lock.release()

    def __enter__(self) -> "TrajectoryStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self):
        raise TypeError("TrajectoryStore does not pickle; pass its path and open it in each process")


def open_store(path: str | os.PathLike, mode: str = "r", verify: str = "fast",
               lock_timeout: float = DEFAULT_LOCK_TIMEOUT) -> TrajectoryStore:
    """Shorthand for :meth:`TrajectoryStore.open`."""
    return TrajectoryStore.open(path, mode=mode, verify=verify, lock_timeout=lock_timeout)


def episodes_from_store(store: TrajectoryStore, episodes: Sequence[int] | None = None):
    """Yield (index, frames, metadata) for each episode (all by default)."""
    for i in range(store.num_episodes) if episodes is None else episodes:
        yield i, store.episode(i), store.episodes[i]
