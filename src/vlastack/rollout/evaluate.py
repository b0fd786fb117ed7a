"""Simulation evaluation: a policy over tasks x seeds x episodes, in parallel env worker processes.

``vlastack eval checkpoint=RUN/checkpoints/last env=kitchen tasks=[OpenDrawer,CloseDrawer] episodes=50
out=DIR`` (a Hydra app over ``configs/eval.yaml``; protocol presets in ``configs/eval/``), or
``policy=expert`` instead of a checkpoint: the suite's scripted expert wrapped as a policy, run
through the same path (it checks the harness: it must reach the expert's own success). From
Python, :func:`evaluate` takes an :class:`EvalConfig`, a composed config or a list of overrides and
returns the ``eval_info.json`` document (what the training loop calls in-loop).

- Episodes: for every task and every seed group ``s`` in ``seeds``, episode ``k`` (0 .. episodes-1)
  resets the env with seed ``s + k``; the policy's sampling noise is seeded by the same number, so
  an episode is a pure function of (checkpoint, settings, task, seed) whichever worker runs it.
  The default seed group (100000) keeps evaluation away from the seeds demos are collected with.
- Workers: ``workers`` spawned processes, one env each (rebuilt when the task changes), the policy
  loaded once per worker; a worker that dies is replaced (``common.run_pool``; Ray actors with ``launcher=ray``). ``workers=0`` runs
  in this process.
- Inputs: the policy's declared cameras, image size and state decide the env's observation config
  (MetaWorld's state layout is picked by its dimension); cameras, sizes, state and action dims the
  env does not offer are refused before any worker starts, with the valid choices.
- Outputs in ``out``: ``eval_info.json`` (every episode: task, seed, success, steps, return, wall
  time, instruction, video; per-task / overall / per-seed success with a 95% Wilson interval; the
  runs' timings), rewritten atomically after every episode; ``videos/<task>/seed_<seed>.mp4`` for
  the first ``videos`` episodes of each task with the instruction drawn on; ``eval_success.png``
  (bars with interval whiskers); ``eval_summary.md``; ``eval.yaml`` (the resolved config).
- Resume: a rerun with the same ``out`` skips the (task, seed) episodes already in
  ``eval_info.json``; settings that change results (policy, executor, sampling, env) must match.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from vlastack import hydra_app
from vlastack.envs import registry
from vlastack.rollout.common import compose, quiet_simulator_logs, rich_progress
from vlastack.rollout.common import check_launcher, launch, save_figure_atomic, write_json_atomic
from vlastack.rollout.executors import EXECUTORS, ExecutorError, make_executor
from vlastack.rollout.language import (LANGUAGE_MODES, InstructionOverride, LanguageError, instruction_for,
                                       load_instructions, swap_markdown, swap_summary, swap_tasks)
from vlastack.rollout.policy_adapters import (ExpertPolicy, PolicyAdapterError, PolicyInputs, observation_for,
                                              policy_inputs, resolve_checkpoint, resolve_sampling)
from vlastack.rollout.stats import success_summary

INFO_FILE = "eval_info.json"
SUMMARY_FILE = "eval_summary.md"
PLOT_FILE = "eval_success.png"
CONFIG_FILE = "eval.yaml"
POLICY_KINDS = ("checkpoint", "expert")
#: evaluation seeds start here by default: far from the seeds 0, 1, ... that ``collect`` uses for demos
DEFAULT_SEED = 100_000
#: fault injection (tests): a worker given episode "<task>:<seed>" exits abruptly, like a segfault.
FAULT_ENV = "VLASTACK_EVAL_FAULT"
#: settings that change an episode's outcome; a resumed ``out`` must agree on all of them
RESULT_KEYS = ("suite", "policy", "checkpoint", "weights", "executor", "n_action_steps", "executor_options",
               "sampling", "max_steps", "cameras", "image_size", "env_kwargs", "device", "language", "instructions",
               "runtime")
#: convenience keys of eval.yaml / collect.yaml that go into the env's keyword arguments when set
ENV_SHORTCUTS = ("scene", "group", "split")


class EvalError(ValueError):
    """Bad evaluation settings or inputs the env cannot provide; the message says what to change."""


class EvalRunError(RuntimeError):
    """Episodes raised during the run (the policy or the env failed); finished episodes are kept."""


# ---------------------------------------------------------------------------------- config


@dataclass
class EvalConfig:
    """What to evaluate, how and where (see the module docstring). ``tasks`` may be "all" or "MT10"."""

    # what
    suite: str
    tasks: Sequence[str] | str
    checkpoint: str | None = None  # a checkpoint dir, a `last` pointer or a run dir (policy=checkpoint)
    policy: str | None = None      # checkpoint | expert (None: checkpoint)
    # protocol
    episodes: int = 50             # per task and seed group
    seeds: Sequence[int] | int = (DEFAULT_SEED,)  # seed groups: episode k of group s resets with seed s + k
    max_steps: int | None = None   # per-episode cap; None: the env's horizon
    # execution
    executor: str = "receding"     # receding | ensemble | async (rollout.executors)
    n_action_steps: int | None = 8  # actions run per chunk (receding, async); None: the whole chunk
    executor_options: dict[str, Any] = field(default_factory=dict)  # e.g. {coeff: 0.01} for ensemble
    sampling: dict[str, Any] = field(default_factory=dict)  # sample_actions overrides, e.g. {vision_steps: 8}
    device: str = "auto"           # auto | cpu | cuda[:i]
    runtime: str = "torch"         # torch | onnxruntime (onnx) | openvino (an export folder) | cudagraphs
    # where
    out: str = ""
    overwrite: bool = False
    # how
    workers: int = 2
    launcher: str = "process"      # process | ray (workers as Ray actors; see docs/scale.md)
    ray_address: str | None = None  # an existing cluster (auto, ray://head:10001); None: RAY_ADDRESS or local
    torch_threads: int = 1         # per worker
    max_errors: int = 3            # stop scheduling after this many episodes raised
    check_policy: bool = True      # load the checkpoint here and plan one chunk before workers start
    # env (None: what the policy reads; the expert: the suite's defaults)
    cameras: Sequence[str] | None = None
    image_size: Sequence[int] | None = None
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    # language protocols (rollout.language)
    language: str = "normal"       # normal | swap (every task of a group from the same starts) | blank
    instructions: str | None = None  # JSON file task -> [phrasings] replacing the env's instructions
    # outputs
    videos: int = 2                # first N episodes of every task recorded
    progress: bool = True

    def __post_init__(self):
        if self.suite not in registry.SUITES:
            raise EvalError(f"env/suite: unknown {self.suite!r}; valid choices: {list(registry.SUITES)}")
        try:
            self.tasks = registry.resolve_tasks(self.suite, self.tasks)
        except registry.SuiteNotAvailable:
            raise
        except ValueError as e:
            raise EvalError(str(e)) from None
        if self.policy is None:
            self.policy = "checkpoint"
        if self.policy not in POLICY_KINDS:
            raise EvalError(f"policy: unknown {self.policy!r}; valid choices: {list(POLICY_KINDS)} "
                            "(a trained policy is given by checkpoint=PATH)")
        if self.policy == "checkpoint" and not self.checkpoint:
            raise EvalError("checkpoint: required, e.g. checkpoint=runs/x/checkpoints/last "
                            "(or policy=expert to evaluate the scripted expert)")
        if self.policy == "expert" and self.checkpoint:
            raise EvalError(f"policy=expert takes no checkpoint (got checkpoint={self.checkpoint!r}); drop one of them")
        if self.checkpoint is not None:
            self.checkpoint = os.fspath(self.checkpoint)
        _check_int(self.episodes, "episodes", 1, "episodes per task and seed group")
        seeds = [self.seeds] if isinstance(self.seeds, (int, np.integer)) and not isinstance(self.seeds, bool) \
            else list(self.seeds)
        if not seeds:
            raise EvalError("seeds: empty; give at least one seed group, e.g. seeds=[100000]")
        for s in seeds:
            _check_int(s, "seeds", 0, "seed group")
        seeds = [int(s) for s in seeds]
        if len(set(seeds)) != len(seeds):
            raise EvalError(f"seeds: repeated seed groups in {seeds}")
        ordered = sorted(seeds)
        for a, b in zip(ordered, ordered[1:]):
            if a + self.episodes > b:
                raise EvalError(f"seeds: groups {a} and {b} overlap with episodes={self.episodes} "
                                f"(group s uses seeds s .. s + episodes - 1); space them at least "
                                f"{self.episodes} apart")
        self.seeds = seeds
        if self.max_steps is not None:
            _check_int(self.max_steps, "max_steps", 1, "step cap (or null: the env's horizon)")
        if self.executor not in EXECUTORS:
            raise EvalError(f"executor: unknown {self.executor!r}; valid choices: {sorted(EXECUTORS)}")
        if self.n_action_steps is not None:
            _check_int(self.n_action_steps, "n_action_steps", 1, "actions per chunk (or null: the whole chunk)")
        self.executor_options = dict(self.executor_options or {})
        self.sampling = dict(self.sampling or {})
        if self.policy == "expert" and self.sampling:
            raise EvalError(f"sampling: the scripted expert takes no sampling options, got {sorted(self.sampling)}")
        try:
            make_executor(self.executor, **executor_kwargs(self))
        except ExecutorError as e:
            raise EvalError(str(e)) from None
        if not isinstance(self.device, str) or not (self.device in ("auto", "cpu") or self.device.startswith("cuda")):
            raise EvalError(f"device: expected auto, cpu or cuda[:i], got {self.device!r}")
        from vlastack.policies.export import canonical_runtime

        try:
            self.runtime = canonical_runtime(self.runtime)
        except ValueError as e:
            raise EvalError(f"runtime: {e}") from None
        if self.runtime != "torch" and self.policy == "expert":
            raise EvalError(f"runtime={self.runtime} runs a checkpoint; policy=expert takes none")
        if not self.out or not isinstance(self.out, (str, os.PathLike)):
            raise EvalError("out: required, the directory for eval_info.json, videos and the summary, "
                            "e.g. out=runs/eval")
        self.out = os.fspath(self.out)
        _check_int(self.workers, "workers", 0, "worker processes (0 runs in this process)")
        _check_int(self.torch_threads, "torch_threads", 1, "torch threads per worker")
        try:
            check_launcher(self.launcher)
        except ValueError as e:
            raise EvalError(str(e)) from None
        _check_int(self.max_errors, "max_errors", 1, "episodes allowed to raise before the run stops")
        _check_int(self.videos, "videos", 0, "episodes recorded per task")
        if self.cameras is not None:
            self.cameras = [self.cameras] if isinstance(self.cameras, str) else [str(c) for c in self.cameras]
            if not self.cameras:
                raise EvalError("cameras: empty; give camera names or null (the policy's)")
        if self.image_size is not None:
            try:
                self.image_size = [int(s) for s in self.image_size]
            except (TypeError, ValueError):
                raise EvalError(f"image_size: expected [height, width], got {self.image_size!r}") from None
            if len(self.image_size) != 2 or min(self.image_size) < 1:
                raise EvalError(f"image_size: expected [height, width] of positive ints, got {self.image_size!r}")
        self.env_kwargs = dict(self.env_kwargs or {})
        if self.language not in LANGUAGE_MODES:
            raise EvalError(f"language: unknown {self.language!r}; valid choices: {list(LANGUAGE_MODES)}")
        try:
            if self.language == "swap":
                if self.suite != "kitchen":
                    raise LanguageError(f"language=swap needs the kitchen's task groups (env=kitchen), got env={self.suite}")
                group, self.tasks = swap_tasks(self.tasks, self.env_kwargs)
                self.env_kwargs.update(scene="group", group=group)
            self.phrasings = load_instructions(self.instructions, self.tasks) if self.instructions else None
        except LanguageError as e:
            raise EvalError(str(e)) from None
        if self.phrasings and self.language == "blank":
            raise EvalError("instructions: language=blank gives every episode an empty instruction; drop one of them")
        for key in ("overwrite", "check_policy", "progress"):
            if not isinstance(getattr(self, key), bool):
                raise EvalError(f"{key}: expected true or false, got {getattr(self, key)!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        d = dataclasses.asdict(self)
        d["tasks"], d["seeds"] = list(self.tasks), list(self.seeds)
        d["phrasings"] = self.phrasings
        return d


def _check_int(v: Any, key: str, low: int, what: str) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
        raise EvalError(f"{key}: expected an int >= {low} ({what}), got {v!r}")


def executor_kwargs(cfg: EvalConfig) -> dict[str, Any]:
    """The executor's keyword options: ``executor_options`` plus ``n_action_steps`` where it applies."""
    import inspect

    kw = dict(cfg.executor_options)
    params = inspect.signature(EXECUTORS[cfg.executor].__init__).parameters
    if "n_action_steps" in params and "n_action_steps" not in kw:
        kw["n_action_steps"] = cfg.n_action_steps
    return kw


