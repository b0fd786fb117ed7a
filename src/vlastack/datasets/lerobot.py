"""LeRobotDataset directories in and out, with pyarrow + PyAV only (no ``lerobot`` import).

Reading (:class:`LeRobotReader`) knows two on-disk layouts:

- **v3.0** (LeRobot >= 0.4): ``meta/info.json``, ``meta/tasks.parquet`` (task strings are the pandas
  index, stored as ``__index_level_0__``), ``meta/episodes/chunk-XXX/file-YYY.parquet`` (per episode
  ``dataset_from_index``, ``data/chunk_index``, ``videos/<key>/from_timestamp`` ...),
  ``data/chunk-XXX/file-YYY.parquet`` holding many episodes, and ``videos/<key>/chunk-XXX/file-YYY.mp4``
  holding many episodes back to back (a frame sits at ``from_timestamp + timestamp`` in its file).
- **v2.1 / v2.0**: one parquet and one mp4 per episode
  (``data/chunk-000/episode_000000.parquet``, ``videos/chunk-000/<key>/episode_000000.mp4``) and
  ``meta/episodes.jsonl`` / ``meta/tasks.jsonl``.

Images come from the videos (any codec FFmpeg decodes: AV1, H.264, ...) or, for datasets written
with ``use_videos=False``, from PNG/JPEG bytes inside the data parquet.

Feature mapping to our :class:`~vlastack.types.DatasetSpec`: ``video``/``image`` features become
kind ``"image"`` H x W x 3 uint8 (a key outside ``observation.images.`` such as ``observation.image``
is renamed to ``observation.images.<last part>``); ``observation.state`` kind ``"state"`` and
``action`` kind ``"action"`` (both float32); every other numeric feature except LeRobot's
bookkeeping columns (timestamp, frame_index, episode_index, index, task_index) kind ``"other"``.

Writing (:func:`store_to_lerobot`) produces a v3.0 directory LeRobot 0.4 loads: info.json,
stats.json (min/max/mean/std/count and q01/q10/q50/q90/q99), tasks.parquet, the episodes parquet,
data parquet, and one mp4 per camera with the episodes back to back (AV1 via libsvtav1 where PyAV
has it, else H.264; yuv420p).
"""

from __future__ import annotations

import json
import math
import shutil
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from vlastack.types import (ACTION, IMAGE_PREFIX, STATE, ActionSpace, DatasetSpec, FeatureSpec)

#: LeRobot's per-frame bookkeeping columns; the store keeps these implicitly.
BOOKKEEPING = ("timestamp", "frame_index", "episode_index", "index", "task_index")
SUPPORTED_VERSIONS = ("v2.0", "v2.1", "v3.0")
V3_DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
V3_VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
V3_EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"

Progress = Callable[[int, int], None]  # (episodes done, episodes total)


class ConversionError(ValueError):
    """A dataset that cannot be converted; the message names the file or key and the problem."""


# ----------------------------------------------------------------------------- helpers

