"""Mechanisms the rollout jobs share (``collect``, ``eval``): Hydra composition over the packaged configs
(:mod:`vlastack.hydra_app`), spawned worker pools that survive crashing simulators (or Ray actors:
``launcher=ray``), atomic JSON, quiet simulator logs, progress bars."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

from vlastack.hydra_app import ConfigsNotFound, compose  # noqa: F401  (compose: re-exported)
from vlastack.hydra_app import configs_dir as _configs_dir


def configs_dir(required: str = "collect.yaml") -> Path:
    """The packaged configs directory (``vlastack/configs``); raises if ``required`` is not in it."""
    p = _configs_dir()
    if not (p / required).is_file():
        raise ConfigsNotFound(f"configs: no {required} under {p}")
    return p


def quiet_simulator_logs(suite: str) -> None:
    """Drop the simulator's known-harmless log messages (:mod:`vlastack.logs`; already done when
    ``vlastack`` is imported); its other warnings still show."""
    from vlastack import logs

    logs.install()


def write_json_atomic(path: Path, doc: Any) -> None:
    """Write ``doc`` as JSON to ``path`` through a temporary file and a rename."""
    path = Path(path)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=False, default=str))
    os.replace(tmp, path)


def save_figure_atomic(fig: Any, path: Path) -> Path:
    """Save a matplotlib figure to ``path`` through a temporary file and a rename; close the figure."""
    import matplotlib.pyplot as plt

    path = Path(path)
    tmp = path.with_name(path.stem + f".tmp{os.getpid()}" + path.suffix)
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def rich_progress(enabled: bool = True):
    """The jobs' progress bar: description, bar, done/total, a note field, elapsed and remaining time."""
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[note]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                    disable=not enabled, transient=False)


def run_pool(workers: int, fn: Callable[[dict], dict], next_job: Callable[[], dict | None],
             handle: Callable[[dict], None], crashed: Callable[[dict], dict],
             initializer: Callable | None = None, initargs: tuple = ()) -> None:
    """Keep ``workers`` spawned processes busy running ``fn(job)`` until ``next_job()`` returns None.

    Each result goes to ``handle``. A worker that dies (a segfault in the simulator, the OOM
    killer) breaks the pool: the jobs that were in flight are then rerun one at a time in a
    fresh process, one that dies again is reported as ``crashed(job)``, and the work goes on
    with a new pool. ``initializer(*initargs)`` runs once in every worker process.
    """
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    ctx = mp.get_context("spawn")
    carry: list[dict] = []  # jobs not started because the pool broke first
    while True:
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=initializer, initargs=initargs)
        pending: dict = {}
        suspects: list[dict] = []
        broken = False
        try:
            while True:
                while not broken and len(pending) < workers and \
                        (job := (carry.pop(0) if carry else next_job())) is not None:
                    try:
                        pending[pool.submit(fn, job)] = job
                    except BrokenProcessPool:
                        carry.insert(0, job)
                        broken = True
                if not pending:
                    break
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    job = pending.pop(fut)
                    try:
                        res = fut.result()
                    except BrokenProcessPool:
                        suspects.append(job)
                        broken = True
                        continue
                    handle(res)
                if broken:  # the rest finish or fail with the same broken pool
                    for fut, job in list(pending.items()):
                        try:
                            res = fut.result()
                        except BrokenProcessPool:
                            suspects.append(job)
                            continue
                        handle(res)
                    pending.clear()
                    break
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=not broken, cancel_futures=broken)
        for job in suspects:
            handle(_run_isolated(ctx, fn, job, crashed, initializer, initargs))
        if not broken and not carry:
            return


def _run_isolated(ctx, fn, job: dict, crashed, initializer, initargs) -> dict:
    """Run one job in its own fresh process; a crash becomes ``crashed(job)``."""
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    with ProcessPoolExecutor(max_workers=1, mp_context=ctx, initializer=initializer, initargs=initargs) as solo:
        try:
            return solo.submit(fn, job).result()
        except BrokenProcessPool:
            return crashed(job)


# ---------------------------------------------------------------------------------- launchers

LAUNCHERS = ("process", "ray")


def check_launcher(launcher: str) -> str:
    """``launcher`` checked against :data:`LAUNCHERS` (a ValueError names the choices)."""
    if launcher not in LAUNCHERS:
        raise ValueError(f"launcher: unknown {launcher!r}; valid choices: {list(LAUNCHERS)}")
    return launcher


