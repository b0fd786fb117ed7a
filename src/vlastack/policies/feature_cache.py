"""Write and read a trajectory store's feature cache with a frozen vision encoder.

Training on a frozen backbone should never re-encode images: :func:`cache_features`
encodes every frame of each camera once and stores the patch grids under
``features/<encoder.name>/<image key>`` as float16 (num_frames, C, h, w), with
metadata naming the encoder, its weight fingerprint, grid and image size. Readers
check that fingerprint, so a cache written by other weights (another seed, layer or
checkpoint under the same name) is detected instead of silently used.

This module depends only on the store object it is given (duck typing, no import of
``vlastack.datasets``). The store must provide: ``spec.image_keys``, ``num_frames``,
``num_episodes``, ``episode(i, keys=[key]) -> {key: uint8 (T, H, W, 3)}``,
``write_features(encoder, key, values, meta)``, ``has_features(encoder, key)`` and
``read_features(encoder, key)`` returning an array-like (num_frames, ...) whose
``attrs["meta"]`` holds the metadata written with it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np
import torch

from vlastack.policies.encoders.base import module_device

CACHE_FORMAT = 1


@dataclass
class CacheReport:
    """What :func:`cache_features` did for one image key."""

    key: str
    status: str  # "written", "rewritten" (stale fingerprint) or "skipped" (already up to date)
    shape: tuple[int, ...]
    seconds: float
    frames_per_second: float


def _name_of(encoder) -> str:
    name = encoder if isinstance(encoder, str) else getattr(encoder, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"encoder must be a VisionEncoder (with .name) or an encoder name, got {type(encoder).__name__}")
    return name


def _image_keys(store, keys: Iterable[str] | str | None) -> list[str]:
    available = list(store.spec.image_keys)
    if keys is None:
        if not available:
            raise ValueError("store has no image keys to cache features for")
        return available
    keys = [keys] if isinstance(keys, str) else list(keys)
    for k in keys:
        if k not in available:
            raise ValueError(f"{k!r} is not an image key of the store; image keys are {available}")
    return keys


def _fingerprint(encoder) -> str | None:
    fp = getattr(encoder, "fingerprint", None)
    return fp() if callable(fp) else None


def cached_meta(store, encoder, key: str) -> dict[str, Any] | None:
    """The metadata stored with a complete cache of (encoder, key), or None when absent/stale."""
    name = _name_of(encoder)
    if not store.has_features(name, key):
        return None
    arr = store.read_features(name, key)
    return dict(dict(getattr(arr, "attrs", {}) or {}).get("meta") or {})


def frames_to_tensor(frames: np.ndarray, device=None) -> torch.Tensor:
    """uint8 frames (T, H, W, 3) -> float (T, 3, H, W) in [0, 1] on ``device``."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames (T, H, W, 3), got {frames.dtype} {frames.shape}")
    x = torch.from_numpy(np.ascontiguousarray(frames)).to(device)  # (T, H, W, 3) uint8
    return x.permute(0, 3, 1, 2).float().div_(255.0)  # (T, 3, H, W)


