"""``DustConfig``: LeRobot's config for dust, generated from vlastack's ``DUSTConfig`` (every field, null = preset / dataset)."""

from vlastack.policies.base import policy_class
from vlastack_lerobot.config import plugin_config

DustConfig = plugin_config("dust", policy_class("dust").config_class, "DustConfig", __name__, default_preset="small")
