"""Hydra search-path plugin: ``VLASTACK_CONFIGS=DIR`` puts DIR first on every vlastack command's config search path.

Configs there add options (``DIR/policy/mine.yaml`` -> ``policy=mine``) and shadow packaged ones of
the same name (``DIR/eval.yaml``). Hydra finds this module in the ``hydra_plugins`` namespace; it
does nothing while ``VLASTACK_CONFIGS`` is unset, and leaves other Hydra apps' search paths alone.
"""

from __future__ import annotations

import os

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

CONFIGS_ENV = "VLASTACK_CONFIGS"  # also vlastack.hydra_app.CONFIGS_ENV, which checks the folder exists
PACKAGED = "pkg://vlastack.configs"


class VlastackConfigsSearchPath(SearchPathPlugin):
    """Prepends ``$VLASTACK_CONFIGS`` to search paths that hold vlastack's packaged configs."""

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        """Put the user's folder first (before the packaged configs it may shadow)."""
        d = os.environ.get(CONFIGS_ENV)
        if not d or not os.path.isdir(os.path.expanduser(d)):
            return
        if not any(e.path == PACKAGED for e in search_path.get_path()):
            return  # another Hydra app
        search_path.prepend(provider="vlastack-configs-env", path="file://" + os.path.abspath(os.path.expanduser(d)))
