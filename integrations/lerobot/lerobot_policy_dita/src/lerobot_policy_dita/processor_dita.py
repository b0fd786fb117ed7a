"""``make_dita_pre_post_processors``: the pipelines LeRobot builds for --policy.type=dita."""

from vlastack_lerobot.processor import make_pre_post_processors as make_dita_pre_post_processors

__all__ = ["make_dita_pre_post_processors"]
