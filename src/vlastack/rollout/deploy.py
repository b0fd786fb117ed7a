"""Deployment: run a policy on a robot (or its digital twin) through the safe controller.

``vlastack deploy robot=twin checkpoint=RUN task="open the drawer"`` (a Hydra app over
``configs/deploy.yaml``; ``policy=scripted`` runs the twin's scripted drawer policy or the kitchen's
expert instead of a checkpoint, ``policy=replay replay=STORE`` a store's episodes).
``robot=kitchen robot.task=<Task>`` is a kitchen task in real time (:mod:`.kitchen_robot`);
``record=STORE`` appends every finished episode to a Zarr store (:mod:`.record`). A checkpoint
whose cameras, image size, state or action dims do not fit the robot is refused before anything
starts, each mismatch named with its fix (:func:`check_inputs`; ``robot.camera_map`` maps the
checkpoint's camera names to the robot's). The loop is the one of simulation, :func:`~.episode.run_episode`, with
:class:`RobotDeployEnv` adapting the robot: each step sends one timestamped action (target time
= send time + ``lookahead_s``) to the controller process, which interpolates between them at
its servo rate and enforces the safety limits; the chunk executor runs asynchronously by default
(the next chunk is computed while the current one plays).

Measured and printed at the end (and written to ``out`` as JSON):

- observation-to-action latency: from the capture time of the observation a chunk was
  planned from (its stalest source, camera or state) to the moment the chunk was ready, p50/p99;
- loop jitter: |interval between consecutive actions sent - 1/fps|, p50/p99;
- the controller's tick jitter (|tick interval - 1/rate_hz|, p50/p99) and its counters.

It stops cleanly on Ctrl-C (the arm is held, the controller and the twin shut down, exit code
130), on an e-stop (software: ``robot.estop()`` or ``kill -USR1 <pid>``; hardware: reported by
the driver) or when the controller stops after repeated faults; the episode then ends with that
reason. Episodes after the first begin with ``robot.reset_scene(seed)`` on the twin, or wait for
the operator on real robots (``wait_for_operator``).
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from vlastack import hydra_app
from vlastack.real_robot.base import RobotError, StaleFrameError
from vlastack.real_robot.controller import sigterm_as_interrupt, tick_jitter
from vlastack.real_robot.registry import RobotConfigError, make_robot
from vlastack.rollout.episode import run_episode
from vlastack.rollout.executors import ExecutorError, make_executor
from vlastack.rollout.policy_adapters import PolicyAdapterError, PolicyInputs, as_policy
from vlastack.types import TIMESTAMP, Observation, image_key

POLICIES = ("checkpoint", "scripted", "replay")
#: robots with a scripted policy of their own (privileged state of the simulation)
SCRIPTED_ROBOTS = ("twin", "kitchen")


class DeployError(ValueError):
    """Bad deploy settings (policy, checkpoint, robot/policy mismatch); the message says what to change."""


# ------------------------------------------------------------------------------------ the env adapter


class RobotDeployEnv:
    """A connected robot as the episode loop's env: timestamped actions, success from the twin, ends on e-stop.

    ``lookahead_s``: each action is the controller's target for send time + this (default 1/fps).
    """

    def __init__(self, robot: Any, lookahead_s: float | None = None, camera_map: Mapping[str, str] | None = None,
                 recorder: Any = None, estop_request: threading.Event | None = None):
        self.robot = robot
        self.estop_request = estop_request  # set by the SIGUSR1 handler (:class:`EstopSignal`); acted on here
        self.lookahead_s = float(lookahead_s) if lookahead_s else 1.0 / robot.fps
        self.camera_map = dict(camera_map or {})
        self.recorder = recorder
        self.send_times: list[float] = []
        self.last_capture: float | None = None
        self.end_reason: str | None = None
        self._last_obs: dict | None = None
        self._last_raw: dict | None = None

    def _success(self) -> bool:
        fn = getattr(self.robot, "task_success", None)
        return bool(fn()) if callable(fn) else False

    def _observe(self) -> dict:
        raw = self.robot.get_observation()
        self.last_capture = float(raw.get(TIMESTAMP, time.monotonic()))
        obs = dict(raw)
        for ckpt_cam, robot_cam in self.camera_map.items():  # the checkpoint's camera names
            obs[image_key(ckpt_cam)] = raw[image_key(robot_cam)]
        self._last_raw, self._last_obs = raw, obs
        return obs

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        """The robot's current observation (the scene is reset by :func:`deploy` between episodes)."""
        self.send_times.clear()
        self.end_reason = None
        return self._observe(), {"success": self._success()}

    def _estop_requested(self) -> bool:
        """A software e-stop was requested (``kill -USR1``): carry it out here, in the loop."""
        if self.estop_request is None or not self.estop_request.is_set():
            return False
        self.robot.estop()
        return True

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, bool, dict]:
        """Send one action; end the episode on e-stop, a stopped controller or a frozen camera."""
        if self._estop_requested():  # before sending anything more
            self.end_reason = "e-stop"
            return self._last_obs, 0.0, True, False, {"success": False, "status": "estop"}
        now = time.monotonic()
        action = np.asarray(action, np.float32)
        self.robot.send_action(action, t=now + self.lookahead_s)
        self.send_times.append(now)
        if self.recorder is not None:
            self.recorder.add(self._last_raw, action)
        status = "estop" if self._estop_requested() else self.robot.status  # (requested while sending)
        info: dict[str, Any] = {"success": False, "status": status}
        if status in ("estop", "stopped"):
            self.end_reason = "e-stop" if status == "estop" else "controller stopped after repeated faults"
            return self._last_obs, 0.0, True, False, info
        try:
            obs = self._observe()
        except StaleFrameError as e:
            self.end_reason = f"camera frozen: {e}"
            self.robot.hold()
            return self._last_obs, 0.0, True, False, info
        except RobotError as e:  # e.g. the controller fell silent for a while (an overloaded computer)
            self.end_reason = f"no observation: {e}"
            self.robot.hold()  # raises in turn when the controller is gone for good
            return self._last_obs, 0.0, True, False, info
        info["success"] = self._success()
        return obs, 0.0, False, False, info


