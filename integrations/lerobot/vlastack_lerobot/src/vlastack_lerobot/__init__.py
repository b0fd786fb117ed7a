"""Shared glue of the LeRobot plugins ``lerobot_policy_dust`` and ``lerobot_policy_dita``.

    config.py     plugin_config(): a LeRobot PreTrainedConfig generated from a vlastack config class
    policy.py     VlastackPolicy: LeRobot's PreTrainedPolicy around a vlastack policy, to_contract()
    processor.py  make_pre_post_processors(): the pipelines LeRobot looks up per policy type
    video.py      PyAV video decoding where LeRobot 0.4.4's backends cannot run (torch 2.14)

Each plugin is three short modules named as LeRobot looks them up
(``configuration_<name>``, ``modeling_<name>``, ``processor_<name>``) built from these pieces.
Submodules are imported on use: ``video`` needs neither vlastack nor the policies.
"""

__version__ = "0.1.0"
