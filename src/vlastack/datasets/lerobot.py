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
import os
import shutil
import string
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from vlastack import fsutil
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


#: the fields each path template of info.json may use (LeRobot v3.0 and v2.x).
_TEMPLATE_FIELDS = {"data_path": {"chunk_index", "file_index", "episode_chunk", "episode_index"},
                    "video_path": {"chunk_index", "file_index", "episode_chunk", "episode_index", "video_key"}}


def _check_template(root: Path, key: str, template: Any) -> None:
    """Refuse an info.json path template that could point outside the dataset (untrusted input)."""
    where = f"{root}/meta/info.json: {key}"
    if not isinstance(template, str) or not template:
        raise ConversionError(f"{where} must be a non-empty path template string, got {template!r}")
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        raise ConversionError(f"{where} {template!r} is not a valid template ({e})") from None
    bad = [f for f in fields if f not in _TEMPLATE_FIELDS[key]]
    if bad:
        raise ConversionError(f"{where} {template!r} uses {bad[0]!r}; templates may use only the fields "
                              f"{sorted(_TEMPLATE_FIELDS[key])}")
    p = Path(template)
    if p.is_absolute() or ".." in p.parts:
        raise ConversionError(f"{where} {template!r} points outside the dataset (absolute or '..'); "
                              "refusing to read it")


def _inside(root: Path, rel: str | Path, what: str) -> Path:
    """``root / rel``, refused when it is absolute, climbs with '..' or resolves (symlinks) outside ``root``."""
    p = Path(rel)
    if p.is_absolute() or ".." in p.parts:
        raise ConversionError(f"{what} {str(rel)!r} points outside the dataset {root} (absolute or '..'); "
                              "refusing to read it")
    full = root / p
    if not full.resolve().is_relative_to(root.resolve()):
        raise ConversionError(f"{full}: resolves outside the dataset {root} (to {full.resolve()}); "
                              "refusing to read it")
    return full


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


def _restore_our_spec(info: Mapping[str, Any], mapped: DatasetSpec) -> DatasetSpec:
    """The spec our writer saved in info.json (units, kinds, action space), if it matches ``mapped``."""
    saved = (info.get("vlastack") or {}).get("spec")
    if not saved:
        return mapped
    try:
        ours = DatasetSpec.from_dict(saved)
    except (TypeError, ValueError, KeyError):
        return mapped
    same = (list(ours.features) == list(mapped.features) and ours.fps == mapped.fps
            and all(ours.features[k].shape == f.shape and ours.features[k].dtype == f.dtype
                    for k, f in mapped.features.items()))
    return ours if same else mapped


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
        path = _inside(root, p, f"{key}: image path")
        if not path.is_file():
            raise ConversionError(f"{key}: image file {path} not found")
        data = path.read_bytes()
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)  # (H, W, 3)