class EstopSignal:
    """``kill -USR1 <pid>`` as a software e-stop request, while the context is open (main thread only).

    The handler only sets :attr:`requested` (a ``threading.Event``): a signal handler interrupts the
    main thread anywhere, possibly inside a call into the robot that holds one of its locks or is
    half-way through a pipe message, so calling the robot from there could deadlock or corrupt the
    exchange. The deploy loop carries the request out (:meth:`RobotDeployEnv.step` calls
    ``robot.estop()`` at its next step, before sending anything more).
    """

    def __init__(self) -> None:
        self.requested = threading.Event()
        self._previous: Any = None

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested.set()

    def install(self) -> "EstopSignal":
        """Handle SIGUSR1 (from the main thread; elsewhere signals cannot be handled and nothing changes)."""
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGUSR1, self._handle)
        return self

    def restore(self) -> None:
        """Put the previous SIGUSR1 handler back."""
        if self._previous is not None:
            signal.signal(signal.SIGUSR1, self._previous)
            self._previous = None

    def __enter__(self) -> "EstopSignal":
        return self.install()

    def __exit__(self, *exc: Any) -> None:
        self.restore()


class LatencyProbe:
    """Wraps a chunk executor to time each chunk from its observation's capture to its arrival.

    The env records the capture time of every observation; :meth:`act` ties it to the observation
    object the executor receives, and the wrapped plan function reads it back when (in whichever
    thread) that observation is planned from.
    """

    def __init__(self, executor: Any, env: RobotDeployEnv):
        self.inner, self.env = executor, env
        self.latencies: list[float] = []
        self._captures: dict[int, tuple[Observation, float]] = {}
        self._lock = threading.Lock()

    @property
    def stats(self) -> dict[str, Any]:
        """The wrapped executor's counters."""
        return self.inner.stats

    def describe(self) -> dict[str, Any]:
        """The wrapped executor's description."""
        return self.inner.describe()

    def reset(self, plan: Callable[[Observation], np.ndarray]) -> None:
        """Start an episode with a timed ``plan``."""
        self.latencies = []
        with self._lock:
            self._captures.clear()

        def timed(obs: Observation) -> np.ndarray:
            with self._lock:
                entry = self._captures.pop(id(obs), None)
            chunk = plan(obs)
            if entry is not None:
                self.latencies.append(time.monotonic() - entry[1])
            return chunk

        self.inner.reset(timed)

    def act(self, step: int, obs: Observation) -> np.ndarray:
        """Record the observation's capture time, then let the executor act."""
        with self._lock:
            if len(self._captures) > 256:  # never planned from: forget the oldest
                for k in list(self._captures)[:128]:
                    del self._captures[k]
            if self.env.last_capture is not None:
                self._captures[id(obs)] = (obs, self.env.last_capture)  # obs kept alive so its id stays unique
        return self.inner.act(step, obs)

    def close(self) -> None:
        """Close the wrapped executor."""
        self.inner.close()


