"""LeRobot configs for vlastack policies: one generated from each policy's own config dataclass.

:func:`plugin_config` turns a vlastack config class (``DUSTConfig``, ``DitaConfig``) into a
LeRobot ``PreTrainedConfig`` subclass registered under the policy's name, so that
``lerobot-train --policy.type=dust --policy.preset=small --policy.num_vision_steps=8`` works:

    preset         one of the policy's presets (``tiny``, ``small``, ``paper_sized``, ...)
    <every field>  of the vlastack config, null by default: null takes the preset's value, or for
                   the data-contract fields (cameras, image_size, state_dim, action_dim) the
                   dataset's, exactly as ``vlastack train`` does (:func:`vlastack.train.builder.policy_config`)
    n_action_steps actions of a chunk that ``select_action`` executes before it predicts again
                   (null: the whole chunk)
    optimizer_* / scheduler_*  null: the policy's published optimiser (its ``OPTIM_DEFAULTS``)
    vlastack       filled on save: the format block of vlastack's ``config.json`` with the resolved
                   config, so that ``vlastack eval checkpoint=<pretrained_model>`` reads the same file

The time windows come from the policy's own ``delta_indices()``: LeRobot asks one list for
every ``observation.*`` key, so it gets the union of the image and state offsets (DUST: the
current frame and the world model's future frame ``t + future_offset``); the policy takes the
frames each key needs from that window.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

from lerobot.configs.policies import PreTrainedConfig
from lerobot.configs.types import FeatureType, NormalizationMode
from lerobot.optim.optimizers import AdamWConfig
from lerobot.optim.schedulers import LRSchedulerConfig
from lerobot.utils.constants import ACTION, OBS_STATE

from vlastack.policies.base import PolicyConfig
from vlastack.train.builder import policy_config as build_policy_config
from vlastack.train.config import TrainConfigError
from vlastack.types import IMAGE_PREFIX, camera_of

#: LeRobot's own config fields (n_obs_steps among them, which means what ours means)
_BASE_FIELDS = {f.name for f in dataclasses.fields(PreTrainedConfig)}


@LRSchedulerConfig.register_subclass("vlastack_cosine")
@dataclass
class VlastackCosineSchedulerConfig(LRSchedulerConfig):
    """vlastack's schedule in LeRobot: linear warmup (steps or a fraction of the run), then cosine decay
    to ``final_lr_ratio`` (:class:`vlastack.train.optim.CosineSchedule`)."""

    num_warmup_steps: int | None = None
    warmup_fraction: float | None = None
    final_lr_ratio: float = 0.0

    def build(self, optimizer, num_training_steps: int):
        """A ``LambdaLR`` multiplying every group's rate by the schedule's factor."""
        from torch.optim.lr_scheduler import LambdaLR

        from vlastack.train.config import ScheduleConfig
        from vlastack.train.optim import CosineSchedule

        sched = CosineSchedule(ScheduleConfig(warmup_steps=self.num_warmup_steps, warmup_fraction=self.warmup_fraction,
                                              final_lr_ratio=self.final_lr_ratio), 1.0, num_training_steps)
        return LambdaLR(optimizer, sched.factor)


@dataclass
class VlastackConfig(PreTrainedConfig):
    """Fields every vlastack plugin config shares (the policy's own fields are generated beside them)."""

    policy_config_class: ClassVar[type[PolicyConfig]] = PolicyConfig
    policy_name: ClassVar[str] = ""

    preset: str = "small"
    n_action_steps: int | None = None
    # the policy normalises state and actions itself (statistics inside model.safetensors, so vlastack
    # eval / serve read the same weights); LeRobot's normaliser steps stay in the pipeline as identities
    normalization_mapping: dict[str, NormalizationMode] = field(default_factory=lambda: {
        "VISUAL": NormalizationMode.IDENTITY, "STATE": NormalizationMode.IDENTITY,
        "ACTION": NormalizationMode.IDENTITY})
    # optimiser and schedule (null: the policy's OPTIM_DEFAULTS)
    optimizer_lr: float | None = None
    optimizer_betas: tuple[float, float] | None = None
    optimizer_eps: float | None = None
    optimizer_weight_decay: float | None = None
    optimizer_grad_clip_norm: float = 1.0  # vlastack train's default
    scheduler_warmup_steps: int | None = None
    scheduler_warmup_fraction: float | None = None
    # written on save: vlastack's checkpoint block (format, frozen-encoder fingerprints, resolved config)
    vlastack: dict[str, Any] | None = None

    def __post_init__(self):
        super().__post_init__()
        cls = self.policy_config_class
        try:
            self.preset = cls.preset_name(self.preset)
        except ValueError as e:
            raise ValueError(f"--policy.preset: {e}") from None
        if self.n_action_steps is not None and self.n_action_steps < 1:
            raise ValueError(f"--policy.n_action_steps must be >= 1 or null (the whole chunk), got {self.n_action_steps}")
        self.policy_config()  # fail at parse time on a bad override, naming the field

    # ------------------------------------------------------------ the vlastack config

    def overrides(self) -> dict[str, Any]:
        """The policy fields set explicitly (non-null), as plain JSON values."""
        out = {}
        for f in dataclasses.fields(self.policy_config_class):
            v = getattr(self, f.name, None)
            if v is not None:
                out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    def data_fields(self) -> dict[str, Any]:
        """cameras, image_size (H, W), state_dim, action_dim from LeRobot's features (None when unknown)."""
        images = {k: ft for k, ft in (self.input_features or {}).items() if ft.type is FeatureType.VISUAL}
        sizes = {k: tuple(int(s) for s in ft.shape[-2:]) for k, ft in images.items()}  # (C, H, W) -> (H, W)
        if len(set(sizes.values())) > 1:
            raise ValueError(f"{self.policy_name}: every camera needs the same image size, got {sizes}; resize the "
                             "dataset's videos or pass --rename_map to drop a camera")
        bad = [k for k in images if not k.startswith(IMAGE_PREFIX)]
        if bad:
            raise ValueError(f"{self.policy_name}: image features {bad} are not named {IMAGE_PREFIX}<camera>; "
                             "rename them with --rename_map")
        state = (self.input_features or {}).get(OBS_STATE)
        action = (self.output_features or {}).get(ACTION)
        return {"cameras": [camera_of(k) for k in images] or None,
                "image_size": list(next(iter(sizes.values()))) if sizes else None,
                "state_dim": int(state.shape[0]) if state is not None else None,
                "action_dim": int(action.shape[0]) if action is not None else None}

    def saved_fields(self) -> dict[str, Any] | None:
        """Every policy field as it stands, when this config was read from a saved checkpoint (its
        ``vlastack`` block is there): such a config.json holds the whole config, so a null there means
        the field's own null (e.g. every camera's future), not "the preset's value"; None otherwise."""
        if self.vlastack is None:
            return None
        fields = {f.name: getattr(self, f.name, None) for f in dataclasses.fields(self.policy_config_class)}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()}

    def policy_config(self) -> PolicyConfig:
        """The vlastack config: the preset (or a saved checkpoint's whole config), then the dataset's
        data-contract fields, then explicit fields."""
        section = {"name": self.policy_name, "preset": self.preset, **self.overrides()}
        try:
            return build_policy_config(section, self.data_fields(), self.saved_fields())
        except TrainConfigError as e:
            raise ValueError(str(e).replace("policy.", "--policy.", 1)) from None

    def resolve(self) -> PolicyConfig:
        """:meth:`policy_config`, written back into this config's fields (so config.json holds every value)."""
        cfg = self.policy_config()
        for k, v in cfg.to_dict().items():
            setattr(self, k, tuple(v) if isinstance(v, list) else v)
        return cfg

    # ------------------------------------------------------------ LeRobot's interface

    def _window(self) -> Mapping[str, list[int]]:
        return self.policy_config().delta_indices()

    @property
    def observation_delta_indices(self) -> list[int]:
        """Union of the frame offsets of every observation key (images and state)."""
        return sorted({i for k, idx in self._window().items() if k != ACTION for i in idx})

    @property
    def action_delta_indices(self) -> list[int]:
        """The action chunk's frame offsets."""
        return list(self._window()[ACTION])

    @property
    def reward_delta_indices(self) -> None:
        """No rewards."""
        return None

    def _optim_defaults(self) -> dict[str, Any]:
        return dict(self.policy_config_class.OPTIM_DEFAULTS)

    def get_optimizer_preset(self) -> AdamWConfig:
        """AdamW at the policy's published values, unless ``optimizer_*`` set them."""
        d = {"lr": 1e-4, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0, **self._optim_defaults()}
        return AdamWConfig(lr=self.optimizer_lr if self.optimizer_lr is not None else d["lr"],
                           betas=tuple(self.optimizer_betas or d["betas"]),
                           eps=self.optimizer_eps if self.optimizer_eps is not None else d["eps"],
                           weight_decay=self.optimizer_weight_decay if self.optimizer_weight_decay is not None
                           else d["weight_decay"], grad_clip_norm=self.optimizer_grad_clip_norm)

    def get_scheduler_preset(self) -> VlastackCosineSchedulerConfig:
        """Warmup + cosine: ``scheduler_warmup_*`` if set, else the policy's published warmup."""
        steps, frac = self.scheduler_warmup_steps, self.scheduler_warmup_fraction
        if steps is None and frac is None:
            d = self._optim_defaults()
            steps, frac = d.get("warmup_steps"), d.get("warmup_fraction")
            if steps is None and frac is None:
                steps = 500
        return VlastackCosineSchedulerConfig(num_warmup_steps=steps, warmup_fraction=frac)

    def validate_features(self) -> None:
        """The policy needs images and actions; the data-contract fields must fit the config."""
        if not self.image_features:
            raise ValueError(f"{self.policy_name}: no image features (observation.images.<camera>) among the "
                             f"inputs {sorted(self.input_features or {})}")
        if self.action_feature is None:
            raise ValueError(f"{self.policy_name}: no 'action' output feature; got {sorted(self.output_features or {})}")
        missing = [c for c in self.policy_config().cameras if IMAGE_PREFIX + c not in self.image_features]
        if missing:
            raise ValueError(f"{self.policy_name}: cameras {missing} are not among the dataset's image features "
                             f"{sorted(self.image_features)}")


