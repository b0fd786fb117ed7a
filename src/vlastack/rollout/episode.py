"""The one episode loop for simulation and hardware: :func:`run_episode`.

It depends on two small interfaces only:

- :class:`Env`: ``reset(seed=...) -> (obs, info)`` and ``step(action) -> (obs, reward,
  terminated, truncated, info)`` with flat data-contract observations
  (``observation.images.<cam>`` uint8 (H, W, 3), ``observation.state`` (D_s,), ``task``) and
  ``info["success"]`` — every simulated env of :mod:`vlastack.envs`. A robot with
  ``get_observation()`` / ``send_action(action)`` (the ``Robot`` protocol) is adapted by
  :class:`RobotEnv`; it never reports success, so its episodes end at ``max_steps``.
- a policy: anything with ``sample_actions(obs: Observation, **sampling) -> ActionChunk``
  (actions (B, H, D_a)), optionally ``reset(seed)``; torch modules are wrapped by
  :func:`vlastack.rollout.policy_adapters.as_policy` so they run without autograd.

The loop keeps an :class:`ObservationHistory` of the last ``n_obs`` frames (padded at the
episode's start by repeating the first frame, as the dataset's windows are), asks the chunk
executor (:mod:`.executors`) for one action per step and stops on success, on the env's end or
at ``max_steps``. ``rate_hz`` paces the loop for hardware; observers see every observation
(videos, logging).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

from vlastack.types import IMAGE_PREFIX, STATE, TASK, ContractError, Observation, camera_of

#: episodes neither the env nor ``max_steps`` ends are cut here.
HARD_STEP_CAP = 100_000

#: observer(step, obs, info): called after reset (step 0) and after every env step (step = steps taken)
Observer = Callable[[int, Mapping[str, Any], Mapping[str, Any]], None]


@runtime_checkable
class Env(Protocol):
    """What the loop needs from an environment (gymnasium's reset/step)."""

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        """Start an episode; returns (observation, info)."""

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, bool, dict]:
        """Apply one action; returns (observation, reward, terminated, truncated, info)."""


class RobotEnv:
    """Adapts a robot (``get_observation()``, ``send_action(action)``) to :class:`Env`.

    The robot's own controller enforces timing and safety; success is never reported, so an
    episode runs to ``max_steps`` (or until an observer raises to stop it).
    """

    def __init__(self, robot: Any, instruction: str | None = None):
        """Wrap ``robot``; ``instruction`` fills ``task`` when the robot's observations lack it."""
        for name in ("get_observation", "send_action"):
            if not callable(getattr(robot, name, None)):
                raise TypeError(f"robot: {type(robot).__name__} has no {name}(); expected the Robot protocol")
        self.robot, self.instruction = robot, instruction

    def _obs(self) -> dict:
        obs = dict(self.robot.get_observation())
        if TASK not in obs or not obs[TASK]:
            if not self.instruction:
                raise ContractError(f"robot observation has no {TASK!r}; pass instruction= to RobotEnv")
            obs[TASK] = self.instruction
        return obs

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        """The robot's current observation (robots are not reset by software)."""
        return self._obs(), {"success": False}

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, bool, dict]:
        """Send ``action`` and read the next observation."""
        self.robot.send_action(np.asarray(action, np.float32))
        return self._obs(), 0.0, False, False, {"success": False}


def as_env(env_or_robot: Any, instruction: str | None = None) -> Env:
    """``env_or_robot`` as an :class:`Env`: envs pass through, robots get a :class:`RobotEnv`."""
    if callable(getattr(env_or_robot, "reset", None)) and callable(getattr(env_or_robot, "step", None)):
        return env_or_robot
    if callable(getattr(env_or_robot, "get_observation", None)):
        return RobotEnv(env_or_robot, instruction)
    raise TypeError(f"{type(env_or_robot).__name__} is neither an env (reset/step) nor a robot "
                    "(get_observation/send_action)")