def _percentiles(x: list[float] | np.ndarray, scale: float = 1e3) -> dict[str, float]:
    a = np.asarray(x, float) * scale
    if a.size == 0:
        return {"p50_ms": float("nan"), "p99_ms": float("nan"), "max_ms": float("nan"), "n": 0}
    return {"p50_ms": round(float(np.percentile(a, 50)), 3), "p99_ms": round(float(np.percentile(a, 99)), 3),
            "max_ms": round(float(a.max()), 3), "n": int(a.size)}


def timing_report(probe: LatencyProbe, env: RobotDeployEnv, robot: Any) -> dict[str, Any]:
    """Latency and jitter figures of one episode (module docstring)."""
    period = 1.0 / robot.fps
    intervals = np.diff(np.asarray(env.send_times, float))
    out = {"obs_to_action": _percentiles(probe.latencies),
           "loop_jitter": _percentiles(np.abs(intervals - period)),
           "loop_period_ms": round(float(intervals.mean() * 1e3), 3) if intervals.size else float("nan")}
    try:
        log = robot.log()
        t = log["t"][log["t"] >= (env.send_times[0] if env.send_times else -np.inf)]
        out["controller_jitter"] = {k: round(v, 3) for k, v in tick_jitter(t, robot.config.rate_hz).items()}
        out["controller"] = robot.state().counters
    except RobotError:
        pass
    task_state = getattr(robot, "task_state", None)
    if callable(task_state):
        ts = task_state()
        out[robot.name] = {k: ts[k] for k in ("rtf", "dropped_commands", "applied_commands", "frozen_frames", "slips")}
    return out


# ------------------------------------------------------------------------------------ config


