"""Demo collection: run a suite's scripted expert in worker processes and store the successes.

``vlastack collect env=kitchen task=OpenDrawer episodes=50 out=STORE`` (a Hydra app over
``configs/collect.yaml``; its run record goes to ``STORE.run/``) or, from Python, ``collect(CollectConfig(...))``.

- Work: for every task, attempt k resets its env with seed ``seed + k`` (k = 0, 1, ...,
  ``max_attempts - 1``). Attempts run in ``workers`` spawned processes, each holding one env
  (rebuilt only when its next attempt is for another task); ``workers=0`` runs in-process.
- Store: each successful episode is appended atomically to a Zarr trajectory store (observation
  keys at step t and the action taken at t), with its instruction, ``task_id`` = task name and
  ``meta`` = {suite, task_name, seed, attempt, steps, expert}. One store holds many tasks.
- Resume: a rerun counts the episodes already in the store per task and attempts only the seeds
  that are neither stored nor recorded as failed, until ``episodes`` successes per task. The set
  of stored seeds is therefore the first ``episodes`` succeeding seeds, however often it stopped.
- Summary: ``<out>.summary.json`` beside the store records, per task, the target, the stored and
  failed seeds (with reasons) and every run's timings; the resolved Hydra config goes to
  ``<out>.collect.yaml``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from vlastack import hydra_app
from vlastack.envs import registry
from vlastack.rollout.common import compose, quiet_simulator_logs as _quiet_simulator_logs
from vlastack.rollout.common import check_launcher, launch, rich_progress
from vlastack.rollout.common import write_json_atomic as _write_json_atomic
from vlastack.types import ACTION, SUCCESS, DatasetSpec

#: fault injection (tests): a worker given attempt "<task>:<seed>" exits abruptly, like a segfault.
FAULT_ENV = "VLASTACK_COLLECT_FAULT"

#: episodes longer than this are cut when neither the env nor ``max_steps`` ends them.
HARD_STEP_CAP = 100_000


class CollectError(ValueError):
    """Bad collection settings or an incompatible existing store; the message says what to change."""


# ---------------------------------------------------------------------------------- config


@dataclass
class CollectConfig:
    """What to collect and where. ``tasks`` may name benchmarks ("MT10") or "all"; see module doc."""

    # what
    suite: str
    tasks: Sequence[str] | str
    episodes: int
    # where
    out: str
    overwrite: bool = False
    # how
    workers: int = 2
    launcher: str = "process"  # process | ray (workers as Ray actors; see docs/scale.md)
    ray_address: str | None = None  # an existing cluster (auto, ray://head:10001); None: RAY_ADDRESS or local
    seed: int = 0
    max_steps: int | None = None
    max_attempts: int | None = None
    # env
    cameras: Sequence[str] | None = None
    image_size: Sequence[int] = (128, 128)
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    # display
    progress: bool = True

    def __post_init__(self):
        if self.suite not in registry.SUITES:
            raise CollectError(f"env/suite: unknown {self.suite!r}; valid choices: {list(registry.SUITES)}")
        try:
            self.tasks = registry.resolve_tasks(self.suite, self.tasks)
        except registry.SuiteNotAvailable:
            raise
        except ValueError as e:
            raise CollectError(str(e)) from None
        if not isinstance(self.episodes, int) or isinstance(self.episodes, bool) or self.episodes < 1:
            raise CollectError(f"episodes: expected a positive int (successes per task), got {self.episodes!r}")
        if not self.out or not isinstance(self.out, (str, os.PathLike)):
            raise CollectError("out: required, the store to write, e.g. out=data/demos.zarr")
        self.out = os.fspath(self.out)
        if "://" in self.out and not self.out.startswith("file://"):
            raise CollectError(f"out: {self.out!r}: collection writes local stores (a directory or a .zip)")
        if not isinstance(self.workers, int) or self.workers < 0:
            raise CollectError(f"workers: expected an int >= 0 (0 runs in this process), got {self.workers!r}")
        try:
            check_launcher(self.launcher)
        except ValueError as e:
            raise CollectError(str(e)) from None
        if not isinstance(self.seed, int) or self.seed < 0:
            raise CollectError(f"seed: expected an int >= 0, got {self.seed!r}")
        if self.max_steps is not None and (not isinstance(self.max_steps, int) or self.max_steps < 1):
            raise CollectError(f"max_steps: expected an int >= 1 or null, got {self.max_steps!r}")
        if self.max_attempts is None:
            self.max_attempts = 2 * self.episodes + 10
        if not isinstance(self.max_attempts, int) or self.max_attempts < self.episodes:
            raise CollectError(f"max_attempts: expected an int >= episodes ({self.episodes}), got {self.max_attempts!r}")
        if self.cameras is not None:
            self.cameras = [self.cameras] if isinstance(self.cameras, str) else list(self.cameras)
        try:
            self.image_size = tuple(int(s) for s in self.image_size)
        except (TypeError, ValueError):
            raise CollectError(f"image_size: expected [height, width], got {self.image_size!r}") from None
        if len(self.image_size) != 2 or min(self.image_size) < 1:
            raise CollectError(f"image_size: expected [height, width] of positive ints, got {self.image_size!r}")
        self.env_kwargs = dict(self.env_kwargs or {})

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (stored in the summary)."""
        d = dataclasses.asdict(self)
        d["tasks"] = list(self.tasks)
        d["image_size"] = list(self.image_size)
        return d

    @property
    def summary_path(self) -> Path:
        """``<out>.summary.json``."""
        return summary_path(self.out)


