"""Training data: one or several trajectory stores as train / validation windows in a resumable order.

- Stores are opened and checked against each other (same keys and shapes for what the policy reads);
  their statistics are merged (frame-weighted means and variances, min of minima, ...).
- Episodes are split by episode per store (seeded), then filtered: ``tasks``, ``require_action``,
  ``episodes_per_task`` (few-shot: the first k training episodes of every task); ``oversample``
  repeats the training windows of named tasks k times per epoch (a task the others drown out).
- Video-only stores (no ``action`` key) and video-only episodes are kept: the window drops the action
  key, or pads every action step, and DUST trains its world-model stream on them.
- With a frozen vision encoder the store's feature cache is used (built once when missing, on rank 0).
- The order is a pure function of (seed, step): optimizer step s reads global positions
  ``s * B .. (s + 1) * B - 1`` of a stream of seeded per-epoch permutations. Its B indices are cut
  into ``world * grad_accum`` equal chunks; rank r's m-th micro-batch is chunk ``m * world + r``. So
  resuming needs only the step, and a 2-rank run sees the same chunks as a 1-rank run with twice the
  accumulation.
"""

from __future__ import annotations

import os
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch

from vlastack.datasets.batch_pool import pooled_batch
from vlastack.datasets.sampler import WindowSampler, split_episodes
from vlastack.datasets.store import StoreError, TrajectoryStore
from vlastack.datasets.torch_dataset import batch_to_torch, single_thread_blosc
from vlastack.types import ACTION, STATE

from .config import DatasetConfig, TrainConfigError


# ---------------------------------------------------------------------------------- stores


def open_stores(cfg: DatasetConfig) -> list[TrajectoryStore]:
    """Open every store of the config (read-only, fast verification); errors name the path."""
    stores = []
    for p in cfg.store_paths:
        local = p[len("file://"):] if p.startswith("file://") else p
        if "://" not in local and not os.path.exists(local):
            raise TrainConfigError(f"dataset.path: {p} does not exist")
        try:
            stores.append(TrajectoryStore.open(p, verify="fast"))
        except StoreError as e:
            raise TrainConfigError(f"dataset.path: {p}: {e}") from None
        if stores[-1].num_episodes == 0:
            raise TrainConfigError(f"dataset.path: {p} holds no episodes")
    return stores


def check_compatible(stores: Sequence[TrajectoryStore], keys: Sequence[str]) -> None:
    """Every store has each of ``keys`` with the same shape (action may be absent: video stores)."""
    first = stores[0]
    for k in keys:
        for s in stores:
            if k not in s.spec.features:
                if k == ACTION:
                    continue
                raise TrainConfigError(f"dataset: {s.path} lacks {k!r} that the policy reads; its keys: {s.keys}")
            f0 = next((t.spec.features[k] for t in stores if k in t.spec.features), None)
            if tuple(s.spec.features[k].shape) != tuple(f0.shape):
                raise TrainConfigError(f"dataset: {k!r} is {tuple(s.spec.features[k].shape)} in {s.path} but "
                                       f"{tuple(f0.shape)} in {first.path}; multi-store training needs one layout")


def store_stats(store: TrajectoryStore) -> dict[str, dict[str, np.ndarray]]:
    """The store's saved state/action statistics, computed (in memory) when absent or stale."""
    keys = [k for k in (STATE, ACTION) if k in store.spec.features]
    saved = store.stats
    if saved is not None and all(k in saved for k in keys if k != ACTION or any(e["has_action"] for e in
                                                                                 store.episodes)):
        return {k: v for k, v in saved.items() if k in keys}
    return store.compute_stats(keys)


def merge_stats(stats: Sequence[Mapping[str, Mapping[str, Any]]], weights: Sequence[float]) -> dict[str, dict]:
    """Statistics of several stores as one: weighted mean and pooled variance, min / max of the
    extremes, and the widest q01 / q99 (a conservative bound, not the exact quantile)."""
    out: dict[str, dict[str, np.ndarray]] = {}
    keys = sorted({k for s in stats for k in s})
    for k in keys:
        parts = [(s[k], w) for s, w in zip(stats, weights) if k in s]
        if len(parts) == 1:
            out[k] = {n: np.asarray(v, np.float64) for n, v in parts[0][0].items()}
            continue
        shapes = {np.asarray(p["mean"]).shape for p, _ in parts}
        if len(shapes) > 1:
            raise TrainConfigError(f"dataset: {k!r} has different shapes across the stores {sorted(shapes)}; "
                                   "multi-store training needs one layout")
        w = np.asarray([p[1] for p in parts], np.float64)
        w = w / w.sum()
        mean = sum(wi * np.asarray(p["mean"], np.float64) for (p, _), wi in zip(parts, w))
        var = sum(wi * (np.asarray(p["std"], np.float64) ** 2 + (np.asarray(p["mean"], np.float64) - mean) ** 2)
                  for (p, _), wi in zip(parts, w))
        out[k] = {"mean": mean, "std": np.sqrt(var),
                  "min": np.min([np.asarray(p["min"], np.float64) for p, _ in parts], axis=0),
                  "max": np.max([np.asarray(p["max"], np.float64) for p, _ in parts], axis=0),
                  "q01": np.min([np.asarray(p["q01"], np.float64) for p, _ in parts], axis=0),
                  "q99": np.max([np.asarray(p["q99"], np.float64) for p, _ in parts], axis=0)}
    return out


