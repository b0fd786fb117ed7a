"""``DitaConfig``: LeRobot's config for dita, generated from vlastack's ``DitaConfig`` (every field, null = preset / dataset)."""

from vlastack.policies.base import policy_class
from vlastack_lerobot.config import plugin_config

DitaConfig = plugin_config("dita", policy_class("dita").config_class, "DitaConfig", __name__, default_preset="small")
