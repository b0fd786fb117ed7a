"""``make_dust_pre_post_processors``: the pipelines LeRobot builds for --policy.type=dust."""

from vlastack_lerobot.processor import make_pre_post_processors as make_dust_pre_post_processors

__all__ = ["make_dust_pre_post_processors"]
