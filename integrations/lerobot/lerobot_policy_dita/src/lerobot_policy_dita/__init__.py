"""LeRobot plugin: vlastack's Dita (in-context diffusion transformer, arXiv 2503.19757) as ``--policy.type=dita``.

LeRobot imports this package at start (``register_third_party_plugins``); importing it registers
the config under "dita". LeRobot then finds ``DitaPolicy`` in :mod:`.modeling_dita` and
``make_dita_pre_post_processors`` in :mod:`.processor_dita`. See docs/lerobot.md.
"""

from vlastack_lerobot import video as _video

from .configuration_dita import DitaConfig

_video.install()  # PyAV decoding where LeRobot's own backends cannot run (no-op elsewhere)

__all__ = ["DitaConfig"]
