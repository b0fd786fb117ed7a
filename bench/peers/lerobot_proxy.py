"""A LeRobot policy as a vlastack policy, so our evaluation harness runs it unchanged.

LeRobot lives in its own virtual environment (its torch and numpy differ from ours), so the
policy cannot be imported here. :class:`LeRobotProxyPolicy` is a registered vlastack
:class:`~vlastack.policies.base.Policy` (name ``"lerobot"``) with no weights of its own: its
config names a LeRobot checkpoint and the side venv's python, and ``sample_actions`` sends the
observation window to ``lerobot_worker.py serve`` (started on first use, one per policy) over
stdin/stdout (:mod:`wire`), which answers with the chunk LeRobot would execute, already
unnormalised by LeRobot's own post-processor.

Everything else is ours: the env, the observation history (edge-padded, ``n_obs_steps`` frames),
the chunk executor, the success check and the Wilson interval of ``vlastack.rollout.evaluate``.
The proxy checkpoint is an ordinary vlastack checkpoint directory (``config.json`` +
an empty ``model.safetensors``), so ``evaluate(EvalConfig(checkpoint=...))`` loads it; run the
evaluation with ``workers=0`` (spawned workers would not have this module's registration).

Sampling noise: ``LoadedPolicy`` hands a per-episode seeded generator; its seed is forwarded to
the server (``torch.manual_seed``) at the first chunk of each episode, so episodes are
reproducible as ours are.
"""

from __future__ import annotations

import atexit
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlastack.policies.base import Policy, PolicyConfig, register_policy
from vlastack.types import ACTION, STATE, ActionChunk, Observation, image_key

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import wire  # noqa: E402


@dataclass
class LeRobotProxyConfig(PolicyConfig):
    """Where the LeRobot policy lives and what it reads (the data-contract fields the harness checks)."""

    checkpoint: str = ""  # a directory written by ``lerobot_worker.py train``
    python: str = ""  # the side venv's python
    cameras: tuple[str, ...] = ("left", "right", "wrist")
    image_size: tuple[int, int] = (128, 128)
    state_dim: int = 9
    action_dim: int = 7
    n_obs_steps: int = 1
    horizon: int = 8  # actions per returned chunk (LeRobot's n_action_steps)
    threads: int = 1  # torch threads of the server
    label: str = "lerobot"

    def __post_init__(self):
        self.cameras = tuple(self.cameras)
        self.image_size = tuple(int(s) for s in self.image_size)
        if not self.checkpoint or not self.python:
            raise ValueError("LeRobotProxyConfig: checkpoint and python are required")
        for name in ("state_dim", "action_dim", "n_obs_steps", "horizon", "threads"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    def delta_indices(self) -> dict[str, list[int]]:
        """Observation window t - n_obs + 1 .. t; actions t .. t + horizon - 1."""
        obs = list(range(-(self.n_obs_steps - 1), 1))
        out = {image_key(c): list(obs) for c in self.cameras}
        out[STATE] = list(obs)
        out[ACTION] = list(range(self.horizon))
        return out


@register_policy("lerobot")
class LeRobotProxyPolicy(Policy):
    """Forwards ``sample_actions`` to a LeRobot policy served from the side venv."""

    config_class = LeRobotProxyConfig

    def __init__(self, config: LeRobotProxyConfig, stats: Any = None):
        super().__init__(config)
        self._proc: subprocess.Popen | None = None
        self._seed: int | None = None
        self.info: dict[str, Any] = {}

    # ------------------------------------------------------------ the server

    def _server(self) -> subprocess.Popen:
        if self._proc is None or self._proc.poll() is not None:
            c = self.config
            self._proc = subprocess.Popen(
                [c.python, str(HERE / "lerobot_worker.py"), "serve", "--checkpoint", c.checkpoint,
                 "--threads", str(c.threads)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            try:
                self.info = wire.read(self._proc.stdout)
            except EOFError:
                raise RuntimeError(f"LeRobot server for {c.checkpoint} exited at start-up "
                                   f"(code {self._proc.wait()}); run it by hand to see why") from None
            if self.info.get("n_obs") != c.n_obs_steps:
                raise RuntimeError(f"{c.checkpoint}: LeRobot reads {self.info.get('n_obs')} frames, "
                                   f"the proxy config says {c.n_obs_steps}")
            self._seed = None
            atexit.register(self.close)
        return self._proc

    def _call(self, msg: dict) -> dict:
        proc = self._server()
        wire.write(proc.stdin, msg)
        try:
            reply = wire.read(proc.stdout)
        except EOFError:
            raise RuntimeError(f"LeRobot server died (code {proc.wait()})") from None
        if not reply.get("ok"):
            raise RuntimeError(f"LeRobot server: {reply.get('error')}")
        return reply

    def close(self) -> None:
        """Stop the server (idempotent)."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            try:
                wire.write(proc.stdin, {"op": "close"})
                proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                proc.kill()
                proc.wait()

    # ------------------------------------------------------------ the verbs

    def compute_loss(self, batch):
        """Not trainable here: LeRobot trains in its own venv (``lerobot_worker.py train``)."""
        raise NotImplementedError("train LeRobot policies with bench/peers/lerobot_worker.py train")

    def sample_actions(self, obs: Observation, generator: torch.Generator | None = None) -> ActionChunk:
        """LeRobot's chunk for batch element 0's window: actions (1, n_action_steps, D_a)."""
        if not isinstance(obs, Observation):
            obs = Observation.from_flat(obs)
        if obs.batch_size != 1:
            raise ValueError(f"the LeRobot proxy runs one env: expected a batch of 1, got {obs.batch_size}")
        if generator is not None and generator.initial_seed() != self._seed:
            self._call({"op": "seed", "seed": int(generator.initial_seed() % (2**63))})
            self._seed = generator.initial_seed()
        state = np.asarray(obs.state, np.float32)
        state = state[0] if state.ndim == 3 else state  # (T, D_s)
        imgs = {c: np.asarray(v) for c, v in obs.images.items()}
        n_t = state.shape[0]
        frames = []
        for t in range(n_t):
            f: dict[str, Any] = {STATE: state[t], "task": obs.task[0]}
            for c in self.config.cameras:
                v = imgs[c]
                f[image_key(c)] = np.ascontiguousarray(v[0, t] if v.ndim == 5 else v[0])  # (H, W, 3) uint8
            frames.append(f)
        reply = self._call({"op": "chunk", "frames": frames})
        return ActionChunk(torch.from_numpy(np.asarray(reply["actions"], np.float32)))  # (1, n, D_a)


def write_proxy_checkpoint(path: str | Path, config: LeRobotProxyConfig) -> Path:
    """A vlastack checkpoint directory for the proxy (no weights; the config points at LeRobot's)."""
    return LeRobotProxyPolicy(config).save_pretrained(path)
