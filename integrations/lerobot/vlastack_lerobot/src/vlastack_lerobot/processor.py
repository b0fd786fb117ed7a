"""The pre/post processors LeRobot builds for a vlastack policy type.

    pre:  rename observations -> add a batch dimension -> device -> normaliser (identity)
    post: unnormaliser (identity) -> CPU

The policy normalises state and actions itself, with the dataset's statistics fitted into its
own normaliser (they travel in ``model.safetensors``); LeRobot's normaliser steps are kept, as
identities, so that LeRobot's fine-tuning overrides (``normalizer_processor``) find them. The
instruction passes through as ``task`` (LeRobot's complementary data).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lerobot.processor import (AddBatchDimensionProcessorStep, DeviceProcessorStep, NormalizerProcessorStep,
                               PolicyAction, PolicyProcessorPipeline, RenameObservationsProcessorStep,
                               UnnormalizerProcessorStep)
from lerobot.processor.converters import policy_action_to_transition, transition_to_policy_action
from lerobot.utils.constants import POLICY_POSTPROCESSOR_DEFAULT_NAME, POLICY_PREPROCESSOR_DEFAULT_NAME

from .config import VlastackConfig


def make_pre_post_processors(config: VlastackConfig, dataset_stats: dict[str, dict[str, Any]] | None = None
                             ) -> tuple[PolicyProcessorPipeline, PolicyProcessorPipeline]:
    """(preprocessor, postprocessor) for a vlastack plugin policy (see the module docstring)."""
    features = {**(config.input_features or {}), **(config.output_features or {})}
    pre = [RenameObservationsProcessorStep(rename_map={}), AddBatchDimensionProcessorStep(),
           DeviceProcessorStep(device=config.device),
           NormalizerProcessorStep(features=features, norm_map=config.normalization_mapping, stats=dataset_stats)]
    post = [UnnormalizerProcessorStep(features=config.output_features or {}, norm_map=config.normalization_mapping,
                                      stats=dataset_stats),
            DeviceProcessorStep(device="cpu")]
    return (PolicyProcessorPipeline[dict[str, Any], dict[str, Any]](steps=pre, name=POLICY_PREPROCESSOR_DEFAULT_NAME),
            PolicyProcessorPipeline[PolicyAction, PolicyAction](steps=post, name=POLICY_POSTPROCESSOR_DEFAULT_NAME,
                                                                to_transition=policy_action_to_transition,
                                                                to_output=transition_to_policy_action))


def add_processors(checkpoint: str | Path) -> Path:
    """Write LeRobot's processor files into a vlastack checkpoint directory (``save_pretrained``'s), so that
    ``lerobot-eval --policy.path=DIR`` loads it: vlastack's ``config.json`` parses as the plugin's config
    and its ``model.safetensors`` is what the plugin loads; only the (stateless) pipelines are missing."""
    from lerobot.configs.policies import PreTrainedConfig
    from lerobot.utils.import_utils import register_third_party_plugins

    register_third_party_plugins()
    path = Path(checkpoint)
    cfg = PreTrainedConfig.from_pretrained(path)
    if not isinstance(cfg, VlastackConfig):
        raise ValueError(f"{path}: a {cfg.type!r} checkpoint, not a vlastack policy (dust, dita)")
    pre, post = make_pre_post_processors(cfg)
    pre.save_pretrained(path)
    post.save_pretrained(path)
    return path


if __name__ == "__main__":  # python -m vlastack_lerobot.processor CHECKPOINT_DIR
    import sys

    if len(sys.argv) != 2:
        sys.exit("usage: python -m vlastack_lerobot.processor CHECKPOINT_DIR  (a vlastack dust / dita checkpoint)")
    print(f"LeRobot processors written to {add_processors(sys.argv[1])}")
