"""LeRobot plugin: vlastack's DUST (dual-stream flow matching with a world-model stream, arXiv 2510.27607) as ``--policy.type=dust``.

LeRobot imports this package at start (``register_third_party_plugins``); importing it registers
the config under "dust". LeRobot then finds ``DustPolicy`` in :mod:`.modeling_dust` and
``make_dust_pre_post_processors`` in :mod:`.processor_dust`. See docs/lerobot.md.
"""

from vlastack_lerobot import video as _video

from .configuration_dust import DustConfig

_video.install()  # PyAV decoding where LeRobot's own backends cannot run (no-op elsewhere)

__all__ = ["DustConfig"]