def task_key(meta: Mapping[str, Any], names) -> str | None:
    """The entry of ``names`` that names the episode with metadata ``meta``: its task id, else its
    instruction; None when neither is listed (how ``dataset.tasks`` and ``dataset.oversample`` match)."""
    return next((k for k in (meta["task_id"], meta["instruction"]) if k in names), None)


def select_episodes(store: TrajectoryStore, cfg: DatasetConfig, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) episode indices of one store after the split and the filters."""
    train, val = split_episodes(store.num_episodes, cfg.val_fraction, seed)
    meta = store.episodes
    has_action_key = ACTION in store.spec.features

    def keep(e: int) -> bool:
        m = meta[e]
        if cfg.tasks is not None and task_key(m, cfg.tasks) is None:
            return False
        if cfg.require_action and not (has_action_key and m["has_action"]):
            return False
        return True

    train = np.array([e for e in train if keep(e)], np.int64)
    val = np.array([e for e in val if keep(e)], np.int64)
    if cfg.episodes_per_task is not None:
        seen: dict[str, int] = {}
        picked = []
        for e in train:
            t = meta[e]["task_id"]
            if seen.get(t, 0) < cfg.episodes_per_task:
                seen[t] = seen.get(t, 0) + 1
                picked.append(e)
        train = np.array(picked, np.int64)
    return train, val


# ---------------------------------------------------------------------------------- windows


class MultiSampler:
    """Windows of several :class:`WindowSampler` s as one index space (store after store)."""

    def __init__(self, samplers: Sequence[WindowSampler]):
        self.samplers = [s for s in samplers if len(s) > 0]
        sizes = np.array([len(s) for s in self.samplers], np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)  # (S+1,)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def batch_layout(self, n: int) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """The arrays :meth:`get_batch` asks ``alloc`` for (the stores agree on them): key -> (shape, dtype)."""
        return self.samplers[0].batch_layout(n)

    def get_batch(self, indices: np.ndarray, alloc=None) -> dict[str, Any]:
        """Windows for global indices (B,), in that order: arrays (B, ...), ``task`` B strings.

        ``alloc(key, shape, dtype)`` supplies the buffers of :meth:`batch_layout`'s arrays, as in
        :meth:`WindowSampler.get_batch`.
        """
        idx = np.asarray(indices, np.int64).reshape(-1)
        which = np.searchsorted(self.offsets, idx, side="right") - 1  # (B,)
        if len(self.samplers) == 1:
            return self.samplers[0].get_batch(idx, alloc=alloc)
        layout = self.batch_layout(len(idx)) if alloc is not None else {}
        out: dict[str, Any] = {}
        for s in np.unique(which):
            pos = np.nonzero(which == s)[0]  # (b,)
            part = self.samplers[s].get_batch(idx[pos] - self.offsets[s])
            for k, v in part.items():
                if isinstance(v, np.ndarray):
                    if k not in out:
                        shape = (len(idx), *v.shape[1:])
                        out[k] = alloc(k, shape, v.dtype) if k in layout else np.empty(shape, v.dtype)  # (B, ...)
                    out[k][pos] = v
                else:
                    out.setdefault(k, [None] * len(idx))
                    for j, p in enumerate(pos):
                        out[k][p] = v[j]
        missing = [k for k, v in out.items() if isinstance(v, list) and any(x is None for x in v)]
        if missing:
            raise StoreError(f"stores disagree on batch keys {missing}")
        return out


def _epoch_perm(seed: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng([int(seed), int(epoch)]).permutation(n)


class StepOrder:
    """Which windows optimizer step s reads: a pure function of (seed, s) (see the module docstring)."""

    def __init__(self, n: int, batch_size: int, seed: int, world: int = 1, grad_accum: int = 1,
                 index_map: np.ndarray | None = None):
        """``index_map`` (M,): the epoch's positions -> window ids (a window listed k times is read k
        times per epoch; see :func:`oversample_map`); None: every window once (M = n)."""
        self.index_map = None if index_map is None else np.asarray(index_map, np.int64)
        if self.index_map is not None:
            n = len(self.index_map)
        chunks = world * grad_accum
        if batch_size % chunks:
            raise TrainConfigError(f"train.batch_size: {batch_size} must be divisible by world_size x grad_accum "
                                   f"= {world} x {grad_accum} = {chunks}")
        if n < 1:
            raise TrainConfigError("dataset: no training windows after the split and filters")
        self.n, self.batch_size, self.seed = int(n), int(batch_size), int(seed)
        self.world, self.grad_accum = int(world), int(grad_accum)
        self.micro = batch_size // chunks
        self._perm: tuple[int, np.ndarray] | None = None

    def _perm_of(self, epoch: int) -> np.ndarray:
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, _epoch_perm(self.seed, epoch, self.n))
        return self._perm[1]

    def step_indices(self, step: int) -> np.ndarray:
        """The B global window indices of optimizer step ``step`` (0-based)."""
        pos = np.arange(step * self.batch_size, (step + 1) * self.batch_size, dtype=np.int64)  # (B,)
        epochs, offs = pos // self.n, pos % self.n
        out = np.empty_like(pos)
        for e in np.unique(epochs):
            sel = epochs == e
            out[sel] = self._perm_of(int(e))[offs[sel]]
        return out if self.index_map is None else self.index_map[out]

    def rank_chunks(self, step: int, rank: int) -> list[np.ndarray]:
        """Rank ``rank``'s micro-batches of step ``step``: chunk m * world + rank for m < grad_accum."""
        idx = self.step_indices(step).reshape(self.world * self.grad_accum, self.micro)  # (chunks, micro)
        return [idx[m * self.world + rank] for m in range(self.grad_accum)]

    def chunk_id(self, step: int, rank: int, m: int) -> int:
        """A global id of (step, chunk) used to seed the micro-batch's noise."""
        return (step * self.world * self.grad_accum) + m * self.world + rank

    def epoch_of(self, step: int) -> float:
        """Epochs consumed after ``step`` steps."""
        return step * self.batch_size / self.n