@dataclass
class DeployConfig:
    """What to deploy where (see ``configs/deploy.yaml``)."""

    robot: dict
    policy: str = "checkpoint"
    checkpoint: str | None = None
    task: str | None = None
    episodes: int = 1
    max_steps: int = 400
    seed: int = 0
    device: str = "cpu"
    torch_threads: int = 1
    executor: str = "async"
    executor_options: dict = field(default_factory=dict)
    sampling: dict = field(default_factory=dict)
    runtime: str = "torch"  # torch | onnxruntime (onnx) | openvino (a `vlastack export` folder) | cudagraphs
    warmup: bool = True
    scripted: dict = field(default_factory=dict)
    lookahead_s: float | None = None
    wait_for_operator: bool = False
    record: str | None = None
    record_success_only: bool = False
    replay: str | None = None
    out: str | None = None

    def __post_init__(self):
        if self.policy not in POLICIES:
            raise DeployError(f"policy: unknown {self.policy!r}; valid choices: {list(POLICIES)}")
        if self.policy == "checkpoint" and not self.checkpoint:
            raise DeployError("checkpoint: required with policy=checkpoint (a checkpoint directory, a `last` "
                              "pointer or a run directory); or use policy=scripted on the twin")
        if self.policy == "scripted" and (self.robot or {}).get("type") not in SCRIPTED_ROBOTS:
            raise DeployError(f"policy=scripted drives the simulated robots only (robot=twin or robot=kitchen), not "
                              f"robot.type={(self.robot or {}).get('type')!r}")
        if self.policy == "replay" and not self.replay:
            raise DeployError("replay: required with policy=replay (a store recorded with record=STORE)")
        for name in ("record", "replay"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, str) or not v.strip()):
                raise DeployError(f"{name}: expected a store path, got {v!r}")
        for name in ("episodes", "max_steps", "torch_threads"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise DeployError(f"{name}: expected an int >= 1, got {v!r}")
        if self.task is not None and not str(self.task).strip():
            raise DeployError("task: an empty instruction; give the task, e.g. task=\"open the drawer\"")
        if self.lookahead_s is not None and not 0 < float(self.lookahead_s) <= 2:
            raise DeployError(f"lookahead_s: expected seconds in (0, 2] or null, got {self.lookahead_s!r}")


#: the cameras each simulated robot type can render (the fix hint names them)
def _sim_cameras(kind: str) -> tuple[str, ...]:
    if kind == "twin":
        from vlastack.real_robot.twin import CAMERAS

        return tuple(CAMERAS)
    from vlastack.envs.kitchen.env import DEFAULT_CAMERAS

    return tuple(DEFAULT_CAMERAS)


def _camera_map(robot_cfg: dict) -> dict[str, str]:
    """``robot.camera_map`` taken out of the robot config: {checkpoint camera: robot camera}."""
    m = robot_cfg.pop("camera_map", None) or {}
    if not isinstance(m, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in m.items()):
        raise DeployError(f"robot.camera_map: expected {{checkpoint camera: robot camera}}, e.g. "
                          f"robot.camera_map={{left:front}}; got {m!r}")
    return dict(m)


def _resolve_sim_inputs(robot_cfg: dict, inputs: PolicyInputs | None, camera_map: Mapping[str, str]) -> dict:
    """``cameras`` / ``image_size`` = ``auto`` of the twin or the kitchen take the policy's inputs (mapped
    through ``camera_map``; cameras the robot cannot render are left for :func:`check_inputs` to name)."""
    robot_cfg = json.loads(json.dumps(robot_cfg))
    kind = robot_cfg.get("type")
    if kind not in ("twin", "kitchen"):
        return robot_cfg
    sub = robot_cfg.setdefault("twin", {}) if kind == "twin" else robot_cfg  # the kitchen's keys are top-level
    valid = _sim_cameras(kind)
    if sub.get("cameras", "auto") == "auto":
        wanted = [camera_map.get(c, c) for c in inputs.cameras] if inputs else []
        wanted = list(dict.fromkeys(c for c in wanted if c in valid))
        sub["cameras"] = wanted or (["front", "wrist"] if kind == "twin" else list(valid))
    if sub.get("image_size", "auto") == "auto":
        sub["image_size"] = list(inputs.image_size) if inputs else ([64, 64] if kind == "twin" else [128, 128])
    return robot_cfg


def check_inputs(inputs: PolicyInputs, robot: Any, camera_map: Mapping[str, str] | None = None) -> None:
    """Refuse a policy whose cameras, image size, state or action dims do not fit ``robot`` (not yet
    connected): one line per mismatch, each with how to fix it."""
    camera_map = dict(camera_map or {})
    spec = robot.spec
    has = list(spec.cameras)
    can = list(_sim_cameras(robot.name)) if robot.name in ("twin", "kitchen") else has  # what it could render
    problems = []
    stray = sorted(set(camera_map) - set(inputs.cameras))
    if stray:
        problems.append(f"robot.camera_map maps {stray}, which the checkpoint does not read (it reads "
                        f"{list(inputs.cameras)})")
    unrendered = [camera_map.get(c, c) for c in inputs.cameras if camera_map.get(c, c) in set(can) - set(has)]
    if unrendered:
        key = "robot.twin.cameras" if robot.name == "twin" else "robot.cameras"
        problems.append(f"cameras: the checkpoint reads {unrendered}, which the robot can render but is not set to "
                        f"(it renders {has}); add them to {key}, or set {key}=auto")
    missing = [c for c in inputs.cameras if camera_map.get(c, c) not in can]
    if missing and not can:  # a real robot with no camera configured: nothing to map to
        size = ",".join(map(str, inputs.image_size))
        problems.append(f"cameras: the checkpoint reads {list(inputs.cameras)}, the robot has no cameras; configure "
                        f"one per checkpoint camera in robot.cameras, e.g. 'robot.cameras=[{{name:{inputs.cameras[0]},"
                        f"type:opencv,device:0,image_size:[{size}]}}]'")
    elif missing:
        free = [c for c in can if c not in {camera_map.get(x, x) for x in inputs.cameras}] or can
        hint = ",".join(f"{c}:{free[i % len(free)]}" for i, c in enumerate(missing)) if free else ""
        problems.append(f"cameras: the checkpoint reads {list(inputs.cameras)}, the robot has {can}; "
                        f"{[camera_map.get(c, c) for c in missing]} missing. Map each checkpoint camera to one of the "
                        f"robot's with robot.camera_map" + (f", e.g. 'robot.camera_map={{{hint}}}'" if hint else ""))
    for cam in inputs.cameras:
        rc = camera_map.get(cam, cam)
        k = f"observation.images.{rc}"
        if rc in has and tuple(spec.features[k].shape[:2]) != tuple(inputs.image_size):
            problems.append(f"image size: camera {rc!r} gives {list(spec.features[k].shape[:2])}, the checkpoint reads "
                            f"{list(inputs.image_size)}; set the robot's camera size to {list(inputs.image_size)}"
                            + (" (or image_size: auto)" if robot.name in ("twin", "kitchen") else ""))
    retrain = ("train on this robot's own episodes (vlastack deploy ... record=STORE, then vlastack train "
               "dataset.path=STORE)")
    if inputs.state_dim and inputs.state_dim != spec.state_dim:
        names = spec.features["observation.state"].names
        problems.append(f"state: the robot gives {spec.state_dim} values ({', '.join(names or ())}), the checkpoint "
                        f"reads {inputs.state_dim}; the checkpoint was trained on another robot: {retrain}")
    if inputs.action_dim != spec.action_dim:
        a = spec.action_space
        problems.append(f"actions: the robot takes {spec.action_dim} values ({a.mode} {a.frame} "
                        f"{', '.join(n for n, *_ in a.layout)}), the checkpoint predicts {inputs.action_dim}; {retrain}")
    if problems:
        raise DeployError(f"the checkpoint does not fit robot {robot.name!r}:\n  - " + "\n  - ".join(problems))


def build_robot(robot_cfg: Mapping[str, Any], inputs: PolicyInputs | None, instruction: str | None):
    """The (unconnected) robot of ``robot_cfg`` and its camera map; the kitchen robot or :func:`make_robot`."""
    robot_cfg = dict(robot_cfg)
    camera_map = _camera_map(robot_cfg)
    robot_cfg = _resolve_sim_inputs(robot_cfg, inputs, camera_map)
    if robot_cfg.get("type") == "kitchen":
        from vlastack.rollout.kitchen_robot import make_kitchen_robot

        return make_kitchen_robot(robot_cfg, instruction), camera_map
    return make_robot(robot_cfg, instruction=instruction), camera_map


# ------------------------------------------------------------------------------------ the run


def _scripted_policy(robot: Any, cfg: DeployConfig) -> Any:
    """The simulated robot's own scripted policy (it reads the simulation's privileged state)."""
    if robot.name == "twin":
        from vlastack.real_robot.twin import TwinScriptedPolicy

        return TwinScriptedPolicy(robot, seed=cfg.seed, **dict(cfg.scripted or {}))
    return robot.scripted_policy(**dict(cfg.scripted or {}))


def _reset_scene(robot: Any, seed: int, tries: int = 2) -> None:
    """A simulated robot's scene reset for episode ``seed``; a controller stopped by faults is reset first,
    and a reset that fails (an arm that does not get home in time on a busy computer) is tried again.

    A stopped controller that refuses to be reset (the kitchen's arm, moved by the simulation's own
    controller, ended just past the safety margin of a joint limit) does not end the run: the scene
    reset puts the simulated arm back at its start and re-anchors the controller there."""
    for attempt in range(tries):
        try:
            _clear_faults(robot)
        except RobotError:
            pass  # the arm outside the limits: the scene reset below moves it (or fails, and is retried)
        try:
            robot.reset_scene(seed)
            _clear_faults(robot, always=True)  # each episode starts with no faults counted
            return
        except RobotError:
            if attempt == tries - 1:
                raise


def _clear_faults(robot: Any, always: bool = False, timeout_s: float = 2.0) -> None:
    """A simulated robot's controller stopped by faults (or ``always``): clear its faults, re-anchored where the
    arm is, and wait until its published status shows it."""
    if robot.status != "stopped" and not always:
        return
    robot.reset_faults()
    deadline = time.monotonic() + timeout_s
    while robot.status == "stopped" and time.monotonic() < deadline:  # published at its next tick
        time.sleep(0.01)


def _describe(cfg: DeployConfig) -> str:
    return {"checkpoint": str(cfg.checkpoint), "scripted": "the scripted policy",
            "replay": f"the episodes of {cfg.replay}"}[cfg.policy]


def deploy(cfg: DeployConfig, on_connect: Callable[[Any], None] | None = None,
           print_fn: Callable[[str], None] = print) -> dict[str, Any]:
    """Connect, run ``cfg.episodes`` episodes, disconnect; returns the summary (module docstring).

    ``on_connect(robot)`` runs once the robot is connected (tests use it to inject e-stops).
    A KeyboardInterrupt is re-raised after the robot was held and disconnected; the partial
    summary is then in ``deploy.last_summary``. With ``cfg.record`` every finished episode is
    appended to that store (:mod:`.record`); an interrupted one is dropped.
    """
    from vlastack.rollout.record import EpisodeRecorder, RecordError, ReplayPolicy

    policy, inputs = None, None
    if cfg.policy == "checkpoint":
        import torch

        torch.set_num_threads(cfg.torch_threads)  # leave cores to the controller (and a simulation)
        try:
            from vlastack.rollout.policy_adapters import load_policy_for

            policy = load_policy_for(cfg.checkpoint, cfg.runtime, cfg.device, dict(cfg.sampling or {}))
        except (FileNotFoundError, PolicyAdapterError, ImportError) as e:
            raise DeployError(str(e)) from None
        inputs = policy.inputs()
    robot, camera_map = build_robot(cfg.robot, inputs, cfg.task)
    if inputs is not None:
        check_inputs(inputs, robot, camera_map)
    elif camera_map:
        raise DeployError("robot.camera_map: only a checkpoint's cameras are mapped (policy=checkpoint)")
    executor_name, executor_options = cfg.executor, dict(cfg.executor_options or {})
    try:
        if cfg.policy == "replay":  # one chunk per stored episode, played whole
            policy = ReplayPolicy(cfg.replay, robot.spec)
            executor_name, executor_options = "receding", {}
        recorder = EpisodeRecorder(cfg.record, robot.spec, source=f"deploy:{cfg.policy}") if cfg.record else None
    except RecordError as e:
        raise DeployError(str(e)) from None
    try:
        executor = make_executor(executor_name, **executor_options)
    except ExecutorError as e:
        raise DeployError(str(e)) from None
    summary: dict[str, Any] = {"robot": robot.name, "policy": cfg.policy, "checkpoint": cfg.checkpoint,
                               "executor": executor.describe(), "fps": robot.fps,
                               "rate_hz": robot.config.rate_hz, "record": cfg.record, "episodes": []}
    deploy.last_summary = summary
    latencies: list[float] = []  # every chunk of the run: summary["obs_to_action"]
    estop_signal = EstopSignal()
    robot.connect()
    try:
        estop_signal.install()
        if on_connect is not None:
            on_connect(robot)
        if cfg.policy == "scripted":
            policy = _scripted_policy(robot, cfg)
        elif cfg.policy == "checkpoint":
            policy = as_policy(policy)
        instruction = cfg.task or robot.instruction
        if not instruction:
            raise DeployError("task: required for this robot (it has no task of its own), e.g. task=\"pick the cup\"")
        robot.instruction = instruction
        print_fn(f"deploying {_describe(cfg)} on {robot.name}: "
                 f"{robot.fps:g} Hz actions, controller at {robot.config.rate_hz:g} Hz ({robot.config.action_mode} mode), "
                 f"task {instruction!r}; Ctrl-C stops")
        if cfg.warmup and cfg.policy == "checkpoint":
            t0 = time.perf_counter()
            env = RobotDeployEnv(robot, cfg.lookahead_s, camera_map)
            from vlastack.rollout.episode import ObservationHistory

            hist = ObservationHistory(inputs.n_obs, inputs.cameras)
            hist.reset(env._observe(), instruction)
            policy.sample_actions(hist.observation())
            summary["warmup_ms"] = round((time.perf_counter() - t0) * 1e3, 1)
        per_episode_scene = bool(getattr(robot, "resets_every_episode", False))
        for ep in range(cfg.episodes):
            seed = cfg.seed + ep
            if ep > 0 or per_episode_scene:
                if callable(getattr(robot, "reset_scene", None)):
                    _reset_scene(robot, seed)
                    if not cfg.task:  # the scene's own instruction for this episode (the kitchen's)
                        instruction = robot.instruction
                elif cfg.wait_for_operator:
                    input(f"episode {ep}: reset the scene, then press Enter (Ctrl-C stops) ")
            env = RobotDeployEnv(robot, cfg.lookahead_s, camera_map, recorder, estop_signal.requested)
            if recorder is not None:
                recorder.start()
            probe = LatencyProbe(executor, env)
            res = run_episode(env, policy, probe, max_steps=cfg.max_steps, seed=seed,
                              n_obs=inputs.n_obs if inputs else 1, cameras=list(inputs.cameras) if inputs else None,
                              instruction=instruction, rate_hz=robot.fps)
            if robot.status not in ("estop", "stopped"):
                robot.hold()
            doc = {**res.to_dict(), "reason": env.end_reason or res.reason, **timing_report(probe, env, robot)}
            latencies.extend(probe.latencies)
            if recorder is not None and (res.success or not cfg.record_success_only):
                doc["recorded_as"] = recorder.finish(instruction, res.success, {
                    "seed": seed, "reason": doc["reason"], "robot": robot.name, "policy": cfg.policy,
                    "checkpoint": cfg.checkpoint, "fps": robot.fps})
            summary["episodes"].append(doc)
            print_fn(format_episode(ep, doc))
            sim = callable(getattr(robot, "reset_scene", None))
            if env.end_reason and env.end_reason.startswith(("e-stop", "controller stopped")[:1 if sim else 2]):
                break  # (a simulated robot's stopped controller is reset before the next episode)
    except KeyboardInterrupt:
        summary["interrupted"] = True
        try:
            robot.hold()
        except RobotError:
            pass
        raise
    finally:
        estop_signal.restore()
        robot.disconnect()
        if recorder is not None:
            recorder.discard()  # an unfinished episode; the finished ones are committed
            summary["recorded_episodes"] = sum(e.get("recorded_as") is not None for e in summary["episodes"])
            recorder.close()
        eps = summary["episodes"]
        summary["success_rate"] = (sum(e["success"] for e in eps) / len(eps)) if eps else None
        summary["obs_to_action"] = _percentiles(latencies)
        if cfg.out:
            from vlastack.rollout.common import write_json_atomic

            write_json_atomic(Path(cfg.out), summary)
    return summary


deploy.last_summary = None


def format_episode(index: int, doc: Mapping[str, Any]) -> str:
    """One episode's result and timing figures as printed lines."""
    lat, jit = doc.get("obs_to_action", {}), doc.get("loop_jitter", {})
    lines = [f"episode {index}: {'SUCCESS' if doc['success'] else 'no success'} ({doc['reason']}) in {doc['steps']} "
             f"steps, {doc['wall_s']:.2f} s, {doc['policy_calls']} policy calls",
             f"  observation-to-action latency: p50 {lat.get('p50_ms', float('nan')):.1f} ms, "
             f"p99 {lat.get('p99_ms', float('nan')):.1f} ms (n={lat.get('n', 0)})",
             f"  action loop jitter: p50 {jit.get('p50_ms', float('nan')):.2f} ms, p99 {jit.get('p99_ms', float('nan')):.2f} ms "
             f"(period {doc.get('loop_period_ms', float('nan')):.1f} ms)"]
    cj = doc.get("controller_jitter")
    if cj:
        lines.append(f"  controller tick jitter: p50 {cj['p50_ms']:.3f} ms, p99 {cj['p99_ms']:.3f} ms, "
                     f"max {cj['max_ms']:.3f} ms")
    c = doc.get("controller")
    if c:
        lines.append(f"  controller: {c['ticks']} ticks, {c['accepted']} actions, {c['stale']} stale dropped, "
                     f"{c['watchdog']} watchdog, {c['invalid']} invalid, {c['rate_limited']} rate-limited ticks")
    for sim in ("twin", "kitchen"):
        tw = doc.get(sim)
        if tw:
            lines.append(f"  {sim}: real-time factor {tw['rtf']:.2f}, {tw['dropped_commands']} commands dropped, "
                         f"{tw['frozen_frames']} frames frozen, {tw['slips']} slips")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ CLI


#: open dictionaries: ``scripted.infer_delay_s=0.05``, ``robot.camera_map={left:front}`` add keys there without
#: Hydra's ``+``
OPEN_KEYS = ("sampling.", "executor_options.", "scripted.", "robot.env", "robot.camera_map")
#: ``policy=scripted`` on the command line sets ``policy_kind`` (``policy`` is also the training configs' group)
REWRITE = hydra_app.overrides_rewriter(OPEN_KEYS, {"policy": "policy_kind"})


def compose_config(overrides: list[str]):
    """The composed Hydra config of ``configs/deploy.yaml`` with ``overrides`` (``policy=`` included)."""
    return hydra_app.compose("deploy", REWRITE(list(overrides)))


def config_from_hydra(hcfg) -> DeployConfig:
    """A :class:`DeployConfig` from the composed config."""
    from omegaconf import OmegaConf

    d = OmegaConf.to_container(hcfg, resolve=True)  # a missing value ("???") stays a placeholder here
    if "policy_kind" in d:  # the config's name for DeployConfig.policy
        d["policy"] = d.pop("policy_kind")
    known = set(DeployConfig.__dataclass_fields__)
    unknown = sorted(set(d) - known)
    if unknown:
        raise DeployError(f"unknown keys {unknown}; valid: {sorted(known)}")
    cfg = DeployConfig(**d)  # its own checks first (e.g. which policies drive which robots)
    missing = sorted(OmegaConf.missing_keys(hcfg))
    if missing:
        raise DeployError(f"{missing[0]}: required, e.g. vlastack deploy robot=ur robot.host=192.168.1.10 ...")
    return cfg


def command_job(hcfg) -> int:
    """One ``vlastack deploy`` job: deploy, print the figures; 130 on Ctrl-C, 1 if an episode ended in an e-stop."""
    cfg = config_from_hydra(hcfg)
    try:
        with sigterm_as_interrupt():  # kill / systemd / docker stop: the same clean stop as Ctrl-C
            summary = deploy(cfg)
    except KeyboardInterrupt:
        print("\ninterrupted: the arm was held and the controller stopped cleanly", file=sys.stderr)
        return 130
    rate = summary["success_rate"]
    print(f"success: {sum(e['success'] for e in summary['episodes'])}/{len(summary['episodes'])}"
          + (f" ({rate:.0%})" if rate is not None else ""))
    if summary.get("record"):
        print(f"recorded {summary['recorded_episodes']} episodes into {summary['record']}")
    return 0 if summary["episodes"] and not any(e["reason"].startswith(("e-stop", "controller stopped"))
                                                for e in summary["episodes"]) else 1


COMMAND = hydra_app.Command("deploy", run=command_job, check=config_from_hydra, rewrite=REWRITE,
                            errors=(DeployError, RobotConfigError, RobotError, ValueError))


def main(argv: list[str] | None = None) -> int:
    """``vlastack deploy [Hydra flags and overrides]``: a Hydra app (:mod:`vlastack.hydra_app`); returns the exit
    code (2 on bad settings)."""
    return hydra_app.run(COMMAND, argv)

