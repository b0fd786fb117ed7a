"""Task registry and constructors: :func:`make_kitchen_env`, :func:`make_expert`, :func:`list_tasks`."""

from __future__ import annotations

from .env import DEFAULT_CAMERAS, KitchenEnv
from .experts import PLANS, ScriptedExpert
from .experts import make_expert as _make_expert
from .tasks import GROUPS, TASKS


def list_tasks(group: str | None = None) -> list[str]:
    """Names of the implemented tasks (that have a scripted expert), optionally of one group."""
    if group is not None and group not in GROUPS:
        raise ValueError(f"unknown task group {group!r}; valid groups: {', '.join(GROUPS)}")
    return [n for n, t in TASKS.items() if n in PLANS and (group is None or t.group == group)]


def make_kitchen_env(task: str, seed: int | None = None, cameras=DEFAULT_CAMERAS, image_size=128,
                     **kwargs) -> KitchenEnv:
    """A :class:`KitchenEnv` for ``task``; ``seed`` fixes the first episode when ``reset()`` gets none.

    ``cameras`` is any subset of ``("left", "right", "wrist")`` (empty for no rendering);
    ``image_size`` an int or (height, width). ``scene="group"`` builds the task inside its task
    group's shared scene (``group=`` picks the group when several hold the task; ``split=``
    ``train`` / ``heldout`` / ``all`` picks the layout x style pairs); ``scene="single"`` (the
    default) the task's own scene. Other keyword arguments go to :class:`KitchenEnv`.
    """
    return KitchenEnv(task, cameras=cameras, image_size=image_size, seed=seed, **kwargs)


def make_expert(env: KitchenEnv) -> ScriptedExpert:
    """The scripted expert for ``env``'s task (``act(env)`` returns a 7-D action; ``reset()``)."""
    return _make_expert(env)
