"""One factory over the simulated suites: ``make_env``, ``make_expert``, ``list_tasks``.

Suites:

- ``kitchen``: RoboCasa-style kitchens on robosuite (``vlastack.envs.kitchen``), task names like
  ``OpenDrawer``; cameras ``left``, ``right``, ``wrist``.
- ``metaworld``: MetaWorld v3 (``vlastack.envs.metaworld``), task names like ``pick-place-v3``;
  ``"MT10"`` and ``"MT50"`` expand to their task lists in :func:`resolve_tasks`.

Every env returns flat data-contract observations (``observation.images.<cam>``,
``observation.state``, ``task``), ``info["success"]`` (also as ``info["is_success"]``) and a
``data_spec`` (:class:`DatasetSpec`); ``env.spec`` stays gymnasium's own ``EnvSpec`` (set by
``gymnasium.make``, see :mod:`vlastack.envs.gym_ids`).
Every expert has ``reset()`` and ``act(obs, env) -> action``. Suites are imported only when
used, so asking for MetaWorld never imports robosuite and vice versa.
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol, Sequence

import numpy as np

SUITES = ("kitchen", "metaworld")


class Expert(Protocol):
    """A scripted demonstrator: ``reset()`` per episode, ``act(obs, env)`` per step."""

    def reset(self) -> None:
        """Start an episode."""

    def act(self, obs: dict, env: Any) -> np.ndarray:
        """The action for the current step."""


class SuiteNotAvailable(RuntimeError):
    """A suite whose module is missing or incomplete in this install."""


def _check_suite(suite: str) -> str:
    if suite not in SUITES:
        raise ValueError(f"suite: unknown {suite!r}; valid choices: {list(SUITES)}")
    return suite


def _kitchen():
    """The kitchen module, or a clear error when it is not there (yet)."""
    try:
        mod = importlib.import_module("vlastack.envs.kitchen")
    except ImportError as e:
        raise SuiteNotAvailable(f"kitchen suite not available: importing vlastack.envs.kitchen failed ({e})") from e
    if not any(hasattr(mod, n) for n in ("make_kitchen_env", "make_env")):
        raise SuiteNotAvailable("kitchen suite not available: vlastack.envs.kitchen has no make_kitchen_env")
    return mod


def _first_attr(mod, names: Sequence[str]):
    for n in names:
        if hasattr(mod, n):
            return getattr(mod, n)
    return None


def list_tasks(suite: str) -> list[str]:
    """Every task name of ``suite``."""
    _check_suite(suite)
    if suite == "metaworld":
        from vlastack.envs import metaworld

        return metaworld.list_tasks("MT50")
    mod = _kitchen()
    fn = _first_attr(mod, ("list_tasks",))
    if callable(fn):
        return list(fn())
    tasks = _first_attr(mod, ("TASKS", "TASK_NAMES", "ALL_TASKS"))
    if tasks is None:
        raise SuiteNotAvailable("kitchen suite not available: vlastack.envs.kitchen lists no tasks (list_tasks/TASKS)")
    return list(tasks)


def resolve_tasks(suite: str, task: str | Sequence[str]) -> list[str]:
    """Expand and validate a task selection: one name, a list, ``"all"``, ``"MT10"`` / ``"MT50"``
    (MetaWorld) or a task group's name (kitchen: its tasks, e.g. ``"sink_stove"``).

    Returns canonical names in order without duplicates; an unknown name raises naming the choices.
    """
    _check_suite(suite)
    names = [task] if isinstance(task, str) else list(task)
    if not names:
        raise ValueError(f"task: empty selection; choose from {list_tasks(suite)}")
    valid = list_tasks(suite)
    out: list[str] = []
    for name in names:
        if not isinstance(name, str):
            raise ValueError(f"task: expected task names (str), got {name!r}")
        if name == "all":
            expanded = valid
        elif suite == "metaworld" and name in ("MT10", "MT50"):
            from vlastack.envs import metaworld

            expanded = metaworld.list_tasks(name)
        elif suite == "metaworld":
            from vlastack.envs import metaworld

            expanded = [metaworld.canonical_task(name)]
        elif name in valid:
            expanded = [name]
        elif suite == "kitchen" and name in _kitchen_groups():
            expanded = list(_kitchen_groups()[name])
        else:
            extra = f" or a task group {list(_kitchen_groups())}" if suite == "kitchen" else ""
            raise ValueError(f"task: unknown {suite} task {name!r}; valid choices: {valid}{extra}")
        out += [t for t in expanded if t not in out]
    return out


def _kitchen_groups() -> dict[str, tuple[str, ...]]:
    from vlastack.envs.kitchen.groups import TASK_GROUPS

    return TASK_GROUPS


def make_env(suite: str, task: str, seed: int = 0, cameras: Sequence[str] | None = None,
             image_size: Sequence[int] = (128, 128), **kw):
    """A gymnasium env of ``suite`` for ``task`` with data-contract observations and ``info["success"]``.

    ``cameras`` None means the suite's default set; ``kw`` goes to the suite's factory
    (e.g. ``max_steps`` for MetaWorld).
    """
    _check_suite(suite)
    image_size = tuple(int(s) for s in image_size)
    if suite == "metaworld":
        from vlastack.envs import metaworld

        return metaworld.make_metaworld_env(task, seed=seed, cameras=cameras, image_size=image_size, **kw)
    mod = _kitchen()
    valid = list_tasks("kitchen")
    if task not in valid:
        raise ValueError(f"task: unknown kitchen task {task!r}; valid choices: {valid}")
    factory = _first_attr(mod, ("make_kitchen_env", "make_env"))
    if cameras is not None:
        kw["cameras"] = tuple(cameras)
    if "max_steps" in kw:  # one name across suites; the kitchen calls it horizon
        steps = kw.pop("max_steps")
        if steps is not None:
            kw["horizon"] = int(steps)
    return factory(task, seed=seed, image_size=image_size, **kw)


def make_expert(suite: str, task: str, env) -> Expert:
    """The scripted expert of ``suite`` for ``task``, bound to ``env`` where the suite needs it."""
    _check_suite(suite)
    if suite == "metaworld":
        from vlastack.envs import metaworld

        return metaworld.MetaWorldExpert(task)
    mod = _kitchen()
    base = getattr(env, "unwrapped", env)
    if getattr(base, "task_name", task) != task:
        raise ValueError(f"expert for {task!r} requested on an env of task {base.task_name!r}")
    fn = _first_attr(mod, ("make_expert", "get_expert", "make_kitchen_expert"))
    if not callable(fn):
        raise SuiteNotAvailable(f"kitchen suite not available: no scripted expert found for {task!r} "
                                "(expected vlastack.envs.kitchen.make_expert)")
    return _ObsEnvExpert(_call_expert_factory(fn, task, env))


class _ObsEnvExpert:
    """Adapts an expert whose ``act`` takes only the env (the kitchen's) to ``act(obs, env)``."""

    def __init__(self, inner):
        """Wrap ``inner`` (anything with ``reset()`` and ``act(env)`` or ``act(obs, env)``)."""
        import inspect

        self.inner = inner
        try:
            n = len([p for p in inspect.signature(inner.act).parameters.values()
                     if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)])
        except (TypeError, ValueError):
            n = 2
        self._takes_obs = n >= 2

    def reset(self) -> None:
        """Start an episode."""
        self.inner.reset()

    def act(self, obs: dict, env) -> np.ndarray:
        """The expert's action for the current step."""
        a = self.inner.act(obs, env) if self._takes_obs else self.inner.act(env)
        return np.asarray(a, np.float32)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def _call_expert_factory(fn, task: str, env, with_task: bool = True):
    """Call an expert factory with whichever of (task, env) it accepts."""
    import inspect

    try:
        params = list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        params = []
    args: list[Any] = []
    if with_task and params and params[0] in ("task", "task_name", "name"):
        args.append(task)
        rest = params[1:]
    else:
        rest = params
    if rest and rest[0] in ("env", "environment"):
        args.append(env)
    return fn(*args)