def _optional(tp: Any) -> Any:
    """``tp | None`` (unchanged when it already admits None)."""
    return tp if type(None) in typing.get_args(tp) else typing.Optional[tp]


def plugin_config(name: str, policy_config_class: type[PolicyConfig], class_name: str, module: str,
                  default_preset: str = "small", doc: str | None = None) -> type[VlastackConfig]:
    """A :class:`VlastackConfig` subclass with every field of ``policy_config_class`` (null by default),
    registered with LeRobot under ``name``.

    ``class_name`` must end in ``Config`` and ``module`` be the plugin's ``configuration_<name>``
    module: LeRobot finds the policy class as ``<module with modeling_>.<class_name minus Config>Policy``
    and the processors as ``<module with processor_>.make_<name>_pre_post_processors``.
    """
    if not class_name.endswith("Config"):
        raise ValueError(f"class_name {class_name!r} must end in 'Config' (LeRobot derives the policy class from it)")
    hints = typing.get_type_hints(policy_config_class)
    mine = {f.name for f in dataclasses.fields(VlastackConfig)} - _BASE_FIELDS
    # every policy field, null by default (LeRobot's own n_obs_steps, same meaning, too: null = the preset's)
    own = [(f.name, _optional(hints[f.name]), field(default=None)) for f in dataclasses.fields(policy_config_class)
           if f.name not in mine]
    own.append(("preset", str, field(default=default_preset)))
    ns = {"__module__": module, "policy_config_class": policy_config_class, "policy_name": name,
          "__doc__": doc or f"{name} (vlastack) as a LeRobot policy config; see vlastack_lerobot.config."}
    cls = dataclasses.make_dataclass(class_name, own, bases=(VlastackConfig,), namespace=ns)
    return PreTrainedConfig.register_subclass(name)(cls)