# ---------------------------------------------------------------------------------- the plan (main side)


@dataclass
class _Plan:
    """Everything resolved and checked before any worker starts."""

    cfg: EvalConfig
    checkpoint: str | None     # resolved checkpoint directory
    policy_name: str           # "expert" or the checkpoint's policy name
    inputs: PolicyInputs | None
    cameras: list[str]         # cameras the env renders
    image_size: list[int]
    env_kwargs: dict[str, Any]
    n_obs: int
    video_cameras: list[str]
    fps: float
    sampling: dict[str, Any]
    device: str
    notes: list[str]
    loaded: Any = None         # the policy loaded for the dry run (reused when workers=0)

    def settings(self) -> dict[str, Any]:
        """The settings that change results (compared on resume)."""
        c = self.cfg
        return {"suite": c.suite, "policy": self.policy_name, "checkpoint": self.checkpoint,
                "weights": weights_digest(self.checkpoint), "executor": c.executor,
                "n_action_steps": c.n_action_steps, "executor_options": c.executor_options,
                "sampling": self.sampling, "max_steps": c.max_steps, "cameras": self.cameras,
                "image_size": self.image_size, "env_kwargs": self.env_kwargs, "device": self.device,
                "language": None if c.language == "normal" else c.language, "instructions": c.phrasings,
                **({"runtime": c.runtime} if c.runtime != "torch" else {})}


