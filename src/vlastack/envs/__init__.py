"""Gymnasium environments: RoboCasa-style kitchens on robosuite, and MetaWorld.

Importing this package registers the gymnasium ids ``vlastack/Kitchen-<Task>-v0`` and
``vlastack/MetaWorld-<task>-v0`` (see :mod:`vlastack.envs.gym_ids`); no simulator is imported
until an env is made.
"""

from .gym_ids import register_envs

register_envs()