def _load_json(path: Path) -> Any:
    if not path.is_file():
        raise ConversionError(f"{path}: missing (a LeRobotDataset needs meta/info.json)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConversionError(f"{path}: not valid JSON ({e})") from e


def _load_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        raise ConversionError(f"{path}: missing (v2.x datasets keep their metadata in meta/*.jsonl)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def lerobot_version(root: str | Path) -> str:
    """The ``codebase_version`` of a LeRobotDataset directory (e.g. ``"v3.0"``)."""
    info = _load_json(Path(root) / "meta" / "info.json")
    return str(info.get("codebase_version", "unknown"))


def is_lerobot_dir(path: str | Path) -> bool:
    """Whether ``path`` looks like a LeRobotDataset directory (has ``meta/info.json``)."""
    return (Path(path) / "meta" / "info.json").is_file()


def _names_list(names: Any, n: int) -> tuple[str, ...] | None:
    """LeRobot names may be a list or ``{"motors": [...]}``; keep them only if they match shape (n,)."""
    if isinstance(names, Mapping):
        flat = [x for v in names.values() if isinstance(v, (list, tuple)) for x in v]
        names = flat
    if isinstance(names, (list, tuple)) and len(names) == n and all(isinstance(x, str) for x in names):
        return tuple(names)
    return None


def _image_hwc(key: str, ft: Mapping[str, Any]) -> tuple[int, int, int]:
    """H x W x 3 of a LeRobot image/video feature (its shape may be HWC or CHW; names tell)."""
    shape = [int(s) for s in ft.get("shape", ())]
    names = list(ft.get("names") or [])
    info = ft.get("info") or ft.get("video_info") or {}
    if "video.height" in info and "video.width" in info:
        return int(info["video.height"]), int(info["video.width"]), 3
    if len(shape) != 3:
        raise ConversionError(f"{key}: image feature shape {shape} is not 3-d (expected H x W x C or C x H x W)")
    if names[:1] in (["channels"], ["channel"], ["c"]) or (shape[0] in (1, 3, 4) and shape[2] not in (1, 3, 4)):
        return shape[1], shape[2], 3
    return shape[0], shape[1], 3


def _store_image_key(key: str) -> str:
    """Our flat key for a LeRobot camera key (``observation.image`` -> ``observation.images.image``)."""
    return key if key.startswith(IMAGE_PREFIX) else IMAGE_PREFIX + key.split(".")[-1]


def spec_from_lerobot_info(info: Mapping[str, Any]) -> tuple[DatasetSpec, dict[str, str]]:
    """Our DatasetSpec from a LeRobot ``info.json``, plus the map store key -> LeRobot key."""
    feats: dict[str, FeatureSpec] = {}
    source: dict[str, str] = {}
    for key, ft in info.get("features", {}).items():
        dtype = ft.get("dtype")
        if key in BOOKKEEPING or dtype in ("string", "str"):
            continue
        if dtype in ("video", "image"):
            skey = _store_image_key(key)
            if skey in feats:
                raise ConversionError(f"{key}: maps to {skey!r}, already taken by {source[skey]!r}")
            feats[skey] = FeatureSpec(skey, _image_hwc(key, ft), "uint8", ("height", "width", "channel"),
                                      "pixel", "image")
            source[skey] = key
            continue
        try:
            np.dtype(dtype)
        except TypeError as e:
            raise ConversionError(f"{key}: unknown LeRobot dtype {dtype!r}") from e
        shape = tuple(int(s) for s in ft.get("shape", (1,)))
        kind = {STATE: "state", ACTION: "action"}.get(key, "other")
        out_dtype = "float32" if kind in ("state", "action") else str(np.dtype(dtype))
        names = _names_list(ft.get("names"), shape[0]) if len(shape) == 1 else None
        feats[key] = FeatureSpec(key, shape, out_dtype, names, None, kind)
        source[key] = key
    if not feats:
        raise ConversionError("info.json declares no features we can convert")
    aspace = ActionSpace()
    if ACTION in feats:
        d = feats[ACTION].shape[0]
        names = feats[ACTION].names
        layout = tuple((n, i, i + 1) for i, n in enumerate(names)) if names else (("action", 0, d),)
        aspace = ActionSpace(frame="unknown", mode="unknown", rotation="unknown", layout=layout, gripper="unknown")
    return DatasetSpec(feats, float(info.get("fps", 30)), aspace), source


def _column_to_numpy(col, n: int, shape: tuple[int, ...], dtype: str, key: str) -> np.ndarray:
    """An arrow column of n rows -> (n, *shape) numpy, flattening (fixed-size) list nesting."""
    import pyarrow as pa

    arr = col.combine_chunks() if hasattr(col, "combine_chunks") else col
    while pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type) or pa.types.is_fixed_size_list(arr.type):
        arr = arr.flatten()
    flat = arr.to_numpy(zero_copy_only=False)
    size = int(np.prod(shape)) if shape else 1
    if flat.size != n * size:
        raise ConversionError(f"{key}: {flat.size} values for {n} frames of shape {shape}")
    out = flat.reshape((n, *shape))
    if np.issubdtype(out.dtype, np.floating) and np.dtype(dtype).kind != "f" and np.isnan(out).any():
        raise ConversionError(f"{key}: missing values in a {dtype} column")
    return out.astype(dtype, copy=False)


def _decode_image_cell(cell: Mapping[str, Any] | None, root: Path, key: str) -> np.ndarray:
    """One parquet image cell ({bytes, path}) -> H x W x 3 uint8."""
    import io

    from PIL import Image

    if cell is None:
        raise ConversionError(f"{key}: empty image cell")
    data = cell.get("bytes")
    if data is None:
        p = cell.get("path")
        if not p:
            raise ConversionError(f"{key}: image cell has neither bytes nor path")
        path = Path(p) if Path(p).is_absolute() else root / p
        if not path.is_file():
            raise ConversionError(f"{key}: image file {path} not found")
        data = path.read_bytes()
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)  # (H, W, 3)