def _read_checkpoint_config(path: str):
    """(policy name, config object) of a checkpoint without building its network."""
    from vlastack.policies.base import policy_class
    from vlastack.policies.checkpoint import read_meta

    try:
        meta = read_meta(path)
    except (OSError, ValueError) as e:
        raise EvalError(f"checkpoint: {e}") from None
    name = meta.type
    try:
        cls = policy_class(name)
        return name, cls, cls.config_class.from_dict(meta.config)
    except (ValueError, TypeError) as e:
        raise EvalError(f"checkpoint {path}: {e}") from None


def _metaworld_state_layout(state_dim: int, kwargs: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """MetaWorld's state layout with ``state_dim`` elements (the policy decides); raises if none has it."""
    from vlastack.envs.metaworld import STATE_LAYOUTS

    dims = {name: len(names) for name, names in STATE_LAYOUTS.items()}
    have = kwargs.get("state", "full")
    if dims.get(have) == state_dim:
        return kwargs, None
    match = [n for n, d in dims.items() if d == state_dim]
    if not match:
        raise EvalError(f"policy reads observation.state of dim {state_dim}; metaworld offers the layouts {dims} "
                        "(env.kwargs.state)")
    return {**kwargs, "state": match[0]}, f"metaworld state layout {match[0]!r} ({state_dim}-D) chosen for the policy"


def _device(name: str) -> str:
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def plan(cfg: EvalConfig) -> _Plan:
    """Resolve the policy and the env's observation config and check them against each other.

    Builds one env (the first task) in this process and resets it once; raises :class:`EvalError`
    naming the problem and the valid choices.
    """
    notes: list[str] = []
    loaded = None
    env_kwargs = dict(cfg.env_kwargs)
    if cfg.policy == "expert":
        checkpoint, name, inputs, sampling = None, "expert", None, {}
        cameras = list(cfg.cameras) if cfg.cameras is not None else None
        image_size = list(cfg.image_size) if cfg.image_size is not None else [128, 128]
        n_obs, device = 1, "cpu"
    else:
        try:
            checkpoint = resolve_checkpoint(cfg.checkpoint)
        except FileNotFoundError as e:
            raise EvalError(str(e)) from None
        name, cls, pcfg = _read_checkpoint_config(checkpoint)
        try:
            inputs = policy_inputs(pcfg)
            sampling = resolve_sampling(cls, cfg.sampling)
        except PolicyAdapterError as e:
            raise EvalError(str(e)) from None
        cameras = list(inputs.cameras)
        if cfg.cameras is not None:
            missing = [c for c in inputs.cameras if c not in cfg.cameras]
            if missing:
                raise EvalError(f"cameras: {list(cfg.cameras)} lacks {missing}, which the policy reads "
                                f"(it reads {list(inputs.cameras)}); add them or use cameras=null")
            cameras = list(cfg.cameras)
        if cfg.image_size is not None and tuple(cfg.image_size) != tuple(inputs.image_size):
            raise EvalError(f"image_size: {list(cfg.image_size)}, but the policy reads {list(inputs.image_size)}; "
                            "use image_size=null (the policy's)")
        image_size = list(inputs.image_size)
        n_obs, device = inputs.n_obs, _device(cfg.device) if cfg.runtime in ("torch", "cudagraphs") else "cpu"
        if cfg.suite == "metaworld" and inputs.state_dim:
            env_kwargs, note = _metaworld_state_layout(inputs.state_dim, env_kwargs)
            if note:
                notes.append(note)
    quiet_simulator_logs(cfg.suite)
    task, seed = cfg.tasks[0], cfg.seeds[0]
    try:
        env = registry.make_env(cfg.suite, task, seed=seed, cameras=cameras, image_size=image_size, **env_kwargs)
    except (ValueError, TypeError) as e:  # bad camera, size or env option: named by the suite
        what = f" (the policy reads cameras {cameras} at {image_size})" if inputs is not None else ""
        raise EvalError(f"env ({cfg.suite}, {task}): {e}{what}") from e
    try:
        env_kwargs = _with_env_defaults(env, env_kwargs)
        spec = env.data_spec
        env_cameras = list(spec.cameras)
        if inputs is not None:
            obs, _ = env.reset(seed=seed)
            problems = observation_for(inputs, obs)
            d_a = spec.action_dim
            if d_a != inputs.action_dim:
                problems.append(f"action: the env takes {d_a}-D actions ({spec.action_space.layout}), "
                                f"the policy outputs {inputs.action_dim}-D")
            if problems:
                raise EvalError(f"policy {name} ({checkpoint}) does not fit env {cfg.suite}/{task}: "
                                + "; ".join(problems))
            if cfg.check_policy or cfg.workers == 0:
                loaded = _dry_run(checkpoint, sampling, device, inputs, obs, seed, cfg.runtime)
        else:
            registry.make_expert(cfg.suite, task, env)  # the suite has an expert for it
        fps = float(spec.fps)
    finally:
        env.close()
    cameras = cameras if cameras is not None else env_cameras
    video_cameras = list(inputs.cameras) if inputs is not None else list(cameras)
    return _Plan(cfg=cfg, checkpoint=checkpoint, policy_name=name, inputs=inputs, cameras=list(cameras),
                 image_size=list(image_size), env_kwargs=env_kwargs, n_obs=n_obs, video_cameras=video_cameras,
                 fps=fps, sampling=sampling, device=device, notes=notes, loaded=loaded)


def _with_env_defaults(env: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` completed with the env class's own keyword defaults, so equal envs compare equal on resume
    whether an option was given or left at its default."""
    import inspect

    base = getattr(env, "unwrapped", env)
    try:
        params = inspect.signature(type(base).__init__).parameters
    except (TypeError, ValueError):
        return dict(kwargs)
    skip = {"self", "task", "seed", "cameras", "image_size"}
    defaults = {n: p.default for n, p in params.items() if n not in skip and p.default is not inspect.Parameter.empty
                and (p.default is None or isinstance(p.default, (bool, int, float, str)))}
    return {**defaults, **kwargs}


def _dry_run(checkpoint: str, sampling: dict[str, Any], device: str, inputs: PolicyInputs, obs: Mapping[str, Any],
             seed: int, runtime: str = "torch"):
    """Load the checkpoint here and plan one chunk from the env's first observation (a clear error now,
    not one per worker later); returns the loaded policy."""
    from vlastack.rollout.episode import ObservationHistory, _chunk_actions
    from vlastack.rollout.executors import check_chunk
    from vlastack.rollout.policy_adapters import load_policy_for

    try:
        policy = load_policy_for(checkpoint, runtime, device, sampling)
    except Exception as e:  # noqa: BLE001 - any load failure is a bad checkpoint for the user
        raise EvalError(f"checkpoint {checkpoint}: cannot load it ({type(e).__name__}: {e})") from e
    history = ObservationHistory(inputs.n_obs, inputs.cameras)
    try:
        history.reset(obs)
        policy.reset(seed)
        chunk = check_chunk(_chunk_actions(policy.sample_actions(history.observation())))  # (H, D_a)
    except Exception as e:  # noqa: BLE001 - e.g. sampling options the policy refuses
        raise EvalError(f"policy {checkpoint}: sample_actions failed on the env's first observation with "
                        f"sampling {sampling} ({type(e).__name__}: {e})") from e
    if chunk.shape[1] != inputs.action_dim:
        raise EvalError(f"policy {checkpoint}: chunks of {chunk.shape[1]}-D actions, its config says "
                        f"{inputs.action_dim}")
    return policy


# ---------------------------------------------------------------------------------- worker side

_WORKER: dict[str, Any] = {"policy": None, "env_key": None, "env": None, "expert": None}


def _init_worker(policy_spec: dict[str, Any]) -> None:
    """Worker initializer: threads, quiet logs and the policy, loaded once per process."""
    import torch

    torch.set_num_threads(int(policy_spec.get("torch_threads", 1)))
    quiet_simulator_logs(policy_spec["suite"])
    _WORKER.update(policy=None, env_key=None, env=None, expert=None)
    if policy_spec["kind"] == "checkpoint":
        from vlastack.rollout.policy_adapters import load_policy_for

        _WORKER["policy"] = load_policy_for(policy_spec["path"], policy_spec.get("runtime", "torch"),
                                            policy_spec["device"], policy_spec["sampling"])


class _ReturnTracker:
    """An env wrapper summing rewards over the episode (``total``); everything else passes through."""

    def __init__(self, env: Any):
        self.env, self.total = env, 0.0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Reset the env and the sum."""
        self.total = 0.0
        return self.env.reset(seed=seed, options=options)

    def step(self, action: np.ndarray):
        """Step the env and add its reward."""
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.total += float(reward)
        return obs, reward, terminated, truncated, info

    def __getattr__(self, name: str):
        return getattr(self.env, name)


def _env_for(job: dict) -> Any:
    """The process's env for ``job``'s task (rebuilt when the task or settings change)."""
    key = json.dumps([job["suite"], job["task"], job["cameras"], job["image_size"], job["env_kwargs"]],
                     sort_keys=True, default=str)
    if _WORKER["env_key"] != key:
        _close_worker_env()
        env = registry.make_env(job["suite"], job["task"], seed=job["seed"], cameras=job["cameras"],
                                image_size=job["image_size"], **job["env_kwargs"])
        expert = registry.make_expert(job["suite"], job["task"], env) if job["policy_kind"] == "expert" else None
        _WORKER.update(env_key=key, env=env, expert=expert)
    return _WORKER["env"]


def _close_worker_env() -> None:
    if _WORKER["env"] is not None:
        try:
            _WORKER["env"].close()
        except Exception:  # noqa: BLE001 - closing a broken env
            pass
    _WORKER.update(env_key=None, env=None, expert=None)


def run_job(job: dict) -> dict[str, Any]:
    """Worker entry: one evaluation episode; an exception comes back as ``error``, not raised."""
    from vlastack.rollout.episode import run_episode
    from vlastack.rollout.video import EpisodeRecorder, write_episode_video

    out = {"task": job["task"], "seed": job["seed"], "seed_group": job["seed_group"], "episode": job["episode"]}
    if os.environ.get(FAULT_ENV) == f"{job['task']}:{job['seed']}":  # fault injection for tests
        os._exit(3)
    try:
        env = _env_for(job)
        policy = ExpertPolicy(_WORKER["expert"], env) if job["policy_kind"] == "expert" else _WORKER["policy"]
        if policy is None:
            raise RuntimeError("the worker has no policy (initializer not run)")
        tracked = _ReturnTracker(env if job.get("instruction") is None else InstructionOverride(env, job["instruction"]))
        recorder = EpisodeRecorder(job["video_cameras"]) if job["video"] else None
        res = run_episode(tracked, policy, make_executor(job["executor"], **job["executor_kwargs"]),
                          max_steps=job["max_steps"], seed=job["seed"], n_obs=job["n_obs"],
                          cameras=job["policy_cameras"], observers=[recorder] if recorder else (),
                          allow_blank_instruction=job.get("instruction") == "")
        out.update(success=bool(res.success), steps=int(res.steps), reason=res.reason,
                   **{"return": round(tracked.total, 6)}, wall_s=round(res.wall_s, 4),
                   instruction=res.instruction, policy_calls=res.policy_calls,
                   inference_s=round(res.inference_s, 4), executor=res.executor, video=None)
        if recorder is not None:
            write_episode_video(job["video_path"], recorder, res.instruction, job["fps"])
            out["video"] = job["video_rel"]
    except Exception as e:  # noqa: BLE001 - reported by the main process
        out.update(error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc(limit=10))
        _close_worker_env()  # a broken env is not reused
    return out


def _crashed(job: dict) -> dict[str, Any]:
    return {"task": job["task"], "seed": job["seed"], "seed_group": job["seed_group"], "episode": job["episode"],
            "error": "the worker process died (twice on this episode)"}


# ---------------------------------------------------------------------------------- the run (main side)


def weights_digest(checkpoint: str | None) -> str | None:
    """SHA-256 of a checkpoint's weights file: a run retrained into the same path is not resumed into."""
    if checkpoint is None:
        return None
    from vlastack.policies.base import WEIGHTS_FILE

    h = hashlib.sha256()
    with open(Path(checkpoint, WEIGHTS_FILE), "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _load_previous(out: Path, settings: dict[str, Any], overwrite: bool) -> tuple[list[dict], list[dict]]:
    """(episodes, runs) already in ``out/eval_info.json``; raises if its settings differ from ``settings``."""
    path = out / INFO_FILE
    if overwrite or not path.exists():
        return [], []
    try:
        prev = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise EvalError(f"out: {path} is unreadable ({e}); use overwrite=true or another out") from None
    old = prev.get("settings", {})
    diff = [k for k in RESULT_KEYS if _norm(old.get(k)) != _norm(settings.get(k))]
    if diff:
        shown = "; ".join(f"{k}: {old.get(k)!r} then, {settings.get(k)!r} now" for k in diff)
        raise EvalError(f"out: {out} holds an evaluation with other settings ({shown}); resume needs the same "
                        "settings: use another out, or overwrite=true to start again")
    return list(prev.get("episodes", [])), list(prev.get("runs", []))


def _norm(v: Any) -> Any:
    return json.loads(json.dumps(v, sort_keys=True, default=str))


def overall_success(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The overall success block of an ``eval_info.json`` document (``summary.overall``: successes, episodes,
    success_rate, ci_low, ci_high, ...); KeyError naming what is missing in anything else."""
    try:
        return doc["summary"]["overall"]
    except (KeyError, TypeError):
        raise KeyError(f"not an {INFO_FILE} document: no summary.overall") from None


def summarize(episodes: Sequence[Mapping[str, Any]], tasks: Sequence[str], seeds: Sequence[int],
              confidence: float = 0.95) -> dict[str, Any]:
    """Per-task, overall and per-seed-group success (Wilson interval) plus mean steps / return / wall time."""

    def block(eps: list) -> dict[str, Any]:
        s = success_summary(eps, confidence)
        s["mean_return"] = float(np.mean([e["return"] for e in eps])) if eps else 0.0
        s["mean_wall_s"] = float(np.mean([e["wall_s"] for e in eps])) if eps else 0.0
        return s

    per_task = {t: block([e for e in episodes if e["task"] == t]) for t in tasks}
    doc: dict[str, Any] = {"per_task": per_task, "overall": block(list(episodes))}
    if len(seeds) > 1:
        per_seed = {str(s): block([e for e in episodes if e["seed_group"] == s]) for s in seeds}
        rates = [b["success_rate"] for b in per_seed.values() if b["episodes"]]
        doc["per_seed"] = per_seed
        doc["across_seeds"] = {"mean": float(np.mean(rates)) if rates else 0.0,
                               "std": float(np.std(rates, ddof=1)) if len(rates) > 1 else 0.0}
    return doc


def _video_rel(task: str, seed: int) -> str:
    return f"videos/{task}/seed_{seed}.mp4"


def evaluate(cfg: EvalConfig | Mapping[str, Any] | Sequence[str], hydra_cfg: Any = None) -> dict[str, Any]:
    """Run (or resume) the evaluation ``cfg`` and write its outputs; returns the ``eval_info.json`` document.

    ``cfg`` is an :class:`EvalConfig`, a composed config (DictConfig or dict shaped like
    ``configs/eval.yaml``) or a list of overrides (``["env=metaworld", "policy=expert", "out=..."]``).
    ``hydra_cfg`` (the composed config) is what ``eval.yaml`` records; by default the EvalConfig.
    """
    if isinstance(cfg, (list, tuple)):
        hydra_cfg = compose_config(cfg)
        cfg = config_from_hydra(hydra_cfg)
    elif not isinstance(cfg, EvalConfig):
        hydra_cfg = cfg if hydra_cfg is None else hydra_cfg
        cfg = config_from_hydra(cfg)
    p = plan(cfg)
    out = Path(cfg.out)
    _check_out(out)
    settings = p.settings()
    previous, runs = _load_previous(out, settings, cfg.overwrite)
    out.mkdir(exist_ok=True)
    if cfg.overwrite:
        import shutil

        for name in (INFO_FILE, SUMMARY_FILE, PLOT_FILE):
            if (out / name).exists():
                (out / name).unlink()
        shutil.rmtree(out / "videos", ignore_errors=True)
    _write_config(out / CONFIG_FILE, cfg, hydra_cfg)
    return _run(p, out, settings, previous, runs)


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise EvalError(f"out: {out} exists and is not a directory")
    if not out.parent.is_dir():
        raise EvalError(f"out: parent directory {out.parent} does not exist")


def _write_config(path: Path, cfg: EvalConfig, hydra_cfg: Any) -> None:
    from omegaconf import DictConfig, OmegaConf

    if isinstance(hydra_cfg, DictConfig):
        text = OmegaConf.to_yaml(hydra_cfg, resolve=True)
    else:
        text = OmegaConf.to_yaml(OmegaConf.create(cfg.to_dict()))
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _run(p: _Plan, out: Path, settings: dict, previous: list[dict], runs: list[dict]) -> dict[str, Any]:
    cfg = p.cfg
    order = {t: i for i, t in enumerate(cfg.tasks)}
    episodes: dict[tuple[str, int], dict] = {(e["task"], int(e["seed"])): e for e in previous}
    wanted = [(t, g, k) for t in cfg.tasks for g in cfg.seeds for k in range(cfg.episodes)]
    todo: list[dict] = []
    for t in cfg.tasks:
        for i, (g, k) in enumerate((g, k) for g in cfg.seeds for k in range(cfg.episodes)):
            seed = g + k
            if (t, seed) in episodes:
                continue
            video = i < cfg.videos
            todo.append({"suite": cfg.suite, "task": t, "seed": seed, "seed_group": g, "episode": k,
                         "instruction": instruction_for(cfg.language, cfg.phrasings, t, i),
                         "policy_kind": cfg.policy, "cameras": p.cameras, "image_size": p.image_size,
                         "env_kwargs": p.env_kwargs, "max_steps": cfg.max_steps, "n_obs": p.n_obs,
                         "policy_cameras": list(p.inputs.cameras) if p.inputs is not None else None,
                         "executor": cfg.executor, "executor_kwargs": executor_kwargs(cfg),
                         "video": video, "video_cameras": p.video_cameras, "fps": p.fps,
                         "video_rel": _video_rel(t, seed), "video_path": str(out / _video_rel(t, seed))})
    run = {"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "finished": None, "interrupted": False,
           "workers": cfg.workers, "episodes_run": 0, "env_steps": 0, "errors": [], "seconds": 0.0,
           "episodes_per_s": 0.0, "env_steps_per_s": 0.0}
    t0 = time.perf_counter()
    selected = {(t, g + k) for t, g, k in wanted}

    def document() -> dict[str, Any]:
        secs = time.perf_counter() - t0
        run.update(seconds=round(secs, 3),
                   episodes_per_s=round(run["episodes_run"] / secs, 4) if secs > 0 else 0.0,
                   env_steps_per_s=round(run["env_steps"] / secs, 2) if secs > 0 else 0.0)
        eps = sorted(episodes.values(), key=lambda e: (order.get(e["task"], len(order)), e["task"], int(e["seed"])))
        chosen = [e for e in eps if (e["task"], int(e["seed"])) in selected]
        summary = summarize(chosen, cfg.tasks, cfg.seeds)
        if cfg.language == "swap":
            summary["language_swap"] = swap_summary(chosen, cfg.tasks)
        return {"out": str(out), "policy": p.policy_name, "checkpoint": p.checkpoint, "suite": cfg.suite,
                "language": cfg.language, "instructions": cfg.phrasings,
                "tasks": list(cfg.tasks), "seeds": list(cfg.seeds), "episodes_per_seed": cfg.episodes,
                "complete": len(chosen) == len(selected), "settings": settings, "notes": p.notes,
                "config": cfg.to_dict(), "summary": summary,
                "episodes": eps, "runs": runs + [run]}

    def write() -> dict[str, Any]:
        doc = document()
        write_json_atomic(out / INFO_FILE, doc)
        return doc

    write()
    errors: list[dict] = []
    queue = list(todo)

    def next_job() -> dict | None:
        if len(errors) >= cfg.max_errors or not queue:
            return None
        return queue.pop(0)

    progress = rich_progress(cfg.progress)
    bars: dict[str, Any] = {}

    def note(task: str) -> str:
        eps = [e for (t, s), e in episodes.items() if t == task and (t, s) in selected]
        return f"success {sum(bool(e['success']) for e in eps)}/{len(eps)}"

    def handle(res: dict) -> None:
        if "error" in res:
            errors.append(res)
            run["errors"].append({k: res[k] for k in ("task", "seed", "error") if k in res})
        else:
            episodes[(res["task"], int(res["seed"]))] = res
            run["episodes_run"] += 1
            run["env_steps"] += int(res["steps"])
        write()
        progress.update(bars[res["task"]], advance=0 if "error" in res else 1, note=note(res["task"]))

    spec = {"kind": cfg.policy, "suite": cfg.suite, "path": p.checkpoint, "sampling": p.sampling,
            "device": p.device, "torch_threads": cfg.torch_threads, "runtime": cfg.runtime}
    interrupted = False
    with progress:
        per_task = cfg.episodes * len(cfg.seeds)
        for t in cfg.tasks:
            done = sum(1 for (tt, s) in episodes if tt == t and (tt, s) in selected)
            bars[t] = progress.add_task(t, total=per_task, completed=done, note=note(t))
        try:
            if not queue:
                pass
            elif cfg.workers == 0:
                saved = (_WORKER.copy(), _torch_threads())
                try:
                    _init_worker({**spec, "kind": "preloaded"})
                    if cfg.policy == "checkpoint":
                        _WORKER["policy"] = p.loaded
                    while (job := next_job()) is not None:
                        handle(run_job(job))
                finally:
                    _close_worker_env()
                    _WORKER.update(saved[0])
                    _set_torch_threads(saved[1])
            else:
                if p.loaded is not None:  # the workers load their own
                    p.loaded = None
                    if p.device.startswith("cuda"):
                        import torch

                        torch.cuda.empty_cache()
                launch(cfg.launcher, min(cfg.workers, len(queue)), run_job, next_job, handle, _crashed,
                       initializer=_init_worker, initargs=(spec,), ray_address=cfg.ray_address)
        except KeyboardInterrupt:
            interrupted = True
    run["interrupted"] = interrupted
    run["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    doc = write()
    write_reports(doc, out)
    if interrupted:
        raise KeyboardInterrupt
    if errors:
        first = errors[0]
        tb = first.get("traceback", "")
        raise EvalRunError(f"{len(errors)} episode(s) raised (the run stops after max_errors={cfg.max_errors}); "
                           f"the first, {first['task']} seed {first['seed']}: {first['error']}\n{tb}".rstrip())
    return doc


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _set_torch_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


# ---------------------------------------------------------------------------------- reports


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def summary_markdown(doc: Mapping[str, Any]) -> str:
    """The markdown summary table of an ``eval_info.json`` document."""
    s, st = doc["summary"], doc["settings"]
    who = doc["policy"] if doc["policy"] == "expert" else f"{doc['policy']} ({doc['checkpoint']})"
    ex = st["executor"] + (f", n_action_steps={st['n_action_steps']}" if st["executor"] != "ensemble" else "")
    if st["executor_options"]:
        ex += f", {st['executor_options']}"
    lines = [f"# Evaluation: {who}", "",
             f"- env: {doc['suite']}, cameras {st['cameras']} at {st['image_size'][0]}x{st['image_size'][1]}"
             + (f", {st['env_kwargs']}" if st["env_kwargs"] else ""),
             f"- executor: {ex}" + (f"; sampling {st['sampling']}" if st["sampling"] else ""),
             f"- episodes: {doc['episodes_per_seed']} per task and seed group, seed groups {doc['seeds']} "
             f"(episode k of group s resets with seed s + k)" + ("" if doc["complete"] else "; INCOMPLETE"),
             f"- success: Wilson {int(round(100 * s['overall']['confidence']))}% interval", ""]
    lines += ["| task | success | 95% CI | successes / episodes | mean steps | mean return |",
              "|---|---:|---:|---:|---:|---:|"]

    def row(name: str, b: Mapping[str, Any]) -> str:
        return (f"| {name} | {_pct(b['success_rate'])} | [{_pct(b['ci_low'])}, {_pct(b['ci_high'])}] | "
                f"{b['successes']} / {b['episodes']} | {b['mean_steps']:.1f} | {b['mean_return']:.2f} |")

    lines += [row(t, b) for t, b in s["per_task"].items()]
    lines.append(row("**overall**", s["overall"]))
    if "per_seed" in s:
        lines += ["", "| seed group | success | 95% CI | successes / episodes |", "|---|---:|---:|---:|"]
        lines += [f"| {g} | {_pct(b['success_rate'])} | [{_pct(b['ci_low'])}, {_pct(b['ci_high'])}] | "
                  f"{b['successes']} / {b['episodes']} |" for g, b in s["per_seed"].items()]
        a = s["across_seeds"]
        lines += ["", f"Across seed groups: {_pct(a['mean'])} +- {_pct(a['std'])} (mean +- std)"]
    if doc.get("language", "normal") != "normal":
        lines += ["", f"Language protocol: {doc['language']}"
                  + (" (every instruction blank: the control for the effect of language)"
                     if doc["language"] == "blank" else "")]
    if doc.get("instructions"):
        lines += ["", "Instructions replaced from a file (episode k of a task uses phrasing k mod n): "
                  + "; ".join(f"{t}: {len(v)} phrasings" for t, v in doc["instructions"].items())]
    if "language_swap" in s:
        lines += swap_markdown(s["language_swap"])
    lines += by_instruction_markdown(doc["episodes"], list(s["per_task"]))
    vids = [e for e in doc["episodes"] if e.get("video") and e["task"] in s["per_task"]]
    if vids:
        lines += ["", "Videos:", ""]
        lines += [f"- [{e['task']} seed {e['seed']}]({e['video']}): {'success' if e['success'] else 'failure'} "
                  f"in {e['steps']} steps, \"{e['instruction']}\"" for e in vids]
    run = doc["runs"][-1]
    lines += ["", f"Last run: {run['episodes_run']} episodes in {run['seconds']:.1f} s "
              f"({run['episodes_per_s']:.3f} episodes/s, {run['env_steps_per_s']:.1f} env steps/s) on "
              f"{run['workers']} worker(s)."]
    if doc.get("notes"):
        lines += [""] + [f"Note: {n}" for n in doc["notes"]]
    return "\n".join(lines) + "\n"


def by_instruction_markdown(episodes: Sequence[Mapping[str, Any]], tasks: Sequence[str]) -> list[str]:
    """Success per distinct instruction of every task evaluated under more than one (a task whose
    instructions name a variant, e.g. which burner, shows which variant fails); [] when none is."""
    counts: dict[str, dict[str, list[int]]] = {}  # task -> instruction -> [successes, episodes]
    for e in episodes:
        if e.get("task") in tasks and "success" in e and e.get("instruction") is not None:
            c = counts.setdefault(e["task"], {}).setdefault(e["instruction"] or "(blank)", [0, 0])
            c[0] += bool(e["success"])
            c[1] += 1
    rows = [(t, ins, k, n) for t in tasks for ins, (k, n) in sorted(counts.get(t, {}).items())
            if len(counts.get(t, {})) > 1]
    if not rows:
        return []
    return (["", "By instruction (tasks evaluated under several):", "",
             "| task | instruction | successes / episodes |", "|---|---|---:|"]
            + [f"| {t} | {ins.replace('|', '/')} | {k} / {n} |" for t, ins, k, n in rows])


def plot_success(doc: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Bar chart PNG of per-task (and overall) success with Wilson-interval whiskers."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    s = doc["summary"]
    names = list(s["per_task"]) + (["overall"] if len(s["per_task"]) > 1 else [])
    blocks = [s["per_task"][n] for n in s["per_task"]] + ([s["overall"]] if len(s["per_task"]) > 1 else [])
    rates = np.array([b["success_rate"] for b in blocks])  # (K,)
    lows, highs = np.array([b["ci_low"] for b in blocks]), np.array([b["ci_high"] for b in blocks])  # (K,)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.7 * len(names) + 2), 3.6), dpi=110)
    colors = ["#4C72B0"] * len(s["per_task"]) + (["#555555"] if len(names) > len(s["per_task"]) else [])
    x = np.arange(len(names))
    ax.bar(x, rates, color=colors)
    ax.vlines(x, lows, highs, color="black", linewidth=1.2)  # the interval's whiskers, drawn by hand:
    ax.hlines(np.r_[lows, highs], np.r_[x, x] - 0.12, np.r_[x, x] + 0.12, color="black", linewidth=1.2)  # caps
    for xi, b in zip(x, blocks):
        ax.text(xi, 1.02, f"{b['successes']}/{b['episodes']}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x, names, rotation=30 if len(names) > 3 else 0, ha="right" if len(names) > 3 else "center",
                  fontsize=8)
    ax.set_ylim(0, 1.12)
    ax.set_ylabel("success rate (95% Wilson CI)")
    ax.set_title(f"{doc['policy']} on {doc['suite']}", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return save_figure_atomic(fig, path)


def write_reports(doc: Mapping[str, Any], out: str | os.PathLike) -> None:
    """``eval_summary.md`` and ``eval_success.png`` beside ``eval_info.json``."""
    out = Path(out)
    tmp = out / (SUMMARY_FILE + ".tmp")
    tmp.write_text(summary_markdown(doc))
    os.replace(tmp, out / SUMMARY_FILE)
    plot_success(doc, out / PLOT_FILE)


def print_report(doc: Mapping[str, Any], file=None) -> None:
    """A per-task table with intervals, the overall line and the throughput."""
    from rich.console import Console
    from rich.table import Table

    file = file or sys.stdout
    s = doc["summary"]
    table = Table(title=f"eval {doc['policy']} on {doc['suite']} -> {doc['out']}")
    for col in ("task", "success", "95% CI", "episodes", "mean steps"):
        table.add_column(col, justify="left" if col == "task" else "right", no_wrap=True)
    for name, b in [*s["per_task"].items(), ("overall", s["overall"])]:
        table.add_row(name, _pct(b["success_rate"]), f"[{_pct(b['ci_low'])}, {_pct(b['ci_high'])}]",
                      f"{b['successes']}/{b['episodes']}", f"{b['mean_steps']:.1f}")
    Console(file=file).print(table)
    if "language_swap" in s:
        print(swap_markdown(s["language_swap"])[-1], file=file)
    run = doc["runs"][-1]
    print(f"this run: {run['episodes_run']} episodes, {run['env_steps']} env steps in {run['seconds']:.1f} s "
          f"({run['episodes_per_s']:.3f} episodes/s, {run['env_steps_per_s']:.1f} steps/s, {run['workers']} workers); "
          f"outputs: {doc['out']}/{{{INFO_FILE},{SUMMARY_FILE},{PLOT_FILE},{CONFIG_FILE},videos/}}", file=file)
    for n in doc.get("notes", []):
        print(f"note: {n}", file=file)


# ---------------------------------------------------------------------------------- Hydra entry


#: open dictionaries: ``sampling.vision_steps=8`` adds a key there without Hydra's ``+``
OPEN_KEYS = ("sampling.", "executor_options.", "env.kwargs.")
#: ``policy=expert`` on the command line sets ``policy_kind`` (``policy`` is also the training configs' group)
REWRITE = hydra_app.overrides_rewriter(OPEN_KEYS, {"policy": "policy_kind"})


def compose_config(overrides: Sequence[str] = ()):
    """The composed Hydra config of ``configs/eval.yaml`` with ``overrides`` (``policy=`` included)."""
    return compose("eval", REWRITE(list(overrides)))


def config_from_hydra(cfg: Any) -> EvalConfig:
    """A validated :class:`EvalConfig` from the composed config (a DictConfig or a dict of the same shape)."""
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import MissingMandatoryValue

    if isinstance(cfg, DictConfig):
        try:
            d = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
        except MissingMandatoryValue as e:
            key = getattr(e, "full_key", "") or str(e)
            raise EvalError(f"{key}: required; e.g. vlastack eval checkpoint=runs/x/checkpoints/last env=kitchen "
                            "tasks=[OpenDrawer] out=runs/x/eval") from None
    else:
        d = dict(cfg)
    if "policy_kind" in d:  # the config's name for EvalConfig.policy
        d["policy"] = d.pop("policy_kind")
    env = d.get("env") or {}
    known = {f.name for f in dataclasses.fields(EvalConfig)} - {"suite", "env_kwargs"}
    unknown = sorted(set(d) - known - {"env", *ENV_SHORTCUTS})
    if unknown:
        raise EvalError(f"unknown eval keys {unknown}; valid keys: {sorted(known | {'env'})}")
    kw = {k: d[k] for k in known if k in d}
    env_kwargs = dict(env.get("kwargs") or {})
    env_kwargs.update({k: d[k] for k in ENV_SHORTCUTS if d.get(k) is not None})
    if kw.get("policy") == "expert":  # the expert reads nothing: the env group's cameras and size apply
        for key in ("cameras", "image_size"):
            if kw.get(key) is None and env.get(key) is not None:
                kw[key] = env[key]
    return EvalConfig(suite=env.get("suite"), env_kwargs=env_kwargs, **kw)


def check_config(hcfg: Any) -> EvalConfig:
    """A valid :class:`EvalConfig` whose ``out`` can be a directory; runs before Hydra makes it."""
    cfg = config_from_hydra(hcfg)
    _check_out(Path(cfg.out))
    return cfg


def command_job(hcfg: Any) -> int:
    """One ``vlastack eval`` job: evaluate, print the table; 1 on a failed run, 130 on Ctrl-C.

    In a sweep (``-m``) whose ``out`` is not itself swept, job n writes to ``<out>/n`` (Hydra's job directory).
    """
    cfg = config_from_hydra(hcfg)
    job_dir = hydra_app.runtime_output_dir()
    if hydra_app.in_multirun() and job_dir is not None and job_dir.parent == Path(cfg.out).resolve():
        hcfg.out = cfg.out = str(job_dir)
    try:
        doc = evaluate(cfg, hydra_cfg=hcfg)
    except KeyboardInterrupt:
        print("\ninterrupted: finished episodes are kept in eval_info.json; rerun the same command to resume",
              file=sys.stderr)
        return 130
    except EvalRunError as e:
        print(f"vlastack eval: {e}", file=sys.stderr)
        return 1
    print_report(doc)
    return 0


def compare_multirun(root: Path, started: float = 0.0) -> list[dict[str, Any]]:
    """After ``vlastack eval -m ...``: the sweep's jobs (``<root>/<n>``, started after ``started``) side by side in
    ``<root>/multirun.json`` and ``<root>/multirun.md``; returns the rows."""
    from omegaconf import OmegaConf

    jobs = []
    for d in sorted((p for p in root.iterdir() if p.name.isdigit()), key=lambda p: int(p.name)):
        hydra_dir = d / ".hydra"
        if not (hydra_dir / "overrides.yaml").is_file() or (hydra_dir / "overrides.yaml").stat().st_mtime < started:
            continue  # not a job of this sweep
        info = d / INFO_FILE
        if not info.is_file():  # ``out`` was swept: the job wrote where its config said
            info = Path(OmegaConf.load(hydra_dir / "config.yaml").out) / INFO_FILE
        overrides = [o.lstrip("+") for o in OmegaConf.load(hydra_dir / "overrides.yaml")]
        jobs.append((int(d.name), overrides, json.loads(info.read_text()) if info.is_file() else None))
    if not jobs:
        return []
    common = set.intersection(*[set(ovs) for _, ovs, _ in jobs])
    swept = sorted({o.split("=", 1)[0] for _, ovs, _ in jobs for o in ovs} - {o.split("=", 1)[0] for o in common})
    rows = []
    for n, overrides, doc in jobs:
        shown = [o for o in overrides if o.split("=", 1)[0] in swept]
        row: dict[str, Any] = {"job": n, "overrides": shown, "out": doc["out"] if doc else None, "failed": doc is None}
        if doc is not None:
            o = overall_success(doc)
            row.update(successes=o["successes"], episodes=o["episodes"], success_rate=o["success_rate"],
                       ci_low=o["ci_low"], ci_high=o["ci_high"], episodes_per_s=doc["runs"][-1]["episodes_per_s"])
        rows.append(row)
    write_json_atomic(root / "multirun.json", {"swept": swept, "jobs": rows})
    lines = [f"# vlastack eval -m: {len(rows)} jobs", "", "| job | " + " | ".join(swept) +
             " | success | 95% CI | successes / episodes |", "|---|" + "---|" * len(swept) + "---:|---:|---:|"]
    for r in rows:
        vals = dict(o.split("=", 1) for o in r["overrides"])
        figures = (f"{_pct(r['success_rate'])} | [{_pct(r['ci_low'])}, {_pct(r['ci_high'])}] | "
                   f"{r['successes']} / {r['episodes']}") if not r["failed"] else "failed | | "
        lines.append(f"| {r['job']} | " + " | ".join(vals.get(k, "") for k in swept) + f" | {figures} |")
    tmp = root / "multirun.md.tmp"
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, root / "multirun.md")
    print(f"\nmultirun: {len(rows)} jobs; comparison in {root / 'multirun.md'}")
    return rows


COMMAND = hydra_app.Command("eval", run=command_job, check=check_config, rewrite=REWRITE,
                            errors=(EvalError, LanguageError, registry.SuiteNotAvailable),
                            after_multirun=compare_multirun)


def main(argv: list[str] | None = None) -> int:
    """``vlastack eval [Hydra flags and overrides]``: a Hydra app (:mod:`vlastack.hydra_app`); returns the exit
    code (2 on bad input, 1 on a failed run). ``-m`` sweeps with Hydra's sweeper (see :func:`compare_multirun`)."""
    return hydra_app.run(COMMAND, argv)


if __name__ == "__main__":
    sys.exit(main())
