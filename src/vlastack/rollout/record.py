"""Recording deployments into a Zarr trajectory store, and replaying stored episodes.

``vlastack deploy ... record=STORE`` (as LeRobot's ``lerobot-record``) writes every episode it
runs, whatever drives the robot (the twin's or the kitchen's scripted policy, a checkpoint for
DAgger-style data, a replay), through :class:`EpisodeRecorder`:

- frame t holds the robot's observation at step t exactly as the robot gave it (its own camera
  names, before any ``robot.camera_map`` renaming), its capture time ``timestamp`` (monotonic
  seconds since the episode's first capture; the stalest source of the observation, camera or
  state) and ``action``: the action sent to the robot at that step, in the robot's action space
  (``robot.spec``), whichever chunk it came from;
- the observation after the last action is not stored (as in every demo store);
- each finished episode is appended in one atomic ``append_episode`` with its instruction,
  success and meta (seed, end reason, robot, policy source, the monotonic and wall-clock start
  time); an interrupted episode is dropped, the episodes finished before it stay.

A store that already exists is appended to when its features match the robot's (a recording
resumed); otherwise the error names the difference. :class:`ReplayPolicy` sends a stored
episode's actions again, in order (``policy=replay replay=STORE``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from vlastack.types import ACTION, TIMESTAMP, ActionChunk, DatasetSpec, FeatureSpec, Observation


class RecordError(ValueError):
    """A store that cannot take this robot's episodes, or a bad replay; the message says what to change."""


def recording_spec(robot_spec: DatasetSpec) -> DatasetSpec:
    """``robot_spec`` plus the capture time of every frame (``timestamp``, float64 seconds)."""
    feats = dict(robot_spec.features)
    feats[TIMESTAMP] = FeatureSpec(TIMESTAMP, (), "float64", None,
                                   "s since the episode's first capture (monotonic clock)", "other")
    return DatasetSpec(feats, robot_spec.fps, robot_spec.action_space)


def open_recording(path: str, robot_spec: DatasetSpec):
    """A writable store for ``robot_spec``'s episodes at ``path``: created, or an existing one appended to."""
    from vlastack.datasets.store import StoreError, TrajectoryStore, _Location

    spec = recording_spec(robot_spec)
    try:
        if not _Location(path).exists():
            return TrajectoryStore.create(path, spec)
        store = TrajectoryStore.open(path, mode="a")
    except StoreError as e:
        raise RecordError(f"record: {e}") from None
    have, want = store.spec.features, spec.features
    diff = sorted(k for k in set(have) | set(want)
                  if k not in have or k not in want or tuple(have[k].shape) != tuple(want[k].shape)
                  or have[k].dtype != want[k].dtype)
    if diff:
        store.close()
        shown = {k: (tuple(have[k].shape) if k in have else None, tuple(want[k].shape) if k in want else None)
                 for k in diff}
        raise RecordError(f"record: {path} holds another robot's episodes; keys that differ (store, robot): {shown}; "
                          "record into a new store")
    return store


class EpisodeRecorder:
    """Collects one episode's (observation, action sent) pairs and appends them atomically (module docstring)."""

    def __init__(self, path: str, robot_spec: DatasetSpec, source: str):
        self.store = open_recording(path, robot_spec)
        self.path, self.source = path, source
        self.keys = [k for k in robot_spec.features if k != ACTION]
        self._frames: dict[str, list] | None = None

    def start(self) -> None:
        """Begin an episode (drops anything not finished)."""
        self._frames = {k: [] for k in [*self.keys, ACTION, TIMESTAMP]}
        self._t0: float | None = None
        self._wall0 = time.time()

    def add(self, obs: Mapping[str, Any], action: np.ndarray) -> None:
        """Record the observation the robot gave and the action sent at this step."""
        if self._frames is None:
            raise RecordError("EpisodeRecorder.add() before start()")
        t = float(obs[TIMESTAMP])
        if self._t0 is None:
            self._t0 = t
        for k in self.keys:
            self._frames[k].append(np.asarray(obs[k]))
        self._frames[ACTION].append(np.asarray(action, np.float32))
        self._frames[TIMESTAMP].append(t - self._t0)

    @property
    def steps(self) -> int:
        """Frames recorded in the current episode."""
        return len(self._frames[ACTION]) if self._frames else 0

    def finish(self, instruction: str, success: bool, meta: Mapping[str, Any]) -> int | None:
        """Append the episode (one atomic write); returns its index, None when it has no frames."""
        frames, self._frames = self._frames, None
        if not frames or not frames[ACTION]:
            return None
        arrays = {k: np.stack(v) if k != TIMESTAMP else np.asarray(v, np.float64) for k, v in frames.items()}
        return self.store.append_episode(arrays, task=instruction, success=bool(success), source=self.source,
                                         meta={**dict(meta), "t0_monotonic": self._t0, "t0_wall": self._wall0})

    def discard(self) -> None:
        """Drop the unfinished episode."""
        self._frames = None

    def close(self) -> None:
        """Close the store (finished episodes are already committed)."""
        self.store.close()


class ReplayPolicy:
    """Sends the actions of stored episodes again: episode ``first + k`` for the k-th ``reset``.

    Each episode is one chunk of all its actions (run it with ``executor=receding``, whole
    chunks); the action space must be the robot's.
    """

    def __init__(self, path: str, robot_spec: DatasetSpec, first: int = 0):
        from vlastack.datasets.store import StoreError, TrajectoryStore

        try:
            self.store = TrajectoryStore.open(path)
        except StoreError as e:
            raise RecordError(f"replay: {e}") from None
        have, want = self.store.spec.features.get(ACTION), robot_spec.features[ACTION]
        if have is None or tuple(have.shape) != tuple(want.shape):
            raise RecordError(f"replay: {path} has actions {None if have is None else tuple(have.shape)}, "
                              f"the robot takes {tuple(want.shape)}")
        self.next_episode = int(first)
        self.actions: np.ndarray | None = None

    def reset(self, seed: int | None = None) -> None:
        """Load the next stored episode's actions."""
        n = self.store.num_episodes
        if self.next_episode >= n:
            raise RecordError(f"replay: {self.store.path} has {n} episodes; no episode {self.next_episode}")
        self.actions = self.store.episode(self.next_episode, [ACTION])[ACTION].astype(np.float32)  # (T, D_a)
        self.next_episode += 1

    def sample_actions(self, obs: Observation, **sampling: Any) -> ActionChunk:
        """The whole episode's actions as one chunk (1, T, D_a)."""
        if self.actions is None:
            raise RecordError("replay: reset() first")
        return ActionChunk(self.actions[None])  # (1, T, D_a)


def store_path(path: str) -> str:
    """``path`` with ``~`` expanded (fsspec URLs unchanged)."""
    return path if "://" in path else str(Path(path).expanduser())