class _VideoCursor:
    """Decodes frames at given timestamps from one mp4 at a time, reading forward without
    re-seeking when consecutive requests continue where the last one stopped."""

    def __init__(self):
        self.path: Path | None = None
        self.container = None
        self.stream = None
        self.frames = None  # iterator of decoded frames
        self.last_t = -math.inf  # time of the last decoded frame

    def close(self) -> None:
        """Release the open file."""
        if self.container is not None:
            self.container.close()
        self.path = self.container = self.stream = self.frames = None
        self.last_t = -math.inf

    def _open(self, path: Path) -> None:
        import av

        self.close()
        if not path.is_file():
            raise ConversionError(f"video file {path} not found")
        try:
            self.container = av.open(str(path))
        except av.error.FFmpegError as e:
            raise ConversionError(f"{path}: cannot open video ({e})") from e
        if not self.container.streams.video:
            raise ConversionError(f"{path}: no video stream")
        self.stream = self.container.streams.video[0]
        self.stream.thread_type = "AUTO"
        self.path = path
        self.frames = self.container.decode(self.stream)

    def read(self, path: Path, timestamps: np.ndarray, tol: float, key: str) -> np.ndarray:
        """Frames nearest to ``timestamps`` (seconds in this file): (T, H, W, 3) uint8."""
        if self.path != path:
            self._open(path)
        first, last = float(timestamps.min()), float(timestamps.max())
        if not (self.last_t < first - tol and first - self.last_t < 2.0):
            # behind us, or far ahead: seek to the key frame before ``first``
            self.container.seek(max(0, int((first - tol) / self.stream.time_base)), stream=self.stream,
                                backward=True)
            self.frames = self.container.decode(self.stream)
            self.last_t = -math.inf
        times: list[float] = []
        images: list[np.ndarray] = []
        while self.last_t < last + tol:
            try:
                frame = next(self.frames)
            except StopIteration:
                break
            except Exception as e:  # av.error.* on corrupt data
                raise ConversionError(f"{key}: decoding {path} failed near t={self.last_t:.3f}s ({e})") from e
            t = float(frame.pts * self.stream.time_base) if frame.pts is not None else self.last_t + tol
            self.last_t = t
            if t >= first - tol:
                times.append(t)
                images.append(frame.to_ndarray(format="rgb24"))  # (H, W, 3)
        if not times:
            raise ConversionError(f"{key}: no frames in {path} between {first:.3f}s and {last:.3f}s")
        times_a = np.asarray(times)  # (F,)
        nearest = np.abs(times_a[None, :] - timestamps[:, None]).argmin(1)  # (T,)
        err = np.abs(times_a[nearest] - timestamps)
        if (err > tol).any():
            bad = int(np.argmax(err))
            raise ConversionError(f"{key}: {path} has no frame within {tol:.4f}s of t={timestamps[bad]:.4f}s "
                                  f"(nearest {times_a[nearest[bad]]:.4f}s)")
        return np.stack([images[i] for i in nearest])  # (T, H, W, 3)


# ----------------------------------------------------------------------------- reader

