"""One entry pattern for every config-taking command (``collect``, ``train``, ``eval``, ``serve``, ``deploy``).

Each command is a real Hydra app over the configs shipped inside the package (search path
``pkg://vlastack.configs``, primary config ``<command>.yaml``). :func:`run` hands the command line
to ``hydra.main``, so Hydra's own flags work: ``--help``, ``--cfg job``, ``--info``, ``-m`` with any
installed sweeper and launcher, ``--config-dir``. Around Hydra:

- ``VLASTACK_CONFIGS=DIR`` goes first on the search path (a Hydra search-path plugin,
  ``hydra_plugins/vlastack_searchpath``): configs there add options and shadow packaged ones of the
  same name; Hydra's ``--config-dir DIR`` adds options (packaged configs keep precedence);
- :class:`CommandHooks` (a Hydra callback listed in ``configs/common.yaml``) checks the composed
  config with the command's ``check`` before Hydra makes the run directory: bad input costs one
  line naming the problem, exit code 2, and leaves nothing on disk;
- every run directory holds Hydra's ``.hydra/`` (``config.yaml``, ``hydra.yaml``, ``overrides.yaml``)
  and ``.hydra/runs.jsonl``: one line per invocation with the command line, the vlastack version
  and the git commit it ran from;
- logs go through Python ``logging``, set up by Hydra's job logging
  (``configs/hydra/job_logging/vlastack.yaml``: stderr and ``<run dir>/<command>.log``); what a
  command prints on stdout (tables, figures) is its output.

Called in-process (tests, notebooks), :func:`run` restores ``sys.argv`` and the logging set-up after.
This module imports nothing else of vlastack's, so every subpackage may use it.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import logging
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

CONFIG_MODULE = "vlastack.configs"
CONFIG_PATH = "pkg://" + CONFIG_MODULE
CONFIGS_ENV = "VLASTACK_CONFIGS"
RUNS_FILE = "runs.jsonl"  # in the run directory's .hydra/: one line per invocation
VERSION_BASE = "1.3"


class ConfigsNotFound(ValueError):
    """``VLASTACK_CONFIGS`` names a directory that does not exist."""


@dataclass(frozen=True)
class Command:
    """A config-taking command: its name (= primary config ``<name>.yaml``) and its job.

    ``run(cfg)`` gets the composed config (without the ``hydra`` node) and returns the exit code.
    ``check(cfg)`` validates the same config before the run directory exists; it raises one of
    ``errors`` (shown as ``vlastack <name>: <message>``, exit code 2), as ``run`` may too.
    ``rewrite`` maps the command line to Hydra overrides (see :func:`overrides_rewriter`).
    ``after_multirun(sweep_dir, started)`` runs once after ``-m``, in the launching process.
    """

    name: str
    run: Callable[[Any], int]
    check: Callable[[Any], Any] | None = None
    errors: tuple[type[BaseException], ...] = ()
    rewrite: Callable[[list[str]], list[str]] | None = None
    after_multirun: Callable[[Path, float], None] | None = None


# ------------------------------------------------------------------------------ configs


def configs_dir() -> Path:
    """The packaged configs directory (``vlastack/configs``)."""
    import vlastack.configs

    return Path(vlastack.configs.__file__).resolve().parent


def user_configs_dir() -> Path | None:
    """``$VLASTACK_CONFIGS`` as a directory (None when unset); raises :class:`ConfigsNotFound` if missing."""
    env = os.environ.get(CONFIGS_ENV)
    if not env:
        return None
    p = Path(env).expanduser().resolve()
    if not p.is_dir():
        raise ConfigsNotFound(f"{CONFIGS_ENV}={env}: not a directory; point it at a folder of extra or "
                              f"replacement configs (same layout as {configs_dir()}), or unset it")
    return p


def compose(config_name: str, overrides: Sequence[str] = ()):
    """The composed config ``<config_name>.yaml`` with ``overrides`` (Hydra's compose API, no run directory).

    Searches ``$VLASTACK_CONFIGS`` first (when set), then the packaged configs, as the commands do.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    user_configs_dir()  # a clear error if VLASTACK_CONFIGS names no folder
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module=CONFIG_MODULE, version_base=VERSION_BASE, job_name=config_name):
            return hydra_compose(config_name=config_name, overrides=list(overrides))
    finally:
        GlobalHydra.instance().clear()