def summary_path(out: str | os.PathLike) -> Path:
    """The summary JSON that sits beside the store ``out``."""
    return Path(_local(out) + ".summary.json")


def _local(out: str | os.PathLike) -> str:
    s = os.fspath(out)
    return s[len("file://"):].rstrip("/") if s.startswith("file://") else s.rstrip("/")


# ---------------------------------------------------------------------------------- worker side

_WORKER_ENV: dict[str, Any] = {"key": None, "env": None, "expert": None}


def _env_for(job: dict) -> tuple[Any, Any]:
    """The process's env and expert for ``job``'s task, built (or rebuilt) on demand."""
    key = json.dumps([job["suite"], job["task"], job["cameras"], job["image_size"], job["env_kwargs"]],
                     sort_keys=True, default=str)
    if _WORKER_ENV["key"] != key:
        if _WORKER_ENV["env"] is not None:
            _WORKER_ENV["env"].close()
            _WORKER_ENV.update(key=None, env=None, expert=None)
        _quiet_simulator_logs(job["suite"])
        env = registry.make_env(job["suite"], job["task"], seed=job["seed"], cameras=job["cameras"],
                                image_size=job["image_size"], **job["env_kwargs"])
        expert = registry.make_expert(job["suite"], job["task"], env)
        _WORKER_ENV.update(key=key, env=env, expert=expert)
    return _WORKER_ENV["env"], _WORKER_ENV["expert"]


def run_expert_episode(env, expert, seed: int, max_steps: int | None = None) -> dict[str, Any]:
    """One expert episode from ``env.reset(seed=seed)`` until success, the env's end or ``max_steps``.

    Returns {success, steps, reason, instruction, frames}: ``frames`` maps every key of
    ``env.data_spec`` to (T, ...) arrays, observations at step t with the action taken at t (the
    observation after the last action is dropped); ``next.success`` too when the spec has it.
    """
    spec: DatasetSpec = env.data_spec
    obs_keys = [k for k in spec.features if k not in (ACTION, SUCCESS)]
    obs, info = env.reset(seed=int(seed))
    expert.reset()
    instruction = obs.get("task") or info.get("instruction") or ""
    cap = max_steps if max_steps is not None else HARD_STEP_CAP
    rows: dict[str, list] = {k: [] for k in obs_keys}
    actions, successes = [], []
    success, reason = False, "max_steps"
    for _ in range(cap):
        action = np.asarray(expert.act(obs, env), np.float32)  # (D_a,)
        for k in obs_keys:
            rows[k].append(obs[k])
        actions.append(action)
        obs, _, terminated, truncated, info = env.step(action)
        success = bool(info.get("success", False))
        successes.append(success)
        if success:
            reason = "success"
            break
        if terminated:
            reason = "terminated without success"
            break
        if truncated:
            reason = "env time limit"
            break
    frames = {k: np.stack(v) for k, v in rows.items()}  # (T, ...)
    frames[ACTION] = np.stack(actions).astype(np.float32)  # (T, D_a)
    if SUCCESS in spec.features:
        frames[SUCCESS] = np.asarray(successes, dtype=spec.features[SUCCESS].dtype)  # (T,)
    return {"success": success, "steps": len(actions), "reason": reason, "instruction": str(instruction),
            "frames": frames}


