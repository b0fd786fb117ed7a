"""RoboCasa-style kitchen tasks on robosuite, with fixtures authored in this repo.

A Panda arm stands at a counter with a drawer unit, single and double cabinets, a sink with a
faucet lever and swivel spout, a stove with knobs, a microwave with start/stop buttons and a
coffee machine (MJCF files in ``assets/``). Tasks carry RoboCasa's atomic-task names; each
episode is a pure function of its seed; every task has a scripted expert using privileged
state, for generating demonstrations::

    from vlastack.envs.kitchen import make_kitchen_env, make_expert
    env = make_kitchen_env("OpenDrawer", seed=0)
    expert = make_expert(env)
    obs, info = env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(expert.act(env))

Task groups (:data:`TASK_GROUPS`, :mod:`.groups`) put several fixtures and objects in one shared
scene where, for a seed, every task of the group starts from the same state and only the
instruction says which task is meant: ``make_kitchen_env("TurnOnStove", seed=0, scene="group")``.

Rendering runs offscreen on the CPU (``MUJOCO_GL=egl`` by default, set before mujoco is first
imported; ``osmesa`` also works) with shadows and reflections off. One env per process.
"""

from .env import ACTION_NAMES, DEFAULT_CAMERAS, STATE_NAMES, KitchenEnv
from .experts import run_expert_episode
from .groups import LAYOUTS, SCENES, STYLES, TASK_GROUPS, groups_of, split_pairs
from .registry import list_tasks, make_expert, make_kitchen_env
from .tasks import GROUPS, TASKS

__all__ = ["ACTION_NAMES", "DEFAULT_CAMERAS", "GROUPS", "LAYOUTS", "SCENES", "STATE_NAMES", "STYLES", "TASKS",
           "TASK_GROUPS", "KitchenEnv", "groups_of", "list_tasks", "make_expert", "make_kitchen_env",
           "run_expert_episode", "split_pairs"]
