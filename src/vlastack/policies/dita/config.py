"""Dita configuration: one typed dataclass, every published knob a field, validated on creation.

Presets (``DitaConfig.preset(name, **overrides)``):

    tiny         tests: tiny random encoders, 32x32 images, width 32, 2 layers; a train step in
                 milliseconds
    small        CPU benchmarks: frozen EfficientNet-lite0 + MiniLM, three 128x128 cameras, 2 frames,
                 16 queries x 2 Q-Former blocks, 8 layers of width 384 (about 20M trainable parameters)
    paper_sized  the published sizes, not the published encoders: 12 layers, width 768, MLP 2048,
                 12 heads; 32 queries x 4 Q-Former blocks; 2 frames; chunk 16 = 1 past + 15 future
                 actions; DDPM 1000 linear, DDIM 10; the vision backbone trained at 0.1x the learning
                 rate; on the offline EfficientNet-lite0 + MiniLM. The paper fine-tunes DINOv2
                 ViT-B/14 (with registers) and reads CLIP ViT-L/14 text states, from one third-person
                 camera; no such weights can be had offline. With local copies, pass
                 ``cameras=["left"]``, ``vision_encoder="hf:/path/to/dinov2-with-registers-base"`` and
                 ``text_encoder="hf:/path/to/clip-vit-large-patch14"`` (see
                 :mod:`vlastack.policies.encoders.hf`). ``paper`` is a deprecated alias.

Few-shot fine-tuning (the paper's 100-step cosine schedule) is ``num_train_timesteps=100,
beta_schedule="squaredcos_cap_v2"`` on top of any preset; timesteps are embedded as
``t * 1000 / T`` so a checkpoint keeps its timestep embedding across the two schedules.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ...types import ACTION, STATE, image_key
from ..base import PolicyConfig
from ..noise import BETA_SCHEDULES
from ..normalizer import NORM_MODES, ON_CONSTANT


@dataclass
class DitaConfig(PolicyConfig):
    """Dita: in-context diffusion transformer policy (arXiv 2503.19757)."""

    # --- inputs (the data contract) -----------------------------------------------------
    cameras: tuple[str, ...] = ("left", "right", "wrist")
    image_size: tuple[int, int] = (128, 128)  # (H, W) of every camera
    state_dim: int = 0  # 0: no proprioception (as published); > 0 adds one state token to the prefix
    action_dim: int = 7
    n_obs_steps: int = 2  # observation history: frames t - n_obs + 1 .. t
    horizon: int = 16  # action tokens per chunk: a_{t - n_past} .. a_{t + horizon - n_past - 1}
    n_past_actions: int = 0  # chunk steps before t (paper: 1); denoised but not returned for execution

    # --- encoders ---------------------------------------------------------------------------
    vision_encoder: str = "efficientnet_lite0"
    vision_encoder_kwargs: dict[str, Any] = field(default_factory=dict)  # {"frozen": False} trains it
    vision_lr_scale: float = 0.1  # learning-rate multiplier of a trainable vision backbone
    text_encoder: str = "minilm"
    text_encoder_kwargs: dict[str, Any] = field(default_factory=dict)

    # --- Q-Former: image patches -> num_queries tokens per camera and frame -------------------
    num_queries: int = 32
    qformer_layers: int = 4
    qformer_width: int | None = None  # None: width
    qformer_heads: int | None = None  # None: heads
    qformer_mlp_ratio: float = 4.0

    # --- causal transformer (LLaMA-style, from scratch) ---------------------------------------
    width: int = 768
    layers: int = 12
    heads: int = 12
    mlp_hidden: int = 2048
    rope_base: float = 10000.0
    norm_eps: float = 1e-6

    # --- diffusion (epsilon prediction, DDPM training, DDIM sampling) --------------------------
    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"  # or "squaredcos_cap_v2" (cosine)
    clip_sample: bool = True  # clamp DDIM's predicted clean chunk to [-1, 1] (the normalised range)
    num_inference_steps: int = 10
    ddim_eta: float = 0.0

    # --- normalisation ---------------------------------------------------------------------------
    state_norm: str = "mean_std"
    action_norm: str = "q01_q99"  # actions to [-1, 1] by their 1st / 99th percentiles
    clip_normalized: bool = True  # clamp normalised actions (and q01/min-max states) to [-1, 1]
    norm_on_constant: str = "raise"  # or "unit": constant dims are only centred

    PRESETS = {}  # filled below the class
    PRESET_ALIASES = {"paper": "paper_sized"}
    #: the Dita paper's optimiser: AdamW lr 1e-4, betas (0.9, 0.95), wd 0.05; warmup not published (assumed 500)
    OPTIM_DEFAULTS = dict(lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.05, warmup_steps=500)

    def __post_init__(self):
        self.cameras = tuple(self.cameras)
        self.image_size = tuple(int(s) for s in self.image_size)
        self.vision_encoder_kwargs = dict(self.vision_encoder_kwargs or {})
        self.text_encoder_kwargs = dict(self.text_encoder_kwargs or {})
        if not self.cameras or len(set(self.cameras)) != len(self.cameras):
            raise ValueError(f"cameras must be a non-empty list of distinct names, got {self.cameras}")
        if len(self.image_size) != 2 or min(self.image_size) < 1:
            raise ValueError(f"image_size must be (H, W) positive, got {self.image_size}")
        for name in ("action_dim", "n_obs_steps", "horizon", "num_queries", "qformer_layers", "width", "layers",
                     "heads", "mlp_hidden", "num_inference_steps"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.state_dim < 0:
            raise ValueError(f"state_dim must be >= 0 (0: no state token), got {self.state_dim}")
        if not 0 <= self.n_past_actions < self.horizon:
            raise ValueError(f"n_past_actions must be in [0, horizon={self.horizon}), got {self.n_past_actions} "
                             "(at least one future action per chunk)")
        if self.width % self.heads or (self.width // self.heads) % 2:
            raise ValueError(f"width {self.width} must be divisible by heads {self.heads} into an even head "
                             "width (rotary positions)")
        qw, qh = self.qformer_dim, self.qformer_num_heads
        if qw % qh:
            raise ValueError(f"qformer_width {qw} must be divisible by qformer_heads {qh}")
        if qw % 4:
            raise ValueError(f"qformer_width {qw} must be divisible by 4 (2-D sinusoidal patch positions)")
        if self.qformer_mlp_ratio <= 0:
            raise ValueError(f"qformer_mlp_ratio must be > 0, got {self.qformer_mlp_ratio}")
        if not 0.0 <= self.vision_lr_scale:
            raise ValueError(f"vision_lr_scale must be >= 0, got {self.vision_lr_scale}")
        if self.beta_schedule not in BETA_SCHEDULES:
            raise ValueError(f"beta_schedule {self.beta_schedule!r} not one of {BETA_SCHEDULES}")
        if self.num_train_timesteps < 2:
            raise ValueError(f"num_train_timesteps must be >= 2, got {self.num_train_timesteps}")
        if self.num_inference_steps > self.num_train_timesteps:
            raise ValueError(f"num_inference_steps {self.num_inference_steps} exceeds num_train_timesteps "
                             f"{self.num_train_timesteps}")
        if self.ddim_eta < 0:
            raise ValueError(f"ddim_eta must be >= 0, got {self.ddim_eta}")
        for name in ("state_norm", "action_norm"):
            if getattr(self, name) not in NORM_MODES:
                raise ValueError(f"{name} {getattr(self, name)!r} not one of {NORM_MODES}")
        if self.norm_on_constant not in ON_CONSTANT:
            raise ValueError(f"norm_on_constant {self.norm_on_constant!r} not one of {ON_CONSTANT}")

    # --- derived ------------------------------------------------------------------------------

    @property
    def qformer_dim(self) -> int:
        """Q-Former width (``qformer_width`` or the backbone width)."""
        return int(self.qformer_width or self.width)

    @property
    def qformer_num_heads(self) -> int:
        """Q-Former heads (``qformer_heads`` or the backbone heads)."""
        return int(self.qformer_heads or self.heads)

    @property
    def chunk_size(self) -> int:
        """Actions returned by ``sample_actions`` for execution: horizon - n_past_actions."""
        return self.horizon - self.n_past_actions

    @property
    def num_image_tokens(self) -> int:
        """Image tokens in the prefix: frames x cameras x queries."""
        return self.n_obs_steps * len(self.cameras) * self.num_queries

    def delta_indices(self) -> dict[str, list[int]]:
        """Frame offsets per key around the current step t, for the dataset's window sampler.

        Images (and state): t - n_obs + 1 .. t; action: t - n_past .. t + horizon - n_past - 1.
        """
        obs = list(range(-(self.n_obs_steps - 1), 1))
        out: dict[str, list[int]] = {image_key(c): list(obs) for c in self.cameras}
        if self.state_dim:
            out[STATE] = list(obs)
        out[ACTION] = list(range(-self.n_past_actions, self.horizon - self.n_past_actions))
        return out


DitaConfig.PRESETS = {
    "tiny": dict(
        cameras=["left", "wrist"], image_size=[32, 32], state_dim=4, action_dim=3, n_obs_steps=2, horizon=4,
        vision_encoder="tiny", vision_encoder_kwargs={"out_dim": 16, "stride": 16, "hidden": 8},
        text_encoder="tiny", text_encoder_kwargs={"out_dim": 16},
        num_queries=4, qformer_layers=1, qformer_mlp_ratio=2.0,
        width=32, layers=2, heads=2, mlp_hidden=64,
        num_train_timesteps=100, beta_schedule="squaredcos_cap_v2", num_inference_steps=4,
    ),
    "small": dict(
        cameras=["left", "right", "wrist"], image_size=[128, 128], state_dim=9, action_dim=7, n_obs_steps=2,
        horizon=16, vision_encoder="efficientnet_lite0", text_encoder="minilm",
        num_queries=16, qformer_layers=2, width=384, layers=8, heads=6, mlp_hidden=1024,
        num_train_timesteps=1000, beta_schedule="linear", num_inference_steps=10,
    ),
    "paper_sized": dict(
        cameras=["left", "right", "wrist"], image_size=[128, 128], state_dim=0, action_dim=7, n_obs_steps=2,
        horizon=16, n_past_actions=1, vision_encoder="efficientnet_lite0", vision_encoder_kwargs={"frozen": False},
        vision_lr_scale=0.1, text_encoder="minilm",
        num_queries=32, qformer_layers=4, width=768, layers=12, heads=12, mlp_hidden=2048,
        num_train_timesteps=1000, beta_schedule="linear", num_inference_steps=10,
    ),
}