def _episode_job(job: dict) -> dict[str, Any]:
    """Worker entry: run one attempt; errors come back as a failed result, not an exception."""
    t0 = time.perf_counter()
    out = {"task": job["task"], "seed": job["seed"], "attempt": job["attempt"]}
    if os.environ.get(FAULT_ENV) == f"{job['task']}:{job['seed']}":  # fault injection for tests
        os._exit(3)
    try:
        env, expert = _env_for(job)
        res = run_expert_episode(env, expert, job["seed"], job["max_steps"])
        out.update(res)
        out["expert"] = type(expert).__name__
        if not res["success"]:
            out.pop("frames")
    except Exception as e:  # noqa: BLE001 - reported in the summary, the run goes on
        out.update(success=False, steps=0, reason=f"error: {type(e).__name__}: {e}",
                   traceback=traceback.format_exc(limit=8))
        if _WORKER_ENV["env"] is not None:  # a broken env is not reused
            try:
                _WORKER_ENV["env"].close()
            except Exception:  # noqa: BLE001
                pass
        _WORKER_ENV.update(key=None, env=None, expert=None)
    out["seconds"] = time.perf_counter() - t0
    return out


def _close_worker_env() -> None:
    if _WORKER_ENV["env"] is not None:
        _WORKER_ENV["env"].close()
    _WORKER_ENV.update(key=None, env=None, expert=None)


# ---------------------------------------------------------------------------------- main side