class _VideoCursor:
    """Decodes frames at given timestamps from one mp4 at a time. Consecutive requests that pick up
    where the last one stopped (episodes stored back to back) keep decoding forward without a seek."""

    def __init__(self):
        self.path: Path | None = None
        self.container = None
        self.stream = None
        self.frames = None  # iterator of decoded frames
        self.pending = None  # (t, frame): decoded past the last request, not consumed yet
        self.consumed_t = -math.inf  # time of the last frame consumed from the decoder
        self.seeks = 0

    def close(self) -> None:
        """Release the open file."""
        if self.container is not None:
            self.container.close()
        self.path = self.container = self.stream = self.frames = self.pending = None
        self.consumed_t = -math.inf

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

    def _time(self, frame) -> float:
        return float(frame.pts * self.stream.time_base) if frame.pts is not None else self.consumed_t + 1e-6

    def _decoded(self, key: str):
        """(t, frame) pairs: the pending frame first, then the decoder's."""
        if self.pending is not None:
            pending, self.pending = self.pending, None
            yield pending
        while True:
            try:
                frame = next(self.frames)
            except StopIteration:
                return
            except Exception as e:  # av.error.* on corrupt data
                raise ConversionError(f"{key}: decoding {self.path} failed after t={self.consumed_t:.3f}s ({e})") from e
            yield self._time(frame), frame

    def read(self, path: Path, timestamps: np.ndarray, tol: float, key: str) -> np.ndarray:
        """Frames nearest to ``timestamps`` (seconds in this file): (T, H, W, 3) uint8."""
        if self.path != path:
            self._open(path)
        first, last = float(timestamps.min()), float(timestamps.max())
        ahead = self.frames is not None and self.consumed_t < first - tol and first - self.consumed_t < 2.0
        if not ahead:  # behind us, or far ahead: seek to the key frame before ``first``
            self.container.seek(max(0, int((first - tol) / self.stream.time_base)), stream=self.stream,
                                backward=True)
            self.frames = self.container.decode(self.stream)
            self.pending, self.consumed_t = None, -math.inf
            self.seeks += 1
        times: list[float] = []
        images: list[np.ndarray] = []
        for t, frame in self._decoded(key):
            if t > last + tol:
                self.pending = (t, frame)
                break
            self.consumed_t = t
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
        for key, default in (("data_path", V3_DATA_PATH if self.version == "v3.0" else None),
                             ("video_path", None)):
            template = self.info.get(key) or default
            if template is not None or key == "data_path":
                _check_template(self.root, key, template)
        self.features: dict[str, dict] = self.info.get("features", {})
        self.spec, self._source = spec_from_lerobot_info(self.info)
        self.spec = _restore_our_spec(self.info, self.spec)
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
        table = self._data_table(_inside(self.root, rel, "data file"))
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
            return _inside(self.root, rel, "video file"), float(row.get(col + "from_timestamp") or 0.0)
        chunk = ep // int(self.info.get("chunks_size", 1000))
        rel = self.info["video_path"].format(episode_chunk=chunk, video_key=key, episode_index=ep)
        return _inside(self.root, rel, "video file"), 0.0

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
        if _SUCCESS_COL in info and info[_SUCCESS_COL] is not None:  # written by our own writer
            meta["success"] = bool(info[_SUCCESS_COL])
        if info.get(_SOURCE_COL):
            meta["source"] = str(info[_SOURCE_COL])
        if info.get(_HAS_ACTION_COL) is False:  # an action-free episode: its zeros were placeholders
            frames.pop(ACTION, None)
            meta["has_action"] = False
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


# ----------------------------------------------------------------------------- writer (v3.0)

VIDEO_CODECS = ("auto", "libsvtav1", "libx264", "h264", "mpeg4")
STAT_QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)
_HAS_ACTION_COL = "vlastack/has_action"
_SUCCESS_COL = "vlastack/success"
_SOURCE_COL = "vlastack/source"


def pick_video_codec(vcodec: str = "auto") -> str:
    """The encoder to use: ``auto`` prefers AV1 (libsvtav1, LeRobot's default), then H.264."""
    import av

    if vcodec not in VIDEO_CODECS:
        raise ConversionError(f"video codec {vcodec!r} unknown; choose one of {VIDEO_CODECS}")
    candidates = ("libsvtav1", "libx264", "h264", "mpeg4") if vcodec == "auto" else (vcodec,)
    for name in candidates:
        try:
            av.codec.Codec(name, "w")
            return name
        except Exception:  # not built into this FFmpeg
            continue
    raise ConversionError(f"no video encoder among {candidates} in this PyAV build")


DEFAULT_CRF = {"libsvtav1": 30, "libx264": 23, "h264": 23, "mpeg4": 12}  # AV1 30: LeRobot's own default


