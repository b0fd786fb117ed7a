"""Window sampler: the frames a policy reads around each step t of a trajectory store.

A policy declares its window as frame offsets per key around the current step t (LeRobot's
``delta_indices``; :class:`WindowSpec` builds the usual one):

    images, state   t - n_obs + 1 .. t                 (observation history)
    action          t .. t + H - 1                     (action horizon)
    images (future) t + k, appended as the last step   (DUST's world-model target)

so with a future offset, image keys have T = n_obs + 1 steps and the future frame is the last
(``types.fake_batch`` matches). Offsets that fall outside the anchor's episode repeat the
edge frame and set ``<key>_is_pad`` True at that step. Video-only episodes have every
``action`` step padded. With ``feature_encoder`` set, image keys are read from the store's
feature cache ``features/<encoder>/<key>`` and emitted as ``features.<encoder>.<key>``
(:func:`vlastack.types.feature_key`) with the same steps and masks, instead of the images.

As in Diffusion Policy's sampler, the per-anchor index (global frame, episode bounds) is
precomputed once; a batch's rows are then one vectorised clip. Every frame of a selected
episode is an anchor. Splits are by episode and deterministic given a seed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from vlastack.types import ACTION, EPISODE_INDEX, FRAME_INDEX, STATE, TASK, feature_key, pad_key

from .store import StoreError, TrajectoryStore

INDEX = "index"


@dataclass(frozen=True)
class WindowSpec:
    """The usual window: ``n_obs`` observation steps, ``horizon`` actions, optional future frame.

    ``image_keys`` / ``low_dim_keys``: observation keys (None: all the store's image keys /
    ``observation.state`` when present). ``future_keys``: image keys that get the future frame
    (None: all image keys). ``n_past_actions`` shifts the action window back (Dita).
    """

    n_obs: int = 1
    horizon: int = 16
    future_offset: int | None = None
    image_keys: tuple[str, ...] | None = None
    low_dim_keys: tuple[str, ...] | None = None
    future_keys: tuple[str, ...] | None = None
    action_key: str | None = ACTION
    n_past_actions: int = 0

    def __post_init__(self):
        if int(self.n_obs) < 1:
            raise ValueError(f"n_obs: {self.n_obs} must be >= 1")
        if int(self.horizon) < 1:
            raise ValueError(f"horizon: {self.horizon} must be >= 1")
        if self.future_offset is not None and int(self.future_offset) < 1:
            raise ValueError(f"future_offset: {self.future_offset} must be >= 1 or None")
        if not 0 <= int(self.n_past_actions) < int(self.horizon):
            raise ValueError(f"n_past_actions: {self.n_past_actions} must be in [0, horizon={self.horizon})")
        for name in ("image_keys", "low_dim_keys", "future_keys"):
            v = getattr(self, name)
            if v is not None:
                object.__setattr__(self, name, tuple(v))

    def delta_indices(self, store_spec=None) -> dict[str, list[int]]:
        """Offsets per key around t; ``store_spec`` (a DatasetSpec) fills in default keys."""
        feats = store_spec.features if store_spec is not None else {}
        images = self.image_keys if self.image_keys is not None else \
            tuple(k for k, f in feats.items() if f.kind == "image")
        low = self.low_dim_keys if self.low_dim_keys is not None else ((STATE,) if STATE in feats else ())
        future = set(images if self.future_keys is None else self.future_keys)
        obs = list(range(-(int(self.n_obs) - 1), 1))
        out: dict[str, list[int]] = {}
        for k in images:
            out[k] = obs + ([int(self.future_offset)] if self.future_offset is not None and k in future else [])
        for k in low:
            out[k] = list(obs)
        if self.action_key is not None and (not feats or self.action_key in feats):
            out[self.action_key] = list(range(-int(self.n_past_actions), int(self.horizon) - int(self.n_past_actions)))
        return out


def split_episodes(num_episodes: int, val_fraction: float = 0.1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) episode indices, each sorted; disjoint, covering all, deterministic given ``seed``.

    With ``val_fraction > 0`` and at least two episodes, val gets at least one episode and
    train keeps at least one.
    """
    if not 0.0 <= float(val_fraction) < 1.0:
        raise ValueError(f"val_fraction: {val_fraction} not in [0, 1)")
    n = int(num_episodes)
    perm = np.random.default_rng(seed).permutation(n)
    n_val = 0 if val_fraction == 0 or n < 2 else min(n - 1, max(1, int(round(n * val_fraction))))
    return np.sort(perm[n_val:]).astype(np.int64), np.sort(perm[:n_val]).astype(np.int64)