class ObservationHistory:
    """The last ``n_obs`` observations as a batch-of-one :class:`Observation`.

    ``reset(obs)`` fills the window with the first frame (edge padding, like the dataset's
    windows); ``push(obs)`` appends; :meth:`observation` stacks images to (1, n_obs, H, W, 3)
    and state to (1, n_obs, D_s). ``cameras`` limits which images are kept (None: all).
    ``allow_blank``: accept an empty instruction (the blank-instruction evaluation control);
    otherwise a missing or empty one is an error.
    """

    def __init__(self, n_obs: int = 1, cameras: Sequence[str] | None = None, allow_blank: bool = False):
        if isinstance(n_obs, bool) or not isinstance(n_obs, (int, np.integer)) or n_obs < 1:
            raise ValueError(f"n_obs: expected an int >= 1, got {n_obs!r}")
        self.n_obs = int(n_obs)
        self.cameras = None if cameras is None else list(cameras)
        self._frames: deque = deque(maxlen=self.n_obs)
        self.allow_blank = bool(allow_blank)
        self.task = ""

    def _pick(self, obs: Mapping[str, Any]) -> dict[str, Any]:
        if STATE not in obs:
            raise ContractError(f"observation is missing {STATE!r}; got keys {sorted(obs)}")
        images = {camera_of(k): np.asarray(v) for k, v in obs.items()
                  if k.startswith(IMAGE_PREFIX) and (self.cameras is None or camera_of(k) in self.cameras)}
        if self.cameras is not None:
            missing = [c for c in self.cameras if c not in images]
            if missing:
                have = [camera_of(k) for k in obs if k.startswith(IMAGE_PREFIX)]
                raise ContractError(f"observation is missing cameras {missing}; it has {have}")
        return {"images": images, "state": np.asarray(obs[STATE], np.float32)}

    def reset(self, obs: Mapping[str, Any], instruction: str | None = None) -> None:
        """Start a window at the episode's first observation."""
        frame = self._pick(obs)
        self._frames.clear()
        for _ in range(self.n_obs):
            self._frames.append(frame)
        self.task = str(instruction or obs.get(TASK) or "")
        if not self.task.strip() and not self.allow_blank:
            raise ContractError(f"observation has no instruction {TASK!r}; pass instruction=")

    def push(self, obs: Mapping[str, Any]) -> None:
        """Append the observation after a step (the oldest frame leaves the window)."""
        if not self._frames:
            raise RuntimeError("ObservationHistory.push() before reset()")
        self._frames.append(self._pick(obs))

    def observation(self) -> Observation:
        """The window as a batch of one: images (1, n_obs, H, W, 3) uint8, state (1, n_obs, D_s)."""
        frames = list(self._frames)
        images = {c: np.stack([f["images"][c] for f in frames])[None] for c in frames[-1]["images"]}  # (1, T, H, W, 3)
        state = np.stack([f["state"] for f in frames])[None]  # (1, T, D_s)
        return Observation(images=images, state=state, task=[self.task])


@dataclass
class EpisodeResult:
    """What one episode did. ``reason``: success | terminated without success | env time limit | max_steps."""

    success: bool
    steps: int
    reason: str
    instruction: str
    seed: int | None
    wall_s: float
    policy_calls: int
    inference_s: float
    executor: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"success": self.success, "steps": self.steps, "reason": self.reason, "instruction": self.instruction,
                "seed": self.seed, "wall_s": round(self.wall_s, 4), "policy_calls": self.policy_calls,
                "inference_s": round(self.inference_s, 4), "executor": dict(self.executor)}


def _chunk_actions(chunk: Any) -> np.ndarray:
    """Batch element 0 of a chunk's actions as numpy (H, D_a)."""
    a = chunk.actions if hasattr(chunk, "actions") else chunk
    if hasattr(a, "detach"):  # a torch tensor
        a = a.detach().float().cpu().numpy()
    a = np.asarray(a, np.float32)
    if a.ndim != 3:
        raise ContractError(f"sample_actions must return actions (B, H, D_a), got shape {a.shape}")
    return a[0]  # (H, D_a)