@torch.no_grad()
def encode_frames(encoder, frames: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Patch grids of uint8 frames (T, H, W, 3) -> float32 (T, C, h, w), encoded ``batch_size`` at a time."""
    device = module_device(encoder)
    out = []
    for s in range(0, len(frames), batch_size):
        grid, _ = encoder(frames_to_tensor(frames[s:s + batch_size], device))  # (b, C, h, w)
        out.append(grid.float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0,), np.float32)


def cache_features(store, encoder, keys: Iterable[str] | str | None = None, batch_size: int = 64,
                   progress: bool = True, overwrite: bool = False, dtype: str = "float16") -> dict[str, CacheReport]:
    """Encode every frame of each image key with a frozen encoder and write the grids to the store.

    Args:
        store: a writable trajectory store (see the module docstring for what it must provide).
        encoder: a frozen :class:`~vlastack.policies.encoders.VisionEncoder`.
        keys: image keys to cache (default: all of ``store.spec.image_keys``).
        batch_size: frames per encoder call.
        progress: show a progress bar.
        overwrite: re-encode even when an up-to-date cache exists.
        dtype: "float16" (default, half the disk and read bandwidth) or "float32".

    Returns:
        key -> :class:`CacheReport`. Keys already cached with the same encoder fingerprint are
        skipped; caches written by other weights under the same name are rewritten.
    """
    if not getattr(encoder, "frozen", False):
        raise ValueError(f"cache_features: encoder {getattr(encoder, 'name', encoder)!r} is trainable "
                         "(frozen=False); cached features would go stale as it trains. Cache only frozen encoders.")
    if dtype not in ("float16", "float32"):
        raise ValueError(f"cache_features: dtype must be 'float16' or 'float32', got {dtype!r}")
    if batch_size < 1:
        raise ValueError(f"cache_features: batch_size must be >= 1, got {batch_size}")
    name = _name_of(encoder)
    keys = _image_keys(store, keys)
    fp = _fingerprint(encoder)
    n_frames = int(store.num_frames)
    reports: dict[str, CacheReport] = {}
    todo: list[tuple[str, str]] = []
    for key in keys:
        meta = cached_meta(store, name, key)
        if meta is not None and not overwrite and meta.get("fingerprint") == fp:
            shape = tuple(store.read_features(name, key).shape)
            reports[key] = CacheReport(key, "skipped", shape, 0.0, 0.0)
        else:
            todo.append((key, "written" if meta is None else "rewritten"))
    if not todo:
        return reports
    if n_frames == 0:
        raise ValueError("cache_features: the store has no frames")

    bar = None
    if progress:
        from rich.progress import Progress

        bar = Progress(transient=True)
        bar.start()
    try:
        for key, status in todo:
            task = bar.add_task(f"{name} {key}", total=n_frames) if bar else None
            t0 = time.perf_counter()
            values = None
            row = 0
            hw = None
            for ep in range(int(store.num_episodes)):
                frames = store.episode(ep, keys=[key])[key]  # (T, H, W, 3) uint8
                if hw is None:
                    hw = tuple(int(s) for s in frames.shape[1:3])
                for s in range(0, len(frames), batch_size):
                    grid = encode_frames(encoder, frames[s:s + batch_size], batch_size)  # (b, C, h, w)
                    if values is None:
                        values = np.empty((n_frames, *grid.shape[1:]), dtype)  # (num_frames, C, h, w)
                    values[row:row + len(grid)] = grid
                    row += len(grid)
                    if bar:
                        bar.update(task, advance=len(grid))
            if row != n_frames:
                raise RuntimeError(f"cache_features: episodes of {key!r} hold {row} frames, store says {n_frames}")
            meta = {"format": CACHE_FORMAT, "encoder": name, "fingerprint": fp, "out_dim": int(values.shape[1]),
                    "grid": [int(s) for s in values.shape[2:]], "image_hw": list(hw), "layout": "NCHW",
                    "dtype": dtype}
            store.write_features(name, key, values, meta=meta)
            dt = time.perf_counter() - t0
            reports[key] = CacheReport(key, status, tuple(values.shape), dt, n_frames / max(dt, 1e-9))
    finally:
        if bar:
            bar.stop()
    return reports


def _check_meta(store, encoder, key: str) -> dict[str, Any]:
    name = _name_of(encoder)
    meta = cached_meta(store, name, key)
    if meta is None:
        raise KeyError(f"no complete feature cache for encoder {name!r}, key {key!r} "
                       f"({int(store.num_frames)} frames); run cache_features(store, encoder) first")
    if not isinstance(encoder, str):
        fp = _fingerprint(encoder)
        if fp is not None and meta.get("fingerprint") != fp:
            raise ValueError(f"feature cache {name!r}/{key!r} was written by other weights (fingerprint "
                             f"{meta.get('fingerprint')}, this encoder {fp}); re-run cache_features(store, encoder)")
    return meta


def has_cached(store, encoder, keys: Iterable[str] | str | None = None) -> bool:
    """Whether every key has a complete cache from this encoder (same fingerprint when an encoder is given)."""
    try:
        for key in _image_keys(store, keys):
            _check_meta(store, encoder, key)
    except (KeyError, ValueError):
        return False
    return True


def load_cached(store, encoder, keys: Iterable[str] | str | None = None, lazy: bool = False,
                check: bool = True) -> dict[str, Any]:
    """Cached grids per image key: key -> (num_frames, C, h, w) float16.

    ``encoder`` is a VisionEncoder (its fingerprint is checked when ``check``) or a name.
    ``lazy`` returns the store's array objects instead of loading everything into memory.
    """
    name = _name_of(encoder)
    out: dict[str, Any] = {}
    for key in _image_keys(store, keys):
        if check:
            _check_meta(store, encoder, key)
        arr = store.read_features(name, key)
        out[key] = arr if lazy else np.asarray(arr[...])
    return out


def load_cached_rows(store, encoder, key: str, rows: np.ndarray, check: bool = False) -> np.ndarray:
    """Cached grids of some global frame indices: (len(rows), C, h, w) float16."""
    name = _name_of(encoder)
    if check:
        _check_meta(store, encoder, key)
    rows = np.asarray(rows, np.int64).reshape(-1)
    reader = getattr(store, "read_feature_rows", None)
    if callable(reader):
        return np.asarray(reader(name, key, rows))
    return np.asarray(store.read_features(name, key)[...])[rows]


def grids_to_tensor(grids: Mapping[str, np.ndarray] | np.ndarray, device=None) -> Any:
    """float16 grids -> float32 tensors (same structure), for feeding cached features to a policy."""
    if isinstance(grids, Mapping):
        return {k: torch.from_numpy(np.asarray(v)).to(device).float() for k, v in grids.items()}
    return torch.from_numpy(np.asarray(grids)).to(device).float()