def is_config_error(e: BaseException) -> bool:
    """Whether ``e`` is one of Hydra's / OmegaConf's override or config errors (shown to users as is)."""
    return type(e).__module__.startswith(("hydra", "omegaconf"))


_KEY = re.compile(r"^[A-Za-z_][\w.]*$")


def overrides_rewriter(open_keys: Sequence[str] = (), aliases: Mapping[str, str] | None = None
                       ) -> Callable[[list[str]], list[str]]:
    """A command-line rewrite: ``key=value`` whose key starts with one of ``open_keys`` (e.g. ``"sampling."``)
    becomes ``++key=value`` (keys of open dictionaries are added without Hydra's ``+``), and a key in
    ``aliases`` is renamed (``policy=expert`` -> ``policy_kind=expert``: ``policy`` is also the name of the
    training configs' group, which Hydra would try to select). Flags and other overrides pass unchanged."""
    aliases = dict(aliases or {})

    def rewrite(argv: list[str]) -> list[str]:
        out = []
        for a in argv:
            key, sep, value = a.partition("=")
            if not sep or not _KEY.match(key):
                out.append(a)
                continue
            key = aliases.get(key, key)
            out.append(("++" if key.startswith(tuple(open_keys)) else "") + f"{key}={value}")
        return out

    return rewrite


# ------------------------------------------------------------------------------ run records