def run_episode(env_or_robot: Any, policy: Any, executor: Any = None, max_steps: int | None = None, *,
                seed: int | None = None, n_obs: int = 1, cameras: Sequence[str] | None = None,
                sampling: Mapping[str, Any] | None = None, instruction: str | None = None,
                observers: Sequence[Observer] = (), rate_hz: float | None = None,
                stop_on_success: bool = True, allow_blank_instruction: bool = False) -> EpisodeResult:
    """Run one episode of ``policy`` on ``env_or_robot`` with chunk ``executor``.

    Args:
        env_or_robot: an :class:`Env` or a robot (wrapped in :class:`RobotEnv`).
        policy: has ``sample_actions(obs, **sampling)``; ``reset(seed)`` is called first if present.
        executor: a :class:`~.executors.ChunkExecutor` (default: receding horizon over whole chunks).
        max_steps: step cap (None: the env's own end, at most :data:`HARD_STEP_CAP`).
        seed: passed to ``env.reset(seed=...)`` and ``policy.reset(seed)``.
        n_obs: observation history length the policy reads; ``cameras``: which images to keep.
        sampling: keyword options for every ``sample_actions`` call.
        instruction: the language instruction when observations carry none (robots).
        observers: each called as ``observer(step, obs, info)`` after reset and after every step.
        rate_hz: pace the loop to this control rate (hardware); None runs as fast as it can.
        stop_on_success: end the episode at the first ``info["success"]``.
        allow_blank_instruction: run with an empty instruction (the blank-language control).
    """
    from vlastack.rollout.executors import RecedingHorizon

    env = as_env(env_or_robot, instruction)
    executor = executor if executor is not None else RecedingHorizon()
    if max_steps is not None and (isinstance(max_steps, bool) or not isinstance(max_steps, (int, np.integer))
                                  or max_steps < 1):
        raise ValueError(f"max_steps: expected an int >= 1 or None, got {max_steps!r}")
    sampling = dict(sampling or {})
    history = ObservationHistory(n_obs, cameras, allow_blank=allow_blank_instruction)
    t0 = time.perf_counter()
    if callable(getattr(policy, "reset", None)):
        policy.reset(seed)
    obs, info = env.reset(seed=None if seed is None else int(seed))
    history.reset(obs, instruction)
    for ob in observers:
        ob(0, obs, info)

    def plan(o: Observation) -> np.ndarray:
        return _chunk_actions(policy.sample_actions(o, **sampling))  # (H, D_a)

    executor.reset(plan)
    cap = int(max_steps) if max_steps is not None else HARD_STEP_CAP
    period = 1.0 / rate_hz if rate_hz else None
    next_tick = time.perf_counter()
    success, reason = False, "max_steps"  # success is judged after actions (as demo collection does)
    steps = 0
    try:
        while not success and steps < cap:
            action = executor.act(steps, history.observation())  # (D_a,)
            if period is not None:
                next_tick += period
                delay = next_tick - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                elif delay < -period:  # more than a period late (a slow first chunk): restart the schedule
                    next_tick = time.perf_counter()  # rather than send the missed steps' actions in a burst
            obs, _, terminated, truncated, info = env.step(action)
            steps += 1
            history.push(obs)
            for ob in observers:
                ob(steps, obs, info)
            if stop_on_success and bool(info.get("success", False)):
                success, reason = True, "success"
                break
            if terminated:
                success = bool(info.get("success", False))
                reason = "success" if success else "terminated without success"
                break
            if truncated:
                reason = "env time limit"
                break
    finally:
        executor.close()
    stats = dict(executor.stats)
    return EpisodeResult(success=success, steps=steps, reason=reason, instruction=history.task, seed=seed,
                         wall_s=time.perf_counter() - t0, policy_calls=int(stats.pop("policy_calls", 0)),
                         inference_s=float(stats.pop("inference_s", 0.0)),
                         executor={**executor.describe(), **stats})