class LeRobotReader:
    """Reads a LeRobotDataset directory (v3.0, v2.1 or v2.0) episode by episode.

    ``reader.spec`` is our DatasetSpec for it; ``reader.read_episode(i)`` returns
    ``(frames, task, meta)`` with ``frames`` a flat dict of (T, ...) arrays matching the spec;
    iterating the reader yields that for every episode in order.
    """

    def __init__(self, root: str | Path, video_tolerance_s: float | None = None):
        import pyarrow.parquet as pq

        self.root = Path(root)
        if not self.root.is_dir():
            raise ConversionError(f"{self.root}: not a directory (expected a LeRobotDataset root)")
        self.info = _load_json(self.root / "meta" / "info.json")
        self.version = str(self.info.get("codebase_version", "unknown"))
        if self.version not in SUPPORTED_VERSIONS:
            raise ConversionError(f"{self.root}: codebase_version {self.version!r} not supported; "
                                  f"choose a dataset of one of {SUPPORTED_VERSIONS}")
        self.fps = float(self.info.get("fps", 0))
        if self.fps <= 0:
            raise ConversionError(f"{self.root}/meta/info.json: fps must be positive, got {self.info.get('fps')!r}")
        self.features: dict[str, dict] = self.info.get("features", {})
        self.spec, self._source = spec_from_lerobot_info(self.info)
        self.video_keys = [k for k, f in self.features.items() if f.get("dtype") == "video"]
        self.tol = video_tolerance_s if video_tolerance_s is not None else 0.4 / self.fps
        self._cursors: dict[str, _VideoCursor] = {}
        self._data_cache: tuple[Path | None, Any] = (None, None)
        if self.version == "v3.0":
            tasks_path = self.root / "meta" / "tasks.parquet"
            if not tasks_path.is_file():
                raise ConversionError(f"{tasks_path}: missing")
            t = pq.read_table(tasks_path).to_pydict()
            name_col = "__index_level_0__" if "__index_level_0__" in t else ("task" if "task" in t else None)
            if name_col is None or "task_index" not in t:
                raise ConversionError(f"{tasks_path}: expected columns task_index and __index_level_0__ (or task), "
                                      f"got {sorted(t)}")
            self.tasks = {int(i): str(s) for i, s in zip(t["task_index"], t[name_col])}
            files = sorted((self.root / "meta" / "episodes").glob("*/*.parquet"))
            if not files:
                raise ConversionError(f"{self.root}/meta/episodes: no episodes parquet files")
            rows: list[dict] = []
            for f in files:
                tab = pq.read_table(f)
                keep = [c for c in tab.column_names if not c.startswith("stats/")]
                rows += tab.select(keep).to_pylist()
            self._episodes = sorted(rows, key=lambda r: int(r["episode_index"]))
        else:
            self.tasks = {int(r["task_index"]): str(r["task"]) for r in _load_jsonl(self.root / "meta" / "tasks.jsonl")}
            self._episodes = sorted(_load_jsonl(self.root / "meta" / "episodes.jsonl"),
                                    key=lambda r: int(r["episode_index"]))
        for r in self._episodes:
            if "length" not in r:
                raise ConversionError(f"{self.root}: episode {r.get('episode_index')} has no length")

    # -- sizes
    @property
    def num_episodes(self) -> int:
        """Number of episodes."""
        return len(self._episodes)

    @property
    def num_frames(self) -> int:
        """Total number of frames."""
        return sum(int(r["length"]) for r in self._episodes)

    def episode_info(self, i: int) -> dict:
        """The episode's metadata row (episode_index, tasks, length, file locations)."""
        if not 0 <= i < self.num_episodes:
            raise IndexError(f"episode {i} out of range [0, {self.num_episodes})")
        return dict(self._episodes[i])

    # -- frames
    def _data_table(self, path: Path):
        import pyarrow.parquet as pq

        if self._data_cache[0] != path:
            if not path.is_file():
                raise ConversionError(f"data file {path} not found")
            self._data_cache = (path, pq.read_table(path))
        return self._data_cache[1]

    def _episode_rows(self, i: int):
        import pyarrow.compute as pc

        row = self._episodes[i]
        ep = int(row["episode_index"])
        if self.version == "v3.0":
            rel = self.info.get("data_path", V3_DATA_PATH).format(
                chunk_index=int(row["data/chunk_index"]), file_index=int(row["data/file_index"]))
        else:
            chunk = ep // int(self.info.get("chunks_size", 1000))
            rel = self.info["data_path"].format(episode_chunk=chunk, episode_index=ep)
        table = self._data_table(self.root / rel)
        if "episode_index" in table.column_names:
            table = table.filter(pc.equal(table["episode_index"], ep))
        if "frame_index" in table.column_names:
            table = table.sort_by("frame_index")
        n = table.num_rows
        if n != int(row["length"]):
            raise ConversionError(f"{self.root / rel}: episode {ep} has {n} frames, metadata says {row['length']}")
        return table

    def _video_path(self, i: int, key: str) -> tuple[Path, float]:
        row = self._episodes[i]
        ep = int(row["episode_index"])
        if self.version == "v3.0":
            col = f"videos/{key}/"
            if col + "chunk_index" not in row:
                raise ConversionError(f"{self.root}: episodes metadata lacks {col}chunk_index for episode {ep}")
            rel = self.info.get("video_path") or V3_VIDEO_PATH
            rel = rel.format(video_key=key, chunk_index=int(row[col + "chunk_index"]),
                             file_index=int(row[col + "file_index"]))
            return self.root / rel, float(row.get(col + "from_timestamp") or 0.0)
        chunk = ep // int(self.info.get("chunks_size", 1000))
        return self.root / self.info["video_path"].format(episode_chunk=chunk, video_key=key, episode_index=ep), 0.0

    def read_episode(self, i: int) -> tuple[dict[str, np.ndarray], str, dict]:
        """Episode ``i`` as (frames, task, meta): frames maps each spec key to (T, ...) arrays."""
        info = self.episode_info(i)
        ep = int(info["episode_index"])
        table = self._episode_rows(i)
        n = table.num_rows
        frames: dict[str, np.ndarray] = {}
        for skey, f in self.spec.features.items():
            lkey = self._source[skey]
            if f.kind == "image" and lkey in self.video_keys:
                path, offset = self._video_path(i, lkey)
                ts = (table["timestamp"].to_numpy().astype(np.float64) if "timestamp" in table.column_names
                      else np.arange(n) / self.fps)  # (T,)
                cursor = self._cursors.setdefault(lkey, _VideoCursor())
                imgs = cursor.read(path, offset + ts, self.tol, lkey)  # (T, H, W, 3)
            elif f.kind == "image":
                if lkey not in table.column_names:
                    raise ConversionError(f"{lkey}: image column missing from the data parquet of episode {ep}")
                imgs = np.stack([_decode_image_cell(c, self.root, lkey) for c in table[lkey].to_pylist()])
            else:
                if lkey not in table.column_names:
                    raise ConversionError(f"{lkey}: column missing from the data parquet of episode {ep}; "
                                          f"columns are {table.column_names}")
                frames[skey] = _column_to_numpy(table[lkey], n, f.shape, f.dtype, lkey)
                continue
            if imgs.shape[1:] != f.shape:
                raise ConversionError(f"{lkey}: decoded frames are {imgs.shape[1:]}, info.json says {f.shape}")
            frames[skey] = imgs
        task_ids = table["task_index"].to_numpy() if "task_index" in table.column_names else np.zeros(0, int)
        names = [str(t) for t in (info.get("tasks") or [])]
        if len(task_ids):
            first = int(task_ids[0])
            if first not in self.tasks:
                raise ConversionError(f"episode {ep}: task_index {first} not in the tasks table {sorted(self.tasks)}")
            task = self.tasks[first]
            names = list(dict.fromkeys([self.tasks[int(t)] for t in task_ids if int(t) in self.tasks]))
        elif names:
            task, first = names[0], next((k for k, v in self.tasks.items() if v == names[0]), None)
        else:
            raise ConversionError(f"episode {ep}: no task (neither task_index nor tasks)")
        meta = {"episode_index": ep, "tasks": names, "task_index": first, "lerobot_version": self.version,
                "robot_type": self.info.get("robot_type")}
        if "next.success" in frames:
            meta["success"] = bool(np.asarray(frames["next.success"]).any())
        return frames, task, meta

    def __iter__(self) -> Iterator[tuple[dict[str, np.ndarray], str, dict]]:
        for i in range(self.num_episodes):
            yield self.read_episode(i)

    def close(self) -> None:
        """Close any open video files."""
        for c in self._cursors.values():
            c.close()
        self._cursors.clear()
        self._data_cache = (None, None)

    def __enter__(self) -> "LeRobotReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