def _codec_options(codec: str, crf: int | None, gop: int) -> dict[str, str]:
    crf = DEFAULT_CRF.get(codec, 23) if crf is None else int(crf)
    opts = {"g": str(gop)}
    if codec == "libsvtav1":
        opts.update(crf=str(crf), preset="12")
    elif codec in ("libx264", "h264"):
        opts.update(crf=str(crf), preset="veryfast")
    else:
        opts.update(qscale=str(max(1, min(31, crf // 3))))
    return opts


def _video_info(path: Path) -> dict[str, Any]:
    """info.json ``info`` block of one mp4, as LeRobot writes it."""
    import av

    with av.open(str(path)) as c:
        s = c.streams.video[0]
        return {"video.height": s.height, "video.width": s.width, "video.codec": s.codec_context.codec.canonical_name,
                "video.pix_fmt": s.pix_fmt, "video.is_depth_map": False, "video.fps": int(s.base_rate),
                "video.channels": 3, "has_audio": bool(c.streams.audio)}


class _VideoFileWriter:
    """Appends episodes of one camera to mp4 files, back to back, rolling over by size."""

    def __init__(self, root: Path, key: str, fps: int, codec: str, crf: int | None, gop: int, max_mb: float,
                 chunks_size: int):
        self.root, self.key, self.fps, self.codec = root, key, fps, codec
        self.opts, self.max_bytes, self.chunks_size = _codec_options(codec, crf, gop), max_mb * 2**20, chunks_size
        self.chunk = self.file = 0
        self.container = self.stream = None
        self.frames_in_file = 0
        self.first_path: Path | None = None

    def path(self) -> Path:
        return self.root / V3_VIDEO_PATH.format(video_key=self.key, chunk_index=self.chunk, file_index=self.file)

    def _open(self, h: int, w: int) -> None:
        import av

        p = self.path()
        p.parent.mkdir(parents=True, exist_ok=True)
        self.container = av.open(str(p), "w", options={"movflags": "faststart"})
        self.stream = self.container.add_stream(self.codec, rate=self.fps, options=self.opts)
        self.stream.width, self.stream.height, self.stream.pix_fmt = w, h, "yuv420p"
        self.frames_in_file = 0
        self.first_path = self.first_path or p

    def close(self) -> None:
        if self.container is not None:
            for packet in self.stream.encode():
                self.container.mux(packet)
            self.container.close()
            self.container = self.stream = None

    def add_episode(self, images: np.ndarray) -> dict[str, Any]:
        """Encode (T, H, W, 3) uint8 frames; returns the episode's ``videos/<key>/...`` columns."""
        import av

        t, h, w, _ = images.shape
        if h % 2 or w % 2:
            raise ConversionError(f"{self.key}: yuv420p video needs even height and width, got {h} x {w}")
        p = self.path()
        if self.container is not None and p.exists() and p.stat().st_size >= self.max_bytes:
            self.close()
            self.file += 1
            if self.file >= self.chunks_size:
                self.chunk, self.file = self.chunk + 1, 0
        if self.container is None:
            self._open(h, w)
        start = self.frames_in_file
        for img in images:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            frame.pts = self.frames_in_file
            for packet in self.stream.encode(frame):
                self.container.mux(packet)
            self.frames_in_file += 1
        col = f"videos/{self.key}/"
        return {col + "chunk_index": self.chunk, col + "file_index": self.file,
                col + "from_timestamp": start / self.fps, col + "to_timestamp": self.frames_in_file / self.fps}


def _lowdim_stats(x: np.ndarray) -> dict[str, Any]:
    """LeRobot stats of (N, ...) values, reduced over axis 0."""
    x = np.asarray(x, dtype=np.float64)
    qs = np.quantile(x, STAT_QUANTILES, axis=0) if len(x) else np.zeros((len(STAT_QUANTILES), *x.shape[1:]))
    out = {"min": x.min(0), "max": x.max(0), "mean": x.mean(0), "std": x.std(0), "count": np.array([len(x)])}
    out.update({f"q{int(round(q * 100)):02d}": qs[i] for i, q in enumerate(STAT_QUANTILES)})
    return {k: v.tolist() for k, v in out.items()}


def _hist_stats(hist: np.ndarray, count: int) -> dict[str, Any]:
    """LeRobot image stats (per channel, shape (3, 1, 1), in [0, 1]) from (3, 256) uint8 histograms."""
    levels = np.arange(256) / 255.0
    total = hist.sum(1)  # (3,)
    mean = (hist * levels).sum(1) / total
    std = np.sqrt(np.maximum((hist * levels**2).sum(1) / total - mean**2, 0))
    cdf = np.cumsum(hist, 1) / total[:, None]  # (3, 256)
    nz = hist > 0
    out = {"min": levels[nz.argmax(1)], "max": levels[255 - nz[:, ::-1].argmax(1)], "mean": mean, "std": std}
    for q in STAT_QUANTILES:
        out[f"q{int(round(q * 100)):02d}"] = levels[(cdf < q).sum(1).clip(0, 255)]
    res = {k: v.reshape(3, 1, 1).tolist() for k, v in out.items()}
    res["count"] = [count]
    return res


def _image_hist(images: np.ndarray) -> np.ndarray:
    """(3, 256) per-channel counts of (T, H, W, 3) uint8 frames."""
    flat = images.reshape(-1, 3)
    return np.stack([np.bincount(flat[:, c], minlength=256) for c in range(3)])


def _arrow_column(values: np.ndarray, shape: tuple[int, ...], dtype: str):
    """(T, *shape) numpy -> a pyarrow array the way LeRobot / HF datasets store it."""
    import pyarrow as pa

    t = values.shape[0]
    typ = pa.from_numpy_dtype(np.dtype(dtype))
    if shape == (1,):
        return pa.array(values.reshape(t), type=typ)
    if len(shape) == 1:
        return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1), type=typ), shape[0])
    arr = pa.array(values.reshape(-1), type=typ)
    for d in reversed(shape):
        arr = pa.FixedSizeListArray.from_arrays(arr, d)
    return arr


def write_lerobot_v3(dst: str | Path, spec: DatasetSpec, episodes, num_episodes: int | None = None, *,
                     vcodec: str = "auto", crf: int | None = None, gop: int = 2, robot_type: str | None = None,
                     overwrite: bool = False, progress: Progress | None = None,
                     data_files_size_in_mb: float = 100, video_files_size_in_mb: float = 200,
                     chunks_size: int = 1000) -> Path:
    """Write ``episodes`` (an iterable of ``(frames, task, meta)``) as a LeRobotDataset v3.0 directory.

    ``frames`` maps spec keys to (T, ...) arrays; images (kind ``"image"``) are encoded into one mp4
    per camera with the episodes back to back (yuv420p, key frame every ``gop`` frames, quality
    ``crf``: None picks the codec's default, 30 for AV1 as LeRobot does, 23 for H.264). ``meta``
    may carry ``success``, ``source`` and ``has_action`` (kept as extra ``vlastack/*`` episode
    columns that our reader maps back). The directory is built beside ``dst`` and moved into
    place at the end, so a failed conversion leaves no half dataset.
    """
    os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its config banner to stderr otherwise

    dst = Path(dst)
    if dst.exists() and not overwrite:
        raise ConversionError(f"{dst}: already exists (pass overwrite=True / --overwrite to replace it)")
    if os.path.lexists(dst):
        _check_replaceable(dst)
    fps = int(round(spec.fps))
    if abs(fps - spec.fps) > 1e-6 or fps <= 0:
        raise ConversionError(f"LeRobot stores an integer fps; this dataset has fps={spec.fps}")
    for k in spec.features:
        if k in BOOKKEEPING:
            raise ConversionError(f"feature {k!r} collides with LeRobot's bookkeeping column of that name")
    codec = pick_video_codec(vcodec)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.partial-", dir=dst.parent))
    try:
        _write_v3_into(tmp, spec, episodes, num_episodes, fps, codec, crf, gop, robot_type, progress,
                       data_files_size_in_mb, video_files_size_in_mb, chunks_size)
        if os.path.lexists(dst):
            _check_replaceable(dst)  # again: it may have changed while we wrote
        # one atomic exchange where the system allows (see vlastack.fsutil); ``old`` is the previous dataset
        old = fsutil.swap_in(tmp, dst, trash=dst.parent / f".{dst.name}.old-{os.getpid()}")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return dst


def _check_replaceable(dst: Path) -> None:
    """Refuse to replace ``dst`` unless it is a LeRobot dataset directory that vlastack wrote."""
    if dst.is_symlink() or not dst.is_dir():
        raise ConversionError(f"{dst}: exists and is not a directory; refusing to replace it")
    try:
        info = json.loads((dst / "meta" / "info.json").read_text())
    except (OSError, ValueError):
        info = None
    if not (isinstance(info, dict) and isinstance(info.get("vlastack"), dict)):
        raise ConversionError(f"{dst}: not a dataset written by vlastack (no meta/info.json with a 'vlastack' "
                              "entry); refusing to replace it with overwrite. Choose another output directory")


def _write_v3_into(tmp: Path, spec: DatasetSpec, episodes, num_episodes, fps: int, codec: str, crf, gop: int,
                   robot_type, progress, data_files_size_in_mb, video_files_size_in_mb, chunks_size) -> None:
    """The body of :func:`write_lerobot_v3`, writing into the staging directory ``tmp``."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    image_keys = spec.image_keys
    low_keys = [k for k in spec.features if k not in image_keys]
    features: dict[str, dict] = {}
    for k, f in spec.features.items():
        if f.kind == "image":
            features[k] = {"dtype": "video", "shape": list(f.shape), "names": ["height", "width", "channels"]}
        else:
            features[k] = {"dtype": f.dtype, "shape": list(f.shape), "names": list(f.names) if f.names else None}
    features["timestamp"] = {"dtype": "float32", "shape": [1], "names": None}
    for k in ("frame_index", "episode_index", "index", "task_index"):
        features[k] = {"dtype": "int64", "shape": [1], "names": None}
    columns = low_keys + list(BOOKKEEPING)
    col_spec = {k: (tuple(features[k]["shape"]), features[k]["dtype"]) for k in columns}

    videos = {k: _VideoFileWriter(tmp, k, fps, codec, crf, gop, video_files_size_in_mb, chunks_size)
              for k in image_keys}
    tasks: dict[str, int] = {}
    rows: list[dict] = []
    lowdim_all: dict[str, list[np.ndarray]] = {k: [] for k in columns}
    hists = {k: np.zeros((3, 256), np.int64) for k in image_keys}
    writer = None
    data_chunk = data_file = 0
    data_bytes = 0
    total = 0
    try:
        for ep, (frames, task, meta) in enumerate(episodes):
            meta = dict(meta or {})
            lengths = {k: len(v) for k, v in frames.items() if k in spec.features}
            t = next(iter(lengths.values()), 0)
            if t == 0:
                raise ConversionError(f"episode {ep}: no frames")
            has_action = bool(meta.get("has_action", ACTION in frames))
            cols: dict[str, np.ndarray] = {}
            for k in low_keys:
                f = spec.features[k]
                if k not in frames:
                    if k == ACTION and not has_action:
                        cols[k] = np.zeros((t, *f.shape), f.dtype)  # action-free episode: zeros, flagged below
                        continue
                    raise ConversionError(f"episode {ep}: missing key {k!r}")
                v = np.asarray(frames[k])
                if len(v) != t:
                    raise ConversionError(f"episode {ep}: {k} has {len(v)} frames, expected {t}")
                cols[k] = v.reshape(t, *f.shape).astype(f.dtype, copy=False)
            task_index = tasks.setdefault(str(task), len(tasks))
            fi = np.arange(t)
            cols["timestamp"] = (fi / fps).astype(np.float32)
            cols["frame_index"] = fi.astype(np.int64)
            cols["episode_index"] = np.full(t, ep, np.int64)
            cols["index"] = (total + fi).astype(np.int64)
            cols["task_index"] = np.full(t, task_index, np.int64)
            table = pa.table({k: _arrow_column(cols[k], *col_spec[k]) for k in columns})
            if writer is not None and data_bytes + table.nbytes > data_files_size_in_mb * 2**20:
                writer.close()
                writer, data_bytes = None, 0
                data_file += 1
                if data_file >= chunks_size:
                    data_chunk, data_file = data_chunk + 1, 0
            if writer is None:
                p = tmp / V3_DATA_PATH.format(chunk_index=data_chunk, file_index=data_file)
                p.parent.mkdir(parents=True, exist_ok=True)
                writer = pq.ParquetWriter(p, table.schema, compression="snappy")
            writer.write_table(table)
            data_bytes += table.nbytes
            row: dict[str, Any] = {"episode_index": ep, "tasks": [str(task)], "length": t,
                                   "data/chunk_index": data_chunk, "data/file_index": data_file,
                                   "dataset_from_index": total, "dataset_to_index": total + t}
            for k in image_keys:
                if k not in frames:
                    raise ConversionError(f"episode {ep}: missing key {k!r}")
                imgs = np.asarray(frames[k])
                if imgs.shape != (t, *spec.features[k].shape) or imgs.dtype != np.uint8:
                    raise ConversionError(f"episode {ep}: {k} is {imgs.shape} {imgs.dtype}, expected "
                                          f"{(t, *spec.features[k].shape)} uint8")
                row.update(videos[k].add_episode(imgs))
                h = _image_hist(imgs)
                hists[k] += h
                for name, val in _hist_stats(h, t).items():
                    row[f"stats/{k}/{name}"] = val
            row["meta/episodes/chunk_index"] = 0
            row["meta/episodes/file_index"] = 0
            for k in columns:
                lowdim_all[k].append(cols[k].reshape(t, -1) if col_spec[k][0] != (1,) else cols[k].reshape(t, 1))
                st = _lowdim_stats(cols[k].reshape(t, *col_spec[k][0]))
                for name, val in st.items():
                    row[f"stats/{k}/{name}"] = val
            row[_HAS_ACTION_COL] = has_action
            row[_SUCCESS_COL] = bool(meta.get("success", True))
            row[_SOURCE_COL] = str(meta.get("source", ""))
            rows.append(row)
            total += t
            if progress is not None:
                progress(ep + 1, num_episodes if num_episodes is not None else ep + 1)
    finally:
        if writer is not None:
            writer.close()
        for v in videos.values():
            v.close()
    if not rows:
        raise ConversionError("no episodes to write")

    for k, v in videos.items():
        features[k]["info"] = _video_info(v.first_path)
    stats: dict[str, dict] = {}
    for k in columns:
        shape = col_spec[k][0]
        stats[k] = _lowdim_stats(np.concatenate(lowdim_all[k]).reshape(-1, *shape))
    for k in image_keys:
        stats[k] = _hist_stats(hists[k], total)
    info = {"codebase_version": "v3.0", "robot_type": robot_type, "total_episodes": len(rows), "total_frames": total,
            "total_tasks": len(tasks), "chunks_size": chunks_size, "data_files_size_in_mb": data_files_size_in_mb,
            "video_files_size_in_mb": video_files_size_in_mb, "fps": fps, "splits": {"train": f"0:{len(rows)}"},
            "data_path": V3_DATA_PATH, "video_path": V3_VIDEO_PATH if image_keys else None, "features": features,
            "vlastack": {"spec": spec.to_dict()}}  # our units, kinds and action-space layout, for the way back
    (tmp / "meta").mkdir(exist_ok=True)
    (tmp / "meta" / "info.json").write_text(json.dumps(info, indent=4))
    (tmp / "meta" / "stats.json").write_text(json.dumps(stats, indent=4))
    pd.DataFrame({"task_index": list(tasks.values())}, index=list(tasks.keys())).to_parquet(tmp / "meta" / "tasks.parquet")
    ep_path = tmp / V3_EPISODES_PATH.format(chunk_index=0, file_index=0)
    ep_path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), ep_path)


# ----------------------------------------------------------------------------- store <-> LeRobot

def episodes_into_store(dst: str | Path, spec: DatasetSpec, episodes, num_episodes: int | None = None, *,
                        overwrite: bool = False, progress: Progress | None = None, compute_stats: bool = True):
    """Create a trajectory store at ``dst`` and append ``(frames, task, meta)`` episodes to it.

    ``meta`` may carry ``success``, ``source`` and ``has_action`` (False drops ``action``); the rest
    is kept as the episode's metadata. Returns the store, closed (zip stores are packed then).
    """
    from vlastack.datasets.store import TrajectoryStore

    store = TrajectoryStore.create(dst, spec, overwrite=overwrite)
    try:
        for i, (frames, task, meta) in enumerate(episodes):
            meta = dict(meta or {})
            success = bool(meta.pop("success", True))
            source = str(meta.pop("source", ""))
            if meta.pop("has_action", True) is False:
                frames = {k: v for k, v in frames.items() if k != ACTION}
            store.append_episode(frames, task=task, success=success, source=source, meta=meta)
            if progress is not None:
                progress(i + 1, num_episodes if num_episodes is not None else i + 1)
        if compute_stats and store.num_frames:
            store.compute_stats()
    finally:
        store.close()
    return store


def lerobot_to_store(src: str | Path, dst: str | Path, *, overwrite: bool = False,
                     progress: Progress | None = None):
    """Convert a LeRobotDataset directory (v3.0 / v2.1 / v2.0) into a trajectory store at ``dst``."""
    with LeRobotReader(src) as reader:
        def episodes():
            for frames, task, meta in reader:
                meta.setdefault("source", f"lerobot {reader.version} {reader.root.name} episode {meta['episode_index']}")
                yield frames, task, meta
        return episodes_into_store(dst, reader.spec, episodes(), reader.num_episodes, overwrite=overwrite,
                                   progress=progress)


def store_to_lerobot(store, dst: str | Path, *, vcodec: str = "auto", crf: int | None = None, gop: int = 2,
                     overwrite: bool = False, progress: Progress | None = None, robot_type: str | None = None) -> Path:
    """Write a trajectory store (an open store or its path) as a LeRobotDataset v3.0 directory."""
    from vlastack.datasets.store import TrajectoryStore

    own = not hasattr(store, "append_episode")
    if own:
        store = TrajectoryStore.open(store, mode="r")
    try:
        docs = store.episodes
        if robot_type is None and docs:
            robot_type = (docs[0].get("meta") or {}).get("robot_type")

        def episodes():
            for i, doc in enumerate(docs):
                frames = store.episode(i)
                meta = {"success": doc.get("success", True), "source": doc.get("source", ""),
                        "has_action": doc.get("has_action", True)}
                yield frames, doc["instruction"], meta
        return write_lerobot_v3(dst, store.spec, episodes(), store.num_episodes, vcodec=vcodec, crf=crf, gop=gop,
                                robot_type=robot_type, overwrite=overwrite, progress=progress)
    finally:
        if own:
            store.close()
