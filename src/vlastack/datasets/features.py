"""Feature cache interface: any frozen per-frame encoder's outputs, stored beside the images.

A frozen encoder maps uint8 frames (N, H, W, 3) to features (N, ...); :func:`cache_features`
runs it over every frame of a store once and writes ``features/<encoder>/<key>`` (float16 by
default), which :class:`~vlastack.datasets.sampler.WindowSampler` reads instead of the images
(``feature_encoder=...``). The policies' vision encoders (``vlastack.policies.feature_cache``)
write the same layout with torch and weight fingerprints; this module is the numpy-level
contract plus a dependency-free reference encoder for tests and benchmarks.
"""

from __future__ import annotations

from typing import Iterable, Protocol, runtime_checkable

import numpy as np

from .store import StoreError, TrajectoryStore


@runtime_checkable
class FrameEncoder(Protocol):
    """A frozen per-frame encoder: ``name`` (the cache's directory) and ``encode``."""

    name: str

    def encode(self, frames: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, 3) -> float (N, ...)."""
        ...


class PooledPixelEncoder:
    """Reference encoder: average-pool each frame to a ``grid`` and centre it, (N, 3, gh, gw) in [-1, 1].

    Deterministic and weight-free; good for tests, benchmarks and smoke runs.
    """

    def __init__(self, grid: tuple[int, int] = (4, 4), name: str | None = None):
        self.grid = (int(grid[0]), int(grid[1]))
        if min(self.grid) < 1:
            raise ValueError(f"grid: {grid} must be positive")
        self.name = name or f"pool{self.grid[0]}x{self.grid[1]}"

    def encode(self, frames: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, 3) -> float32 (N, 3, gh, gw)."""
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"{self.name}: expected uint8 (N, H, W, 3), got {frames.dtype} {frames.shape}")
        n, h, w, _ = frames.shape
        gh, gw = self.grid
        if h % gh or w % gw:
            raise ValueError(f"{self.name}: grid {self.grid} must divide the image size {(h, w)}")
        x = frames.reshape(n, gh, h // gh, gw, w // gw, 3).mean(axis=(2, 4), dtype=np.float32)  # (N, gh, gw, 3)
        return (x.transpose(0, 3, 1, 2) / 127.5 - 1.0).astype(np.float32)  # (N, 3, gh, gw)


def cache_features(store: TrajectoryStore, encoder: FrameEncoder, keys: Iterable[str] | None = None,
                   batch_size: int = 256, dtype: str = "float16", overwrite: bool = False) -> dict[str, tuple]:
    """Encode every frame of each image key (default: all) and write the cache; returns key -> shape.

    Keys whose cache is already complete and current are skipped unless ``overwrite``.
    """
    if not isinstance(encoder, FrameEncoder):
        raise TypeError(f"encoder: needs .name and .encode(frames), got {type(encoder).__name__}")
    if dtype not in ("float16", "float32"):
        raise StoreError(f"dtype: {dtype!r} not one of ('float16', 'float32')")
    image_keys = store.spec.image_keys
    keys = image_keys if keys is None else ([keys] if isinstance(keys, str) else list(keys))
    for k in keys:
        if k not in image_keys:
            raise StoreError(f"{k!r}: not an image key; image keys are {image_keys}")
    shapes: dict[str, tuple] = {}
    n = store.num_frames
    for k in keys:
        if not overwrite and store.has_features(encoder.name, k):
            shapes[k] = tuple(store.read_features(encoder.name, k).shape)
            continue
        out = None
        for s in range(0, n, batch_size):
            rows = np.arange(s, min(n, s + batch_size))
            feats = np.asarray(encoder.encode(store.read_rows(k, rows)))  # (b, ...)
            if out is None:
                out = np.empty((n, *feats.shape[1:]), dtype)
            out[s:s + len(rows)] = feats
        store.write_features(encoder.name, k, out, meta={"encoder": encoder.name, "dtype": dtype,
                                                         "shape": list(out.shape[1:])})
        shapes[k] = tuple(out.shape)
    return shapes