def launch(launcher: str, workers: int, fn: Callable[[dict], dict], next_job: Callable[[], dict | None],
           handle: Callable[[dict], None], crashed: Callable[[dict], dict], initializer: Callable | None = None,
           initargs: tuple = (), ray_address: str | None = None) -> None:
    """Run jobs with ``launcher``: ``process`` (:func:`run_pool`) or ``ray`` (:func:`run_ray`); same contract."""
    if check_launcher(launcher) == "ray":
        run_ray(workers, fn, next_job, handle, crashed, initializer, initargs, address=ray_address)
    else:
        run_pool(workers, fn, next_job, handle, crashed, initializer, initargs)


class _RayWorker:
    """A Ray actor holding one worker's state: ``initializer(*initargs)`` once (the policy, loaded once
    per actor), then ``run(job)`` per job, the env kept between jobs as in a pool process."""

    def __init__(self, initializer: Callable | None, initargs: tuple):
        if initializer is not None:
            initializer(*initargs)

    def run(self, fn: Callable[[dict], dict], job: dict) -> dict:
        """``fn(job)`` in this actor's process."""
        return fn(job)


#: environment the Ray workers need when they start on another node or from a fresh raylet
RAY_ENV_VARS = ("MUJOCO_GL", "PYOPENGL_PLATFORM", "OMP_WAIT_POLICY", "VLASTACK_CONFIGS", "HF_HUB_OFFLINE",
                "TRANSFORMERS_OFFLINE")


def ray_init(workers: int, address: str | None = None) -> Any:
    """Connect to the Ray cluster at ``address`` (``auto``, ``ray://head:10001``, or the
    ``RAY_ADDRESS`` variable), or start a local one with ``workers`` CPUs; returns the ``ray`` module."""
    try:
        import ray
    except ImportError as e:
        raise ImportError("launcher=ray needs Ray: pip install 'vlastack[ray]'") from e
    if not ray.is_initialized():
        env = {k: os.environ[k] for k in RAY_ENV_VARS if k in os.environ}
        address = address or os.environ.get("RAY_ADDRESS") or None
        kw: dict[str, Any] = {} if address else {"num_cpus": max(int(workers), 1), "include_dashboard": False}
        ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=False, **kw)
    return ray


def run_ray(workers: int, fn: Callable[[dict], dict], next_job: Callable[[], dict | None],
            handle: Callable[[dict], None], crashed: Callable[[dict], dict], initializer: Callable | None = None,
            initargs: tuple = (), address: str | None = None) -> None:
    """:func:`run_pool` on Ray: ``workers`` actors (one CPU each), each initialised once, kept busy.

    An actor that dies (a simulator segfault, a lost node) is replaced; its job is rerun once
    in a fresh actor and reported as ``crashed(job)`` if that one dies too. Results go to
    ``handle`` in the order they finish, so resuming works as with processes (the callers
    record every finished job).
    """
    ray = ray_init(workers, address)
    from ray.exceptions import RayActorError, WorkerCrashedError

    actor_cls = ray.remote(num_cpus=1, max_restarts=0)(_RayWorker)
    fn_ref = ray.put(fn)

    def new_actor():
        return actor_cls.remote(initializer, initargs)

    idle = [new_actor() for _ in range(max(int(workers), 1))]
    pending: dict[Any, tuple[Any, dict]] = {}  # future -> (actor, job)
    retries: list[dict] = []  # jobs whose actor died, to run once more
    retried: set[int] = set()
    try:
        while True:
            while idle and (job := (retries.pop(0) if retries else next_job())) is not None:
                actor = idle.pop()
                pending[actor.run.remote(fn_ref, job)] = (actor, job)
            if not pending:
                break
            done, _ = ray.wait(list(pending), num_returns=1)
            for fut in done:
                actor, job = pending.pop(fut)
                try:
                    res = ray.get(fut)
                except (RayActorError, WorkerCrashedError):
                    ray.kill(actor)
                    idle.append(new_actor())
                    if id(job) in retried:
                        handle(crashed(job))
                    else:
                        retried.add(id(job))
                        retries.append(job)
                    continue
                idle.append(actor)
                handle(res)
    finally:
        for actor in idle + [a for a, _ in pending.values()]:
            ray.kill(actor)