@dataclass
class _TaskState:
    """Bookkeeping of one task across runs."""

    name: str
    target: int
    stored: set[int] = field(default_factory=set)        # seeds in the store
    failed: dict[int, dict] = field(default_factory=dict)  # seed -> {reason, steps}
    in_flight: set[int] = field(default_factory=set)
    next_k: int = 0
    this_run: dict[str, int] = field(default_factory=lambda: {"attempted": 0, "succeeded": 0, "failed": 0})

    def next_seed(self, base: int, max_attempts: int) -> tuple[int, int] | None:
        """(seed, attempt) of the next attempt worth making, or None when done or out of attempts."""
        if len(self.stored) + len(self.in_flight) >= self.target:
            return None
        while self.next_k < max_attempts:
            k = self.next_k
            self.next_k += 1
            s = base + k
            if s not in self.stored and s not in self.failed and s not in self.in_flight:
                return s, k
        return None

    @property
    def complete(self) -> bool:
        """Whether the store holds the target number of episodes."""
        return len(self.stored) >= self.target

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary entry."""
        return {"target": self.target, "in_store": len(self.stored), "complete": self.complete,
                "attempted": sorted(self.stored | set(self.failed)), "succeeded": sorted(self.stored),
                "failed": [{"seed": s, **self.failed[s]} for s in sorted(self.failed)],
                "this_run": dict(self.this_run)}


def _open_or_create_store(cfg: CollectConfig, spec: DatasetSpec):
    from vlastack.datasets.store import TrajectoryStore

    path = cfg.out
    exists = Path(_local(path)).exists()
    if cfg.overwrite or not exists:
        if cfg.overwrite and summary_path(path).exists():
            summary_path(path).unlink()
        return TrajectoryStore.create(path, spec, overwrite=cfg.overwrite)
    store = TrajectoryStore.open(path, mode="a")
    have, want = store.spec.to_dict(), spec.to_dict()
    if have != want:
        diff = sorted(k for k in set(have["features"]) | set(want["features"])
                      if have["features"].get(k) != want["features"].get(k))
        other = [k for k in ("fps", "action_space") if have[k] != want[k]]
        store.close()
        raise CollectError(f"out: the existing store {path!r} has a different spec (features {diff}{', ' if diff and other else ''}"
                           f"{other}); use the same env/cameras/image_size, another out, or overwrite=true")
    return store


def _load_previous_failures(path: Path, suite: str) -> dict[str, dict[int, dict]]:
    if not path.exists():
        return {}
    try:
        prev = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if prev.get("suite") != suite:
        return {}
    out: dict[str, dict[int, dict]] = {}
    for name, t in prev.get("tasks", {}).items():
        out[name] = {int(f["seed"]): {k: v for k, v in f.items() if k != "seed"} for f in t.get("failed", [])}
    return out


class _Summary:
    """The summary document, rewritten atomically after every attempt."""

    def __init__(self, cfg: CollectConfig, states: dict[str, _TaskState], previous_runs: list):
        self.cfg, self.states = cfg, states
        self.runs = list(previous_runs)
        self.run = {"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "finished": None, "interrupted": False,
                    "workers": cfg.workers, "attempted": 0, "succeeded": 0, "failed": 0, "env_steps": 0,
                    "stored_frames": 0, "seconds": 0.0, "steps_per_second": 0.0}
        self.t0 = time.perf_counter()

    def record(self, res: dict) -> None:
        """Count one attempt's result in this run's totals."""
        self.run["attempted"] += 1
        self.run["succeeded" if res["success"] else "failed"] += 1
        self.run["env_steps"] += int(res.get("steps", 0))
        if res["success"]:
            self.run["stored_frames"] += int(res.get("steps", 0))

    def document(self) -> dict[str, Any]:
        """The full summary as a dict."""
        secs = time.perf_counter() - self.t0
        self.run["seconds"] = round(secs, 3)
        self.run["steps_per_second"] = round(self.run["env_steps"] / secs, 2) if secs > 0 else 0.0
        return {"store": self.cfg.out, "suite": self.cfg.suite, "config": self.cfg.to_dict(),
                "complete": all(s.complete for s in self.states.values()),
                "tasks": {n: s.to_dict() for n, s in self.states.items()},
                "runs": self.runs + [self.run]}

    def write(self) -> dict[str, Any]:
        """Write and return the document."""
        doc = self.document()
        _write_json_atomic(self.cfg.summary_path, doc)
        return doc


def _progress(cfg: CollectConfig):
    return rich_progress(cfg.progress)


def collect(cfg: CollectConfig, on_store_ready=None) -> dict[str, Any]:
    """Collect ``cfg.episodes`` successful expert episodes per task into ``cfg.out``; returns the summary.

    ``on_store_ready()`` is called once the store is created or reopened with a matching spec.
    """
    _quiet_simulator_logs(cfg.suite)
    try:
        probe = registry.make_env(cfg.suite, cfg.tasks[0], seed=cfg.seed, cameras=cfg.cameras,
                                  image_size=cfg.image_size, **cfg.env_kwargs)
    except (ValueError, TypeError) as e:  # bad camera, size or env option: say so before any work
        raise CollectError(f"env ({cfg.suite}, {cfg.tasks[0]}): {e}") from e
    try:
        spec = probe.data_spec
        if not isinstance(spec, DatasetSpec):
            raise CollectError(f"{cfg.suite} env has no DatasetSpec `data_spec` (got {type(spec).__name__})")
    finally:
        probe.close()
    store = _open_or_create_store(cfg, spec)
    if on_store_ready is not None:
        on_store_ready()
    try:
        return _collect_into(cfg, store)
    finally:
        store.close()


def _collect_into(cfg: CollectConfig, store) -> dict[str, Any]:
    states = {t: _TaskState(t, cfg.episodes) for t in cfg.tasks}
    for ep in store.episodes:
        m = ep.get("meta") or {}
        if m.get("suite") == cfg.suite and m.get("task_name") in states and "seed" in m:
            states[m["task_name"]].stored.add(int(m["seed"]))
    prev_fail = {} if cfg.overwrite else _load_previous_failures(cfg.summary_path, cfg.suite)
    for name, st in states.items():
        st.failed = {s: f for s, f in prev_fail.get(name, {}).items() if s not in st.stored}
    previous_runs = []
    if cfg.summary_path.exists() and not cfg.overwrite:
        try:
            previous_runs = json.loads(cfg.summary_path.read_text()).get("runs", [])
        except (OSError, ValueError):
            previous_runs = []
    summary = _Summary(cfg, states, previous_runs)
    summary.write()

    def make_job(task: str, seed: int, attempt: int) -> dict:
        return {"suite": cfg.suite, "task": task, "seed": seed, "attempt": attempt, "max_steps": cfg.max_steps,
                "cameras": list(cfg.cameras) if cfg.cameras is not None else None,
                "image_size": list(cfg.image_size), "env_kwargs": cfg.env_kwargs}

    def next_job() -> dict | None:
        for name in cfg.tasks:
            nxt = states[name].next_seed(cfg.seed, cfg.max_attempts)
            if nxt is not None:
                states[name].in_flight.add(nxt[0])
                return make_job(name, *nxt)
        return None

    from vlastack.datasets.store import StoreError

    progress = _progress(cfg)
    bars = {}

    def note(st: _TaskState) -> str:
        return f"failed {len(st.failed)}" if st.failed else ""

    def handle(res: dict) -> None:
        st = states[res["task"]]
        st.in_flight.discard(res["seed"])
        st.this_run["attempted"] += 1
        if res["success"]:
            try:
                store.append_episode(res["frames"], task=res["instruction"], success=True,
                                     source=f"expert:{cfg.suite}", task_id=res["task"],
                                     meta={"suite": cfg.suite, "task_name": res["task"], "seed": int(res["seed"]),
                                           "attempt": int(res["attempt"]), "steps": int(res["steps"]),
                                           "expert": res.get("expert", "")})
            except StoreError as e:  # e.g. NaN in a state: keep going, say why in the summary
                res = {**res, "success": False, "reason": f"store rejected the episode: {e}"}
        if res["success"]:
            st.stored.add(res["seed"])
            st.this_run["succeeded"] += 1
        else:
            fail = {"reason": res["reason"], "steps": int(res.get("steps", 0))}
            if "traceback" in res:
                fail["traceback"] = res["traceback"]
            st.failed[res["seed"]] = fail
            st.this_run["failed"] += 1
        summary.record(res)
        summary.write()
        progress.update(bars[st.name], completed=len(st.stored), note=note(st))

    interrupted = False
    with progress:
        for name, st in states.items():
            bars[name] = progress.add_task(name, total=st.target, completed=min(len(st.stored), st.target),
                                           note=note(st))
        try:
            if cfg.workers == 0:
                while (job := next_job()) is not None:
                    handle(_episode_job(job))
                _close_worker_env()
            else:
                _run_pool(cfg, next_job, handle)
        except KeyboardInterrupt:
            interrupted = True
    summary.run["interrupted"] = interrupted
    summary.run["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    doc = summary.write()
    if interrupted:
        raise KeyboardInterrupt
    return doc


def _run_pool(cfg: CollectConfig, next_job, handle) -> None:
    """Keep ``cfg.workers`` spawned processes (or Ray actors) busy until no attempt is left to make (see
    common.run_pool: attempts in flight when a worker dies are rerun in isolation; one that dies again is
    recorded as failed)."""
    launch(cfg.launcher, cfg.workers, _episode_job, next_job, handle, _crashed, ray_address=cfg.ray_address)


def _crashed(job: dict) -> dict[str, Any]:
    return {"task": job["task"], "seed": job["seed"], "attempt": job["attempt"], "success": False,
            "steps": 0, "reason": "error: the worker process died (crashed twice on this seed)"}


def print_report(doc: dict[str, Any], file=None) -> None:
    """A per-task table of the summary."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"collect -> {doc['store']}")
    for col in ("task", "stored", "target", "failed", "tried now"):
        table.add_column(col, justify="left" if col == "task" else "right", no_wrap=True)
    for name, t in doc["tasks"].items():
        table.add_row(name, str(t["in_store"]), str(t["target"]), str(len(t["failed"])), str(t["this_run"]["attempted"]))
    Console(file=file or sys.stdout).print(table)
    run = doc["runs"][-1]
    print(f"this run: {run['attempted']} attempts, {run['succeeded']} stored, {run['failed']} failed, "
          f"{run['env_steps']} env steps in {run['seconds']:.1f} s ({run['steps_per_second']:.1f} steps/s); "
          f"summary: {summary_path(doc['store'])}", file=file or sys.stdout)


