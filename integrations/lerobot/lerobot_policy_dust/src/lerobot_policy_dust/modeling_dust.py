"""``DustPolicy``: vlastack's dust policy behind LeRobot's PreTrainedPolicy (see vlastack_lerobot.policy)."""

from vlastack_lerobot.policy import VlastackPolicy

from .configuration_dust import DustConfig


class DustPolicy(VlastackPolicy):
    """DUST (dual-stream flow matching with a world-model stream, arXiv 2510.27607) inside LeRobot."""

    config_class = DustConfig
    name = "dust"
