"""gymnasium ids for every simulated task: ``vlastack/Kitchen-<Task>-v0``, ``vlastack/MetaWorld-<task>-v0``.

Importing :mod:`vlastack.envs` registers them all (cheaply: no simulator is imported until an
env is made)::

    import gymnasium as gym
    import vlastack.envs  # noqa: F401  (registers the ids)

    env = gym.make("vlastack/Kitchen-OpenDrawer-v0", cameras=["left", "wrist"], image_size=96, seed=0)
    env = gym.make("vlastack/MetaWorld-pick-place-v0", image_size=(64, 64))
    # or without the import: gym.make("vlastack.envs:vlastack/Kitchen-OpenDrawer-v0")

Ids: one per kitchen task in :data:`vlastack.envs.kitchen.TASKS` (``OpenDrawer``,
``PnPCounterToSink``, ...) and one per MetaWorld v3 task with its ``-v3`` suffix dropped
(``pick-place-v3`` -> ``vlastack/MetaWorld-pick-place-v0``). Keyword arguments of
``gym.make`` go to the suite's factory (:func:`vlastack.envs.kitchen.make_kitchen_env`,
:func:`vlastack.envs.metaworld.make_metaworld_env`): ``cameras``, ``image_size``, ``seed`` (the
first episode's seed when ``reset()`` gets none), ``render_mode`` (``"rgb_array"``, the default,
or None) and every other option of the suite (kitchen: ``scene``, ``group``, ``split``,
``horizon``, ``terminate_on_success``, ``arm_render``; MetaWorld: ``max_steps``, ``state``,
``terminate_on_success``).

The episode ends inside the env (success or the task's horizon), so no ``TimeLimit`` is added.
``env.unwrapped.data_spec`` is the data contract (:class:`~vlastack.types.DatasetSpec`).
"""

from __future__ import annotations

KITCHEN_ID = "vlastack/Kitchen-{task}-v0"
METAWORLD_ID = "vlastack/MetaWorld-{task}-v0"
_KITCHEN_ENTRY = "vlastack.envs.kitchen.registry:make_kitchen_env"
_METAWORLD_ENTRY = "vlastack.envs.metaworld:make_metaworld_env"


def _kitchen_tasks() -> list[str]:
    from vlastack.envs.kitchen.tasks import TASKS  # task classes only: no robosuite import

    return list(TASKS)


def _metaworld_tasks() -> list[str]:
    from vlastack.envs.metaworld import _PHRASES  # the 50 v3 task names, without importing metaworld

    return list(_PHRASES)


def kitchen_id(task: str) -> str:
    """The gymnasium id of kitchen ``task`` (e.g. ``"vlastack/Kitchen-OpenDrawer-v0"``)."""
    valid = _kitchen_tasks()
    if task not in valid:
        raise ValueError(f"unknown kitchen task {task!r}; valid tasks: {', '.join(valid)}")
    return KITCHEN_ID.format(task=task)


def metaworld_id(task: str) -> str:
    """The gymnasium id of MetaWorld ``task`` ("pick-place-v3" or "pick-place" ->
    ``"vlastack/MetaWorld-pick-place-v0"``)."""
    valid = _metaworld_tasks()
    name = task if task in valid else f"{task}-v3"
    if name not in valid:
        raise ValueError(f"unknown MetaWorld task {task!r}; valid tasks: {', '.join(valid)}")
    return METAWORLD_ID.format(task=name.removesuffix("-v3"))


def _entries(suite: str | None = None) -> list[tuple[str, str, str]]:
    """(id, entry point, task name) of every registered env, or of one suite's."""
    if suite not in (None, "kitchen", "metaworld"):
        raise ValueError(f"suite: unknown {suite!r}; valid choices: ['kitchen', 'metaworld'] (or None for both)")
    out: list[tuple[str, str, str]] = []
    if suite in (None, "kitchen"):
        out += [(KITCHEN_ID.format(task=t), _KITCHEN_ENTRY, t) for t in _kitchen_tasks()]
    if suite in (None, "metaworld"):
        out += [(METAWORLD_ID.format(task=t.removesuffix("-v3")), _METAWORLD_ENTRY, t) for t in _metaworld_tasks()]
    return out


def gym_ids(suite: str | None = None) -> list[str]:
    """Every registered id, or those of one suite (``"kitchen"`` or ``"metaworld"``)."""
    return [env_id for env_id, _, _ in _entries(suite)]


def register_envs() -> list[str]:
    """Register every id with gymnasium (again-safe: ids already there are left alone); returns them."""
    from gymnasium.envs.registration import register, registry

    for env_id, entry, task in _entries():
        if env_id not in registry:
            register(id=env_id, entry_point=entry, kwargs={"task": task}, nondeterministic=False)
    return gym_ids()