# ---------------------------------------------------------------------------------- Hydra entry


def compose_config(overrides: Sequence[str] = ()):
    """The composed Hydra config of ``configs/collect.yaml`` with ``overrides`` (e.g. ``["env=metaworld"]``)."""
    return compose("collect", overrides)


def config_from_hydra(cfg) -> CollectConfig:
    """A validated :class:`CollectConfig` from the composed Hydra config."""
    from omegaconf import OmegaConf
    from omegaconf.errors import MissingMandatoryValue

    try:
        d = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as e:
        key = getattr(e, "full_key", "") or str(e)
        raise CollectError(f"{key}: required; e.g. vlastack collect env=kitchen task=OpenDrawer episodes=50 "
                           "out=data/open_drawer.zarr") from None
    env = d.get("env") or {}
    env_kwargs = dict(env.get("kwargs") or {})
    env_kwargs.update({k: d[k] for k in ("scene", "group", "split") if d.get(k) is not None})
    return CollectConfig(suite=env.get("suite"), tasks=d["task"], episodes=d["episodes"], out=d["out"],
                         overwrite=bool(d.get("overwrite", False)), workers=d["workers"], seed=d["seed"],
                         launcher=d.get("launcher", "process"), ray_address=d.get("ray_address"),
                         max_steps=d.get("max_steps"), max_attempts=d.get("max_attempts"),
                         cameras=d.get("cameras"), image_size=d.get("image_size") or (128, 128),
                         env_kwargs=env_kwargs, progress=bool(d.get("progress", True)))


