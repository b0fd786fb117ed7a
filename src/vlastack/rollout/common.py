"""Mechanisms the rollout jobs share (``collect``, ``eval``): Hydra composition over the packaged configs
(:mod:`vlastack.hydra_app`), spawned worker pools that survive crashing simulators, atomic JSON, quiet simulator logs, progress bars."""

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
