"""DUST configuration: one typed dataclass, every published knob a field, validated on creation.

Presets (``DUSTConfig.preset(name, **overrides)``):

    tiny         tests: tiny random encoders, 32x32 images, width 32; a train step well under a second
    small        CPU benchmarks: frozen EfficientNet-lite0 + MiniLM, three 128x128 cameras,
                 width 256, 4 MMDiT + 2 stream blocks (about 21M trainable parameters); the
                 world model predicts the first camera's future frame (4 tokens), as the paper
                 predicts one frame: a training step takes 1.14x the no-world-model ablation's
                 FLOPs (49.0 / 43.1 GFLOP at batch 32), where every camera's future (12 tokens)
                 took 1.39x (59.9), at no measured loss of success
    paper_sized  the published sizes, not the published encoders: 12 MMDiT + 4 stream blocks,
                 width 1536, 32 heads, H = 16, 64 future-feature tokens (for GPUs), on the
                 offline EfficientNet-lite0 + MiniLM. The paper conditions on Eagle-2 (layer 12)
                 and predicts SigLIP-2 features; no such weights can be had offline. With a
                 local copy of a tower, pass ``vision_encoder="hf:/path/to/siglip2"`` (and
                 ``text_encoder="hf:..."``), see :mod:`vlastack.policies.encoders.hf`.
                 ``paper`` is a deprecated alias of ``paper_sized``.

The ablation grid (see :mod:`.strategies`) is picked with ``strategy=``; the presets
``small_<strategy>`` are ``small`` with each strategy: ``small_mmdit_joint``,
``small_dit_decoupled``, ``small_dit_joint``, ``small_no_wm`` (``small`` itself is
``mmdit_decoupled``, DUST as published).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ...types import ACTION, STATE, image_key
from ..base import PolicyConfig
from ..normalizer import NORM_MODES, ON_CONSTANT
from .strategies import STRATEGIES, canonical_strategy

FUTURE_TARGET_NORMS = ("layernorm", "none")


@dataclass
class DUSTConfig(PolicyConfig):
    """DUST: dual-stream flow-matching VLA with a world-model stream (arXiv 2510.27607)."""

    # --- inputs (the data contract) -----------------------------------------------------
    cameras: tuple[str, ...] = ("left", "right", "wrist")
    image_size: tuple[int, int] = (128, 128)  # (H, W) of every camera
    state_dim: int = 9
    action_dim: int = 7
    n_obs_steps: int = 1  # observation history (frames t - n_obs + 1 .. t)
    horizon: int = 16  # H: action tokens per chunk (a_t .. a_{t+H-1})
    future_offset: int = 16  # k: the world-model stream predicts frame t + k

    # --- encoders (frozen vision tower is the world-model target) -------------------------
    vision_encoder: str = "efficientnet_lite0"
    vision_encoder_kwargs: dict[str, Any] = field(default_factory=dict)
    text_encoder: str = "minilm"
    text_encoder_kwargs: dict[str, Any] = field(default_factory=dict)

    # --- conditioning: vision tokens of current frames + text tokens -> self-attention ---
    cond_layers: int = 4
    cond_grid: tuple[int, int] | None = None  # average-pool each camera's grid to this (None: as is)

    # --- world-model stream ---------------------------------------------------------------
    future_cameras: tuple[str, ...] | None = None  # cameras whose future frame is predicted, by name (wins)
    num_future_cameras: int | None = None  # else the first N of ``cameras`` (None: every camera)
    future_grid: tuple[int, int] = (8, 8)  # tokens per future camera (encoder grid average-pooled)
    future_target_norm: str = "layernorm"  # per-token normalisation of the target features
    future_mlp_hidden: int | None = None  # hidden width of the 3-layer encoder / 2-layer decoder (None: width)
    mask_padded_future: bool = False  # drop the world-model loss where the future frame is padding

    # --- transformer ------------------------------------------------------------------------
    width: int = 1536
    heads: int = 32
    mlp_ratio: float = 4.0
    n_mmdit: int = 12  # joint-attention blocks (dit_* strategies: n_mmdit + n_stream_blocks shared DiT blocks)
    n_stream_blocks: int = 4  # stream-specific DiT blocks after them, per stream
    mmdit_cross_attention: bool = True  # MMDiT blocks cross-attend to the conditioning too
    # the pooled instruction embedding added to every adaLN conditioning vector (timestep + text, as SD3's
    # MMDiT does with its pooled text): a direct task signal in every block. Not in the DUST paper (there
    # the instruction reaches the denoiser only through the conditioning tokens); off in its presets
    instruction_adaln: bool = False

    # --- flow matching -------------------------------------------------------------------------
    strategy: str = "mmdit_decoupled"  # DUST; the ablation grid: see strategies.STRATEGIES
    lambda_wm: float = 1.0  # weight of the world-model (vision) loss
    tau_s: float = 0.999
    tau_alpha: float = 1.5
    tau_beta: float = 1.0
    num_action_steps: int = 4  # N_A
    num_vision_steps: int = 4  # N_o = q * N_A (test-time scaling raises it)

    # --- normalisation ------------------------------------------------------------------------
    state_norm: str = "mean_std"
    action_norm: str = "min_max"
    norm_on_constant: str = "raise"  # or "unit": constant dims are only centred

    PRESETS = {}  # filled below the class
    PRESET_ALIASES = {"paper": "paper_sized"}
    #: the DUST paper's optimiser: AdamW, betas (0.95, 0.999), wd 1e-5 (not on biases / norms), 5% warmup
    OPTIM_DEFAULTS = dict(lr=1e-4, betas=(0.95, 0.999), eps=1e-8, weight_decay=1e-5, warmup_fraction=0.05)

    def __post_init__(self):
        self.cameras = tuple(self.cameras)
        self.image_size = tuple(int(s) for s in self.image_size)
        self.future_grid = tuple(int(s) for s in self.future_grid)
        if self.cond_grid is not None:
            self.cond_grid = tuple(int(s) for s in self.cond_grid)
        if self.future_cameras is not None:
            self.future_cameras = tuple(self.future_cameras)
        if not self.cameras or len(set(self.cameras)) != len(self.cameras):
            raise ValueError(f"cameras must be a non-empty list of distinct names, got {self.cameras}")
        if len(self.image_size) != 2 or min(self.image_size) < 1:
            raise ValueError(f"image_size must be (H, W) positive, got {self.image_size}")
        for name in ("state_dim", "action_dim", "n_obs_steps", "horizon", "future_offset", "width", "heads",
                     "n_mmdit", "num_action_steps", "num_vision_steps"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("n_stream_blocks", "cond_layers"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} must be divisible by heads {self.heads}")
        if self.width % 4:
            raise ValueError(f"width {self.width} must be divisible by 4 (2-D sinusoidal positions)")
        if self.strategy not in STRATEGIES:
            try:
                self.strategy = canonical_strategy(self.strategy)
            except ValueError:
                raise ValueError(f"strategy {self.strategy!r} is not one of {sorted(STRATEGIES)}") from None
        if self.future_cameras is not None:
            unknown = [c for c in self.future_cameras if c not in self.cameras]
            if unknown or not self.future_cameras:
                raise ValueError(f"future_cameras {self.future_cameras} must be a non-empty subset of cameras {self.cameras}")
        if self.num_future_cameras is not None and not 1 <= int(self.num_future_cameras) <= len(self.cameras):
            raise ValueError(f"num_future_cameras must be 1..{len(self.cameras)} (the number of cameras) or None, "
                             f"got {self.num_future_cameras}")
        if len(self.future_grid) != 2 or min(self.future_grid) < 1:
            raise ValueError(f"future_grid must be (h, w) positive, got {self.future_grid}")
        if self.cond_grid is not None and (len(self.cond_grid) != 2 or min(self.cond_grid) < 1):
            raise ValueError(f"cond_grid must be (h, w) positive or None, got {self.cond_grid}")
        if self.future_target_norm not in FUTURE_TARGET_NORMS:
            raise ValueError(f"future_target_norm {self.future_target_norm!r} not one of {FUTURE_TARGET_NORMS}")
        if self.lambda_wm < 0:
            raise ValueError(f"lambda_wm must be >= 0, got {self.lambda_wm}")
        if not 0 < self.tau_s <= 1:
            raise ValueError(f"tau_s must be in (0, 1], got {self.tau_s}")
        for name in ("state_norm", "action_norm"):
            if getattr(self, name) not in NORM_MODES:
                raise ValueError(f"{name} {getattr(self, name)!r} not one of {NORM_MODES}")
        if self.norm_on_constant not in ON_CONSTANT:
            raise ValueError(f"norm_on_constant {self.norm_on_constant!r} not one of {ON_CONSTANT}")
        STRATEGIES[self.strategy].check_steps(self.num_action_steps, self.num_vision_steps)

    # --- derived ------------------------------------------------------------------------------

    @property
    def world_model(self) -> bool:
        """Whether the strategy has the world-model (future vision) stream."""
        return STRATEGIES[self.strategy].world_model

    @property
    def future_camera_list(self) -> tuple[str, ...]:
        """Cameras whose future frame the world-model stream predicts: ``future_cameras`` by name, else the
        first ``num_future_cameras`` of ``cameras`` (the overview camera comes first), else all."""
        if self.future_cameras is not None:
            return self.future_cameras
        return self.cameras[:self.num_future_cameras] if self.num_future_cameras else self.cameras

    @property
    def num_future_tokens(self) -> int:
        """Vision-stream length: future cameras x future grid cells (0 without a world model)."""
        return len(self.future_camera_list) * self.future_grid[0] * self.future_grid[1] if self.world_model else 0

    def delta_indices(self) -> dict[str, list[int]]:
        """Frame offsets per key around the current step t, for the dataset's window sampler.

        Images: t - n_obs + 1 .. t, plus t + future_offset for future cameras (world model);
        state: t - n_obs + 1 .. t; action: t .. t + H - 1.
        """
        obs = list(range(-(self.n_obs_steps - 1), 1))
        out: dict[str, list[int]] = {}
        for cam in self.cameras:
            fut = [self.future_offset] if self.world_model and cam in self.future_camera_list else []
            out[image_key(cam)] = obs + fut
        out[STATE] = list(obs)
        out[ACTION] = list(range(self.horizon))
        return out


DUSTConfig.PRESETS = {
    "tiny": dict(
        cameras=["left", "wrist"], image_size=[32, 32], state_dim=4, action_dim=3, horizon=4, future_offset=4,
        vision_encoder="tiny", vision_encoder_kwargs={"out_dim": 16, "stride": 16, "hidden": 8},
        text_encoder="tiny", text_encoder_kwargs={"out_dim": 16},
        cond_layers=1, future_grid=[2, 2], width=32, heads=2, mlp_ratio=2.0, n_mmdit=2, n_stream_blocks=1,
        num_action_steps=2, num_vision_steps=2,
    ),
    "small": dict(
        cameras=["left", "right", "wrist"], image_size=[128, 128], horizon=16, future_offset=16,
        vision_encoder="efficientnet_lite0", text_encoder="minilm",
        cond_layers=2, future_grid=[2, 2], num_future_cameras=1, width=256, heads=4, n_mmdit=4, n_stream_blocks=2,
        num_action_steps=4, num_vision_steps=4,
    ),
    "paper_sized": dict(
        cameras=["left", "right", "wrist"], image_size=[128, 128], horizon=16, future_offset=16,
        vision_encoder="efficientnet_lite0", vision_encoder_kwargs={"layer": "block5"},  # 8x8 grid at 128x128
        text_encoder="minilm", future_cameras=["left"], future_grid=[8, 8],
        cond_layers=4, width=1536, heads=32, n_mmdit=12, n_stream_blocks=4,
        num_action_steps=4, num_vision_steps=4,
    ),
}
for _s in ("mmdit_joint", "dit_decoupled", "dit_joint", "no_wm"):
    DUSTConfig.PRESETS[f"small_{_s}"] = {**DUSTConfig.PRESETS["small"], "strategy": _s}