def check_config(hcfg) -> CollectConfig:
    """A valid :class:`CollectConfig` whose store can be written (its parent directory exists); raises
    :class:`CollectError`. Runs before Hydra makes the run directory."""
    cfg = config_from_hydra(hcfg)
    parent = Path(_local(cfg.out)).parent
    if not parent.is_dir():
        raise CollectError(f"out: parent directory {parent} does not exist")
    return cfg


def command_job(hcfg) -> int:
    """One ``vlastack collect`` job: collect, print the report; 1 if a task ran out of attempts, 130 on Ctrl-C."""
    from omegaconf import OmegaConf

    cfg = check_config(hcfg)

    def write_config() -> None:
        Path(_local(cfg.out) + ".collect.yaml").write_text(OmegaConf.to_yaml(hcfg, resolve=True))

    try:
        doc = collect(cfg, on_store_ready=write_config)
    except KeyboardInterrupt:
        print(f"\ninterrupted: stored episodes are kept; rerun the same command to resume "
              f"(summary: {cfg.summary_path})", file=sys.stderr)
        return 130
    print_report(doc)
    if not doc["complete"]:
        short = [n for n, t in doc["tasks"].items() if not t["complete"]]
        print(f"incomplete: {short} ran out of attempts (max_attempts={cfg.max_attempts}); see the summary",
              file=sys.stderr)
        return 1
    return 0


COMMAND = hydra_app.Command("collect", run=command_job, check=check_config,
                            errors=(CollectError, registry.SuiteNotAvailable))


def main(argv: list[str] | None = None) -> int:
    """``vlastack collect [Hydra flags and overrides]``: a Hydra app (:mod:`vlastack.hydra_app`); returns the exit code."""
    return hydra_app.run(COMMAND, argv)


collect_main = main

if __name__ == "__main__":
    sys.exit(main())
