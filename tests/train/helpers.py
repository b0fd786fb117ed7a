"""Tiny stores for the training tests, made with the store API in a temporary directory."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from vlastack.datasets.store import TrajectoryStore
from vlastack.types import ACTION, STATE, DatasetSpec, FeatureSpec, image_key

TASKS = ("open the drawer", "close the drawer")


def make_store(path: Path, episodes: int = 6, length: int = 12, cameras=("left", "wrist"), size=(32, 32),
               state_dim: int = 4, action_dim: int = 3, actions: bool = True, seed: int = 0,
               tasks=TASKS, stats: bool = True) -> str:
    """A store of random but smooth episodes; ``actions=False`` makes a video-only store (no action key)."""
    spec = DatasetSpec.robot(cameras=cameras, image_size=size, state_dim=state_dim, action_dim=action_dim)
    if not actions:
        spec = DatasetSpec({k: f for k, f in spec.features.items() if k != ACTION}, spec.fps)
    rng = np.random.default_rng(seed)
    store = TrajectoryStore.create(str(path), spec)
    for e in range(episodes):
        t = np.arange(length, dtype=np.float32)[:, None]
        frames = {STATE: (np.sin(t * 0.3 + rng.normal(size=(1, state_dim))) + 0.1 * rng.normal(
            size=(length, state_dim))).astype(np.float32)}
        if actions:
            frames[ACTION] = (np.cos(t * 0.2 + rng.normal(size=(1, action_dim)))).astype(np.float32)
        for c in cameras:
            base = rng.integers(0, 255, size=(1, *size, 3))
            frames[image_key(c)] = np.clip(base + (t[:, :, None, None] * 4).astype(int), 0, 255).astype(np.uint8)
        store.append_episode(frames, task=tasks[e % len(tasks)])
    if stats:
        store.compute_stats([k for k in (STATE, ACTION) if k in spec.features])
    store.close()
    return str(path)


__all__ = ["make_store", "FeatureSpec"]