class StepBatches(torch.utils.data.Dataset):
    """Item s: this rank's micro-batches of step s (list of tensor dicts), read in a worker or inline."""

    def __init__(self, sampler: MultiSampler, order: StepOrder, rank: int):
        self.sampler, self.order, self.rank = sampler, order, rank

    def __len__(self) -> int:
        return 1 << 40

    def __getitem__(self, step: int) -> list[dict[str, Any]]:
        """In a worker each micro-batch is written into a reused shared-memory slot and reaches the
        training process as tensors over it (:mod:`vlastack.datasets.batch_pool`); inline, as tensors."""
        chunks = self.order.rank_chunks(int(step), self.rank)
        if torch.utils.data.get_worker_info() is not None:
            return [pooled_batch(self.sampler, ix) for ix in chunks]
        return [batch_to_torch(self.sampler.get_batch(ix)) for ix in chunks]


def _identity(x):
    return x


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)
    single_thread_blosc()


def step_batches(data: StepBatches, start: int, stop: int, num_workers: int = 0) -> Iterator[list[dict]]:
    """Micro-batches of steps ``start .. stop - 1`` in order, read ahead by ``num_workers`` processes."""
    if num_workers == 0:
        for s in range(start, stop):
            yield data[s]
        return
    loader = torch.utils.data.DataLoader(data, batch_size=None, sampler=range(start, stop), num_workers=num_workers,
                                         collate_fn=_identity, worker_init_fn=_worker_init, prefetch_factor=2)
    yield from loader


def val_batches(val: MultiSampler | None, batches: int, batch_size: int, seed: int) -> list[np.ndarray]:
    """A fixed, seeded set of validation batches of window indices (the same at every evaluation)."""
    if val is None or len(val) == 0:
        return []
    perm = np.random.default_rng([int(seed), 7919]).permutation(len(val))
    take = perm[:min(len(val), batches * batch_size)]
    return [take[i:i + batch_size] for i in range(0, len(take), batch_size)]


