"""vlastack's Hydra configs, shipped in the package (search path ``pkg://vlastack.configs``).

Primary configs: ``collect``, ``train``, ``eval``, ``serve``, ``deploy`` (one per command), each
including ``common`` (the Hydra settings they share). Groups: ``policy/``, ``dataset/``, ``train/``,
``experiment/``, ``env/``, ``eval/``, ``robot/``; ``hydra/`` holds vlastack's job logging.
Users add or shadow configs with ``--config-dir DIR`` or ``VLASTACK_CONFIGS=DIR``.
"""