@functools.lru_cache(maxsize=1)
def source_revision() -> dict[str, Any]:
    """The git commit of the vlastack sources running now, and whether tracked files differ from it.

    ``{"git_commit": None, "git_dirty": None}`` when the package is not a git checkout (a wheel install).
    """
    pkg = Path(__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            r = subprocess.run(["git", "-C", str(pkg), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return r.stdout.strip() if r.returncode == 0 else None

    if git("ls-files", "--error-unmatch", "__init__.py") is None:  # not tracked here: an installed copy
        return {"git_commit": None, "git_dirty": None}
    status = git("status", "--porcelain", "--untracked-files=no", "--", ".")
    return {"git_commit": git("rev-parse", "HEAD"), "git_dirty": None if status is None else bool(status)}


def record_invocation(hydra_dir: Path, command_line: Sequence[str], argv: Sequence[str]) -> dict[str, Any]:
    """Append this invocation (command line, the process's ``argv``, cwd, version, git commit) to
    ``hydra_dir/runs.jsonl``."""
    import vlastack

    doc = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": shlex.join(command_line),
           "argv": list(argv), "cwd": os.getcwd(), "vlastack": vlastack.__version__, **source_revision(),
           "python": platform.python_version(), "host": platform.node(), "pid": os.getpid()}
    hydra_dir.mkdir(parents=True, exist_ok=True)
    with open(hydra_dir / RUNS_FILE, "a") as f:  # one write of one line: appends do not interleave
        f.write(json.dumps(doc) + "\n")
    return doc


# ------------------------------------------------------------------------------ Hydra hooks

_ACTIVE: list[Command] = []  # the command being run by :func:`run` (a stack: runs may nest in tests)


def job_config(config: Any) -> Any:
    """A copy of Hydra's full config without its ``hydra`` node (what the task function receives)."""
    from omegaconf import open_dict, read_write

    job = copy.deepcopy(config)
    with read_write(job), open_dict(job):
        job.pop("hydra", None)
    return job


def _fail(cmd: Command, e: BaseException) -> int:
    print(f"vlastack {cmd.name}: {e}", file=sys.stderr)
    return 2


try:
    from hydra.experimental.callback import Callback as _Callback
except ImportError:  # pragma: no cover - hydra-core is a dependency
    _Callback = object  # type: ignore[misc,assignment]


class CommandHooks(_Callback):
    """Hydra callback (``configs/common.yaml``): check the config before a run, compare jobs after ``-m``."""

    def __init__(self) -> None:
        self.multirun_started = time.time()

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        """Validate the composed config with the command's ``check``; exit 2 with one line if it is bad."""
        if not _ACTIVE or _ACTIVE[-1].check is None:
            return
        cmd = _ACTIVE[-1]
        from hydra.core.hydra_config import HydraConfig

        HydraConfig.instance().set_config(config)
        try:
            cmd.check(job_config(config))
        except cmd.errors as e:
            raise SystemExit(_fail(cmd, e)) from None
        except Exception as e:
            if is_config_error(e):
                raise SystemExit(_fail(cmd, e)) from None
            raise

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        """Note when the sweep started (jobs written before belong to earlier sweeps)."""
        self.multirun_started = time.time()

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        """The command's ``after_multirun`` over the sweep directory."""
        if _ACTIVE and _ACTIVE[-1].after_multirun is not None:
            _ACTIVE[-1].after_multirun(Path(str(config.hydra.sweep.dir)), self.multirun_started)


# ------------------------------------------------------------------------------ the entry


def _rank() -> int:
    """This process's rank under torchrun (0 otherwise)."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


@contextlib.contextmanager
def _kept_logging() -> Iterator[None]:
    """Restore the logging set-up (levels, handlers) that Hydra's dictConfig replaces; close what it opened."""
    def all_loggers() -> list[logging.Logger]:
        return [logging.getLogger(), *(lg for lg in list(logging.Logger.manager.loggerDict.values())
                                       if isinstance(lg, logging.Logger))]

    saved = {lg: (lg.level, list(lg.handlers), lg.propagate, lg.disabled) for lg in all_loggers()}
    try:
        yield
    finally:
        for lg in all_loggers():
            if lg not in saved:
                continue
            level, handlers, propagate, disabled = saved[lg]
            for h in lg.handlers:
                if h not in handlers:
                    h.close()
            lg.handlers[:] = handlers
            lg.setLevel(level)
            lg.propagate, lg.disabled = propagate, disabled


@contextlib.contextmanager
def _argv(argv: list[str]) -> Iterator[None]:
    saved = sys.argv
    sys.argv = argv
    try:
        yield
    finally:
        sys.argv = saved


def run(cmd: Command, argv: Sequence[str] | None = None) -> int:
    """``vlastack <cmd.name> [Hydra flags and overrides...]``; returns the exit code.

    0: done (or ``--help``, ``--cfg``, ``--info``); 2: bad input (Hydra's composition errors and the
    command's ``check``); otherwise the worst exit code of the jobs that ran (1 if one raised).
    """
    import hydra

    typed = list(sys.argv[1:] if argv is None else argv)
    args = ["--help" if a == "help" else a for a in typed]  # `vlastack eval help`, as before
    if cmd.rewrite is not None:
        args = cmd.rewrite(args)
    try:
        user_configs_dir()  # the search-path plugin skips a missing folder: say so here
    except ConfigsNotFound as e:
        return _fail(cmd, e)
    if _rank() > 0:  # torchrun: rank 0 alone writes .hydra/
        args.append("hydra.output_subdir=null")
    command_line, process_argv = ["vlastack", cmd.name, *typed], list(sys.argv)
    started: list[int] = []
    codes: list[int] = []

    def task(cfg: Any) -> int:
        from hydra.core.hydra_config import HydraConfig

        started.append(1)
        hc = HydraConfig.get()
        if hc.output_subdir is not None:
            record_invocation(Path(hc.runtime.output_dir) / hc.output_subdir, command_line, process_argv)
        try:
            rc = int(cmd.run(cfg) or 0)
        except cmd.errors as e:
            rc = _fail(cmd, e)
        except Exception as e:
            if not is_config_error(e):
                raise
            rc = _fail(cmd, e)
        codes.append(rc)
        return rc

    app = hydra.main(config_path=CONFIG_PATH, config_name=cmd.name, version_base=VERSION_BASE)(task)
    _ACTIVE.append(cmd)
    try:
        with _argv([f"vlastack {cmd.name}", *args]), _kept_logging():
            app()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if code == 0:
            return 0
        if not started:  # Hydra's usage and composition errors (it exits 1), our check (2)
            return 2 if code == 1 else code
        return max([*codes, 1])  # a job raised; Hydra printed it
    finally:
        _ACTIVE.pop()
    return max(codes, default=0)


def runtime_output_dir() -> Path | None:
    """The current Hydra job's output directory (None outside a Hydra job)."""
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else None


def in_multirun() -> bool:
    """Whether the current Hydra job is one of a ``-m`` sweep."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