class WindowSampler:
    """Windows of a :class:`TrajectoryStore` for a declared window; indexable and batchable.

    ``window``: a :class:`WindowSpec` or a policy's ``delta_indices()`` (key -> offsets).
    ``episodes``: which episodes to sample (default all). ``require_action``: skip video-only
    episodes. ``feature_encoder``: read image keys from the feature cache instead.
    Low-dim arrays (and feature caches up to ``max_memory_bytes``) are loaded into memory;
    images are read per batch. Pickles without the open store (reopened lazily per process).
    """

    def __init__(self, store: TrajectoryStore | str | os.PathLike, window: WindowSpec | Mapping[str, Sequence[int]],
                 episodes: Sequence[int] | None = None, require_action: bool = False,
                 feature_encoder: str | None = None, max_memory_bytes: int = 2 << 30):
        if not isinstance(store, TrajectoryStore):
            store = TrajectoryStore.open(store, verify="fast")
        self._store: TrajectoryStore | None = store
        self.path = store.path
        spec = store.spec
        deltas = window.delta_indices(spec) if isinstance(window, WindowSpec) else window
        if not isinstance(deltas, Mapping) or not deltas:
            raise ValueError(f"window: expected a WindowSpec or a non-empty {{key: offsets}} mapping, got {window!r}")
        self.deltas: dict[str, np.ndarray] = {}
        for k, offs in deltas.items():
            if k not in spec.features:
                raise StoreError(f"{k!r}: the window asks for a key the store lacks; store keys are {store.keys}")
            offs = np.asarray(list(offs), np.int64)
            if offs.ndim != 1 or len(offs) == 0:
                raise ValueError(f"window[{k!r}]: expected a non-empty list of integer offsets, got {deltas[k]!r}")
            self.deltas[k] = offs
        self.window = window
        self.feature_encoder = feature_encoder
        self.image_keys = [k for k in self.deltas if spec.features[k].kind == "image"]
        if feature_encoder is not None:
            for k in self.image_keys:
                if not store.has_features(feature_encoder, k):
                    raise StoreError(f"features/{feature_encoder}/{k}: no up-to-date feature cache; cached: "
                                     f"{store.list_features()}")
        n_ep = store.num_episodes
        if episodes is None:
            episodes = np.arange(n_ep)
        episodes = np.asarray(list(episodes), np.int64).reshape(-1)
        if len(episodes) and (episodes.min() < 0 or episodes.max() >= n_ep):
            raise StoreError(f"episodes: indices out of range for {n_ep} episodes")
        meta = store.episodes
        if require_action:
            episodes = np.array([e for e in episodes if meta[e]["has_action"]], np.int64)
        self.episodes = np.unique(episodes)
        self.has_action = np.array([m["has_action"] for m in meta], bool)  # (num_episodes,)
        self.instructions = [m["instruction"] for m in meta]
        # precomputed index: one row per anchor (global frame t, its episode and bounds)
        starts, ends = store.episode_starts, store.episode_ends
        lens = (ends - starts)[self.episodes]
        self.anchor_episode = np.repeat(self.episodes, lens)  # (N,)
        self.anchor_start = starts[self.anchor_episode]  # (N,)
        self.anchor_end = ends[self.anchor_episode]  # (N,) exclusive
        self.anchor_frame = (np.arange(len(self.anchor_episode), dtype=np.int64)
                             - np.repeat(np.cumsum(lens) - lens, lens))  # (N,) frame within episode
        self.anchor_global = self.anchor_start + self.anchor_frame  # (N,)
        self.max_memory_bytes = int(max_memory_bytes)
        self._memory: dict[str, np.ndarray] = {}
        self._load_memory()

    # ---------------------------------------------------------------- memory-resident arrays

    def _load_memory(self) -> None:
        store = self.store
        n = store.num_frames
        for k in self.deltas:
            f = store.spec.features[k]
            if f.kind == "image":
                if self.feature_encoder is not None:
                    arr = store.read_features(self.feature_encoder, k)
                    if arr.nbytes <= self.max_memory_bytes:
                        self._memory[k] = np.asarray(arr[:n])
            else:
                self._memory[k] = np.asarray(store.array(k)[:n])

    @property
    def store(self) -> TrajectoryStore:
        """The open store (reopened read-only on first use in a new process)."""
        if self._store is None:
            self._store = TrajectoryStore.open(self.path, verify="none")
        return self._store

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_store"] = None
        return state

    # ---------------------------------------------------------------- indexing

    def __len__(self) -> int:
        return len(self.anchor_global)

    def out_key(self, key: str) -> str:
        """The batch key ``key`` is emitted under (its feature key in feature-cache mode)."""
        if self.feature_encoder is not None and key in self.image_keys:
            return feature_key(self.feature_encoder, key)
        return key

    def rows(self, indices: np.ndarray, key: str) -> tuple[np.ndarray, np.ndarray]:
        """Global rows (B, T) and pad mask (B, T) of ``key`` for anchors ``indices`` (B,)."""
        idx = np.asarray(indices, np.int64).reshape(-1)
        t = self.anchor_global[idx][:, None] + self.deltas[key][None]  # (B, T) unclipped
        s, e = self.anchor_start[idx][:, None], self.anchor_end[idx][:, None]  # (B, 1)
        rows = np.clip(t, s, e - 1)  # (B, T) edge frames repeated
        pad = rows != t  # (B, T)
        if key == ACTION:
            pad = pad | ~self.has_action[self.anchor_episode[idx]][:, None]
        return rows, pad

    def get_batch(self, indices: Sequence[int] | np.ndarray, alloc=None) -> dict[str, Any]:
        """Windows for anchors ``indices`` stacked: key -> (B, T, ...), ``<key>_is_pad`` (B, T) bool,
        ``task`` list of B strings, ``episode_index`` / ``frame_index`` / ``index`` (B,) int64.

        ``alloc(key, shape, dtype) -> np.ndarray``, when given, supplies the output buffers
        (e.g. shared memory in a DataLoader worker), so values are written once, in place.
        """
        idx = np.asarray(indices, np.int64).reshape(-1)
        if len(idx) and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"window index out of range for {len(self)} windows")
        idx = idx % max(1, len(self))
        out: dict[str, Any] = {}
        for k in self.deltas:
            rows, pad = self.rows(idx, k)  # (B, T), (B, T)
            flat = rows.reshape(-1)  # (B*T,)
            ok = self.out_key(k)
            shape, dtype = self._frame_layout(k)
            buf = (alloc(ok, (*rows.shape, *shape), dtype) if alloc is not None
                   else np.empty((*rows.shape, *shape), dtype))  # (B, T, ...)
            dst = buf.reshape(len(flat), *shape)  # (B*T, ...) view
            if k in self._memory:
                np.take(self._memory[k], flat, axis=0, out=dst)
            elif self.feature_encoder is not None and k in self.image_keys:
                self.store.read_feature_rows(self.feature_encoder, k, flat, out=dst)  # (B*T, ...) in place
            else:
                self.store.read_rows(k, flat, out=dst)  # (B*T, H, W, 3) in place
            out[ok] = buf
            out[pad_key(ok)] = pad
        eps = self.anchor_episode[idx]
        out[TASK] = [self.instructions[e] for e in eps]
        out[EPISODE_INDEX] = eps.copy()
        out[FRAME_INDEX] = self.anchor_frame[idx].copy()
        out[INDEX] = self.anchor_global[idx].copy()
        return out

    def batch_layout(self, n: int) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """Shape and dtype of each array :meth:`get_batch` asks ``alloc`` for, for a batch of ``n``: out key -> (shape, dtype)."""
        out = {}
        for k, offs in self.deltas.items():
            shape, dtype = self._frame_layout(k)
            out[self.out_key(k)] = ((int(n), len(offs), *shape), dtype)
        return out

    def _frame_layout(self, key: str) -> tuple[tuple[int, ...], np.dtype]:
        """Per-frame shape and dtype of what ``key`` emits (its features in feature-cache mode)."""
        if key in self._memory:
            m = self._memory[key]
            return tuple(m.shape[1:]), m.dtype
        if self.feature_encoder is not None and key in self.image_keys:
            arr = self.store.read_features(self.feature_encoder, key)
            return tuple(arr.shape[1:]), np.dtype(arr.dtype)
        f = self.store.spec.features[key]
        return tuple(f.shape), np.dtype(f.dtype)

    def __getitem__(self, i: int) -> dict[str, Any]:
        """One window: key -> (T, ...), masks (T,), ``task`` a string, indices as scalars."""
        b = self.get_batch([i])
        return {k: v[0] for k, v in b.items()}

    def batches(self, batch_size: int, shuffle: bool = True, seed: int = 0,
                drop_last: bool = False) -> Iterator[dict[str, Any]]:
        """One epoch of batches (a seeded permutation when ``shuffle``)."""
        order = np.random.default_rng(seed).permutation(len(self)) if shuffle else np.arange(len(self))
        stop = len(order) - (len(order) % batch_size if drop_last else 0)
        for s in range(0, stop, batch_size):
            yield self.get_batch(order[s:s + batch_size])


def train_val_samplers(store: TrajectoryStore | str | os.PathLike, window, val_fraction: float = 0.1, seed: int = 0,
                       **kwargs) -> tuple[WindowSampler, WindowSampler]:
    """Samplers over a seeded by-episode train/val split of ``store``."""
    if not isinstance(store, TrajectoryStore):
        store = TrajectoryStore.open(store, verify="fast")
    train, val = split_episodes(store.num_episodes, val_fraction, seed)
    return WindowSampler(store, window, train, **kwargs), WindowSampler(store, window, val, **kwargs)
