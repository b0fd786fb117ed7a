"""Per-key statistics of a trajectory store: mean, std, min, max, 1st and 99th percentiles.

Low-dim keys use every committed frame (actions only from episodes that have them). Images
use a seeded sample of frames and report per-channel values on the [0, 1] scale, shape (3,),
as LeRobot does. Stats are JSON in the store's attributes and numpy arrays in memory.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import numpy as np

from vlastack.types import ACTION

STAT_NAMES = ("mean", "std", "min", "max", "q01", "q99")

#: at most this many values per channel go into an image quantile (a strided subsample)
_MAX_QUANTILE_VALUES = 1 << 21


def array_stats(x: np.ndarray) -> dict[str, np.ndarray]:
    """Stats over axis 0 of x (N, ...) -> each stat shaped x.shape[1:], float64 accumulation."""
    x = np.asarray(x)
    if x.ndim < 1 or x.shape[0] == 0:
        raise ValueError(f"array_stats: need at least one row, got shape {x.shape}")
    xf = x.astype(np.float64, copy=False)
    q = np.quantile(xf, [0.01, 0.99], axis=0)  # (2, ...)
    return {"mean": xf.mean(0), "std": xf.std(0), "min": xf.min(0), "max": xf.max(0), "q01": q[0], "q99": q[1]}


def image_stats(frames: np.ndarray) -> dict[str, np.ndarray]:
    """Per-channel stats of uint8 frames (N, H, W, 3) on the [0, 1] scale -> each stat (3,)."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"image_stats: expected uint8 (N, H, W, 3), got {frames.dtype} {frames.shape}")
    px = frames.reshape(-1, 3)  # (N*H*W, 3)
    # mean/std exactly via integer histograms (uint8 has 256 values per channel)
    hist = np.stack([np.bincount(px[:, c], minlength=256) for c in range(3)])  # (3, 256)
    vals = np.arange(256, dtype=np.float64) / 255.0
    n = hist.sum(1, keepdims=True).astype(np.float64)  # (3, 1)
    mean = (hist * vals).sum(1) / n[:, 0]
    var = (hist * (vals[None] - mean[:, None]) ** 2).sum(1) / n[:, 0]
    cdf = np.cumsum(hist, 1) / n  # (3, 256)

    def quant(p: float) -> np.ndarray:
        return np.array([vals[int(np.searchsorted(cdf[c], p, side="left"))] for c in range(3)])

    nz = hist > 0
    return {"mean": mean, "std": np.sqrt(var), "min": np.array([vals[np.argmax(nz[c])] for c in range(3)]),
            "max": np.array([vals[255 - np.argmax(nz[c][::-1])] for c in range(3)]),
            "q01": quant(0.01), "q99": quant(0.99)}


def compute_store_stats(store, keys: Iterable[str], max_image_frames: int = 2000,
                        seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """Stats for ``keys`` of a :class:`~vlastack.datasets.store.TrajectoryStore`."""
    out: dict[str, dict[str, np.ndarray]] = {}
    n = store.num_frames
    starts, ends = store.episode_starts, store.episode_ends
    for key in keys:
        f = store.spec.features[key]
        if f.kind == "image":
            rng = np.random.default_rng(seed)
            k = min(n, int(max_image_frames))
            rows = np.sort(rng.choice(n, size=k, replace=False))
            out[key] = image_stats(store.read_rows(key, rows))
            continue
        rows = None
        if key == ACTION:
            have = [i for i, e in enumerate(store.episodes) if e["has_action"]]
            if not have:
                continue  # a video-only store has no action statistics
            if len(have) < store.num_episodes:
                rows = np.concatenate([np.arange(starts[i], ends[i]) for i in have])
        data = np.asarray(store.array(key)[:n])
        if rows is not None:
            data = data[rows]
        out[key] = array_stats(data)
    return out


def stats_to_json(stats: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """JSON-ready nested lists."""
    return {k: {s: np.asarray(v, np.float64).tolist() for s, v in d.items()} for k, d in stats.items()}


def stats_from_json(d: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, np.ndarray]]:
    """Inverse of :func:`stats_to_json` (float32 arrays)."""
    return {k: {s: np.asarray(v, np.float32) for s, v in dd.items()} for k, dd in d.items()}