def build_samplers(stores: Sequence[TrajectoryStore], cfg: DatasetConfig, window: Mapping[str, Sequence[int]],
                   seed: int, feature_encoder: str | None) -> tuple[MultiSampler, MultiSampler | None, tuple[int, int]]:
    """Train / val samplers over every store for the policy's ``window`` (key -> offsets)."""
    train_s, val_s = [], []
    n_train = n_val = 0
    for store in stores:
        win = {k: list(v) for k, v in window.items() if not (k == ACTION and ACTION not in store.spec.features)}
        tr, va = select_episodes(store, cfg, seed)
        n_train, n_val = n_train + len(tr), n_val + len(va)
        try:
            if len(tr):
                train_s.append(WindowSampler(store, win, tr, feature_encoder=feature_encoder))
            if len(va):
                val_s.append(WindowSampler(store, win, va, feature_encoder=feature_encoder))
        except StoreError as e:
            raise TrainConfigError(f"dataset: {store.path}: {e}") from None
    if n_train == 0:
        raise TrainConfigError(f"dataset: no training episodes left in {[s.path for s in stores]} after the split "
                               f"(val_fraction={cfg.val_fraction}) and filters (tasks={cfg.tasks}, "
                               f"require_action={cfg.require_action})")
    train = MultiSampler(train_s)
    val = MultiSampler(val_s) if val_s else None
    keys = {k for s in train.samplers for k in s.deltas}
    if len({frozenset(s.deltas) for s in train.samplers + (val.samplers if val else [])}) > 1:
        raise TrainConfigError(f"dataset: the stores give different keys for the policy's window {sorted(keys)} "
                               "(mixing stores with and without actions in one run is not supported)")
    return train, val, (n_train, n_val)


def oversample_map(train: MultiSampler, oversample: Mapping[str, int] | None) -> np.ndarray | None:
    """Window ids of one epoch with every window of an oversampled task listed k times (None: none).

    ``oversample``: task id or instruction -> k >= 1. A key that names no training episode is an
    error that lists the task ids there are.
    """
    if not oversample:
        return None
    reps, seen = [], set()
    for s in train.samplers:
        meta = s.store.episodes
        per_ep = np.ones(len(meta), np.int64)  # (num_episodes,)
        for e in s.episodes:
            key = task_key(meta[e], oversample)
            if key is not None:
                per_ep[e] = int(oversample[key])
                seen.add(key)
        reps.append(per_ep[s.anchor_episode])  # (N_s,)
    unknown = sorted(set(oversample) - seen)
    if unknown:
        tasks = sorted({m["task_id"] for s in train.samplers for m in (s.store.episodes[e] for e in s.episodes)})
        raise TrainConfigError(f"dataset.oversample: {unknown} name no training episode; task ids: {tasks}")
    return np.repeat(np.arange(len(train), dtype=np.int64), np.concatenate(reps))  # (M,)


def ensure_feature_cache(stores: Sequence[TrajectoryStore], encoder, keys: Sequence[str], mode: str,
                         batch_size: int = 64, build: bool = True, progress: bool = True,
                         log=print) -> str | None:
    """Decide whether training reads cached features of ``encoder`` (returns its name) or images (None).

    ``mode``: "off" -> None; "auto" / "on" need a frozen encoder; missing caches are built when
    ``build`` (the rank that writes) and the store is writable; "on" raises where "auto" falls back.
    """
    from vlastack.policies import feature_cache as fc

    if mode == "off" or not keys:
        return None
    if encoder is None or not getattr(encoder, "frozen", False):
        if mode == "on":
            raise TrainConfigError("dataset.cache_features: 'on' needs a frozen vision encoder; this policy's "
                                   f"{getattr(encoder, 'name', None)!r} is trainable (use auto or off)")
        return None
    for i, store in enumerate(stores):
        if fc.has_cached(store, encoder, list(keys)):
            continue
        if not build:
            continue
        try:
            writable = TrajectoryStore.open(store.path, mode="a", verify="none")
        except (StoreError, OSError, ValueError) as e:
            if mode == "on":
                raise TrainConfigError(f"dataset.cache_features: cannot write the feature cache of {store.path}: {e}")
            log(f"feature cache: {store.path} is not writable ({e}); training on images")
            return None
        try:  # each cache write holds the store's writer lock; the handle is closed on every path
            log(f"feature cache: encoding {writable.num_frames} frames x {len(keys)} cameras of {store.path} with "
                f"{encoder.name} (once; later runs reuse it)")
            reports = fc.cache_features(writable, encoder, keys=list(keys), batch_size=batch_size, progress=progress)
        except StoreError as e:  # e.g. another writer holds the lock past the timeout, or the disk is full
            if mode == "on":
                raise TrainConfigError(f"dataset.cache_features: cannot write the feature cache of {store.path}: {e}")
            log(f"feature cache: {store.path}: {e}; training on images")
            return None
        finally:
            writable.close()
        for r in reports.values():
            if r.status != "skipped":
                log(f"feature cache: {r.key} {r.status} {r.shape} in {r.seconds:.1f} s "
                    f"({r.frames_per_second:.0f} frames/s)")
    return encoder.name


def reopen(stores: Sequence[TrajectoryStore]) -> list[TrajectoryStore]:
    """The stores opened again (to see a feature cache another handle or process just wrote)."""
    return [TrajectoryStore.open(s.path, verify="none") for s in stores]

