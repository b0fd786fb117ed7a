"""``DitaPolicy``: vlastack's dita policy behind LeRobot's PreTrainedPolicy (see vlastack_lerobot.policy)."""

from vlastack_lerobot.policy import VlastackPolicy

from .configuration_dita import DitaConfig


class DitaPolicy(VlastackPolicy):
    """Dita (in-context diffusion transformer, arXiv 2503.19757) inside LeRobot."""

    config_class = DitaConfig
    name = "dita"
