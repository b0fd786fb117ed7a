"""vlastack: vision-language-action robot policies, from demos to a robot arm.

Subpackages and the one direction imports point::

    {types, fsutil}  <-  {datasets, policies, envs, real_robot}  <-  rollout  <-  train / cli

``types`` is the data contract and ``fsutil`` holds crash-safe filesystem steps; neither
imports anything of ours. ``policies`` never
imports ``envs``, ``rollout`` or ``real_robot``; ``envs`` and ``real_robot``
never import ``policies``. ``tests/test_imports.py`` checks this rule.
"""

__version__ = "0.1.0"

from vlastack import logs as _logs  # noqa: E402

_logs.install()  # robosuite's known-harmless start-up warnings, dropped (vlastack/logs.py)
