"""A vlastack policy behind LeRobot's ``PreTrainedPolicy`` interface (no second model: it wraps ours).

    forward(batch)             -> (loss, {loss terms})       vlastack's compute_loss
    predict_action_chunk(obs)  -> (B, H, D_a) actions         vlastack's sample_actions, physical units
    select_action(obs)         -> (B, D_a)                    an action queue over chunks (n_action_steps)
    reset()                                                   empties the observation and action queues
    get_optim_params()                                        vlastack's AdamW parameter groups

Batches from LeRobot follow its conventions; :func:`to_contract` maps them to vlastack's data
contract (the keys are the same names): images float (B, [T,] 3, H, W) in [0, 1] become uint8
(B, [T,] H, W, 3) (exact for frames decoded from 8-bit video or PNG), the state keeps the first
``n_obs_steps`` frames of LeRobot's shared observation window, ``task`` passes through.

Statistics: LeRobot's ``make_policy`` passes ``dataset_stats``; they fit vlastack's normaliser,
whose buffers travel in ``model.safetensors``. The file is written the way vlastack writes it
(no prefix, frozen encoders left out and checked by fingerprint on load), and ``config.json``
carries vlastack's block, so ``vlastack eval checkpoint=<.../pretrained_model>`` loads it too.
"""

from __future__ import annotations

import os
from collections import deque
from pathlib import Path
from typing import Any, Mapping

import torch
from lerobot.policies.pretrained import PreTrainedPolicy
from torch import Tensor

from vlastack.policies import checkpoint as ckpt
from vlastack.policies.base import make_policy
from vlastack.train.builder import policy_stats
from vlastack.types import ACTION, IMAGE_PREFIX, STATE, TASK, image_key, pad_key

from .config import VlastackConfig


def images_to_uint8(x: Tensor) -> Tensor:
    """LeRobot images float (..., 3, H, W) in [0, 1] -> vlastack's uint8 (..., H, W, 3); uint8 passes."""
    if x.dtype == torch.uint8:
        return x
    y = (x * 255.0).round_().clamp_(0, 255).to(torch.uint8)  # (..., 3, H, W)
    return y.movedim(-3, -1)  # (..., H, W, 3)


def to_contract(batch: Mapping[str, Any], cameras: list[str] | tuple[str, ...], n_obs: int) -> dict[str, Any]:
    """A LeRobot batch -> vlastack's data contract (only the keys the policy reads).

    Images of ``cameras`` (B, [T,] 3, H, W) -> uint8 (B, [T,] H, W, 3) with their pad masks; state
    (B, [T,] D) -> its first ``n_obs`` frames (LeRobot gives every observation key the same window);
    ``action`` (B, H, D_a) and ``action_is_pad``; ``task`` (B strings).
    """
    out: dict[str, Any] = {}
    for cam in cameras:
        k = image_key(cam)
        if k in batch:
            out[k] = images_to_uint8(batch[k])
        if pad_key(k) in batch:
            out[pad_key(k)] = batch[pad_key(k)]
    if STATE in batch:
        s = batch[STATE]  # (B, [T,] D_s)
        out[STATE] = s[:, :n_obs] if s.dim() == 3 else s
        if pad_key(STATE) in batch:
            out[pad_key(STATE)] = batch[pad_key(STATE)][:, :n_obs]
    for k in (ACTION, pad_key(ACTION)):
        if batch.get(k) is not None:  # LeRobot's processors leave action=None in observation batches
            out[k] = batch[k]
    if TASK in batch:
        t = batch[TASK]
        out[TASK] = [t] if isinstance(t, str) else list(t)
    return out


class VlastackPolicy(PreTrainedPolicy):
    """Base of the plugin policies: ``config_class`` and ``name`` are set by each plugin's subclass."""

    config_class = VlastackConfig
    name = "vlastack"

    def __init__(self, config: VlastackConfig, dataset_stats: Mapping[str, Mapping[str, Any]] | None = None,
                 **kwargs: Any):
        super().__init__(config)
        config.validate_features()
        cfg = config.resolve()  # preset + dataset + explicit fields, written back into config
        stats = policy_stats(dataset_stats, cfg) if dataset_stats is not None else None
        self.model = make_policy(config.policy_name, cfg, stats=stats)
        self.model.preset = config.preset
        self.reset()

    # ------------------------------------------------------------ shapes

    @property
    def n_obs(self) -> int:
        """Observation frames the policy reads."""
        return int(self.model.config.n_obs_steps)

    def chunk_steps(self) -> int:
        """Actions of a chunk that :meth:`select_action` executes (``n_action_steps``, else the whole chunk)."""
        cfg = self.model.config
        h = int(getattr(cfg, "chunk_size", cfg.horizon))
        return min(self.config.n_action_steps or h, h)

    def _contract(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        return to_contract(batch, self.model.config.cameras, self.n_obs)

    # ------------------------------------------------------------ LeRobot's verbs

    def get_optim_params(self) -> list[dict[str, Any]]:
        """vlastack's AdamW groups (decay / no decay / a trainable backbone at its lr scale).

        Groups at scale 1 carry no ``lr``, so LeRobot's optimizer rate (``--optimizer.lr`` or the
        preset's) applies; a scaled group (Dita's trainable backbone) gets the policy preset's rate
        times its scale.
        """
        from vlastack.train.config import OptimConfig
        from vlastack.train.optim import param_groups

        opt = self.config.get_optimizer_preset()
        groups = param_groups(self.model, OptimConfig(lr=opt.lr, weight_decay=opt.weight_decay,
                                                      betas=list(opt.betas), eps=opt.eps))
        return [{k: v for k, v in g.items() if k != "name" and not (k == "lr" and g["lr_scale"] == 1.0)}
                for g in groups]

    def reset(self) -> None:
        """Empty the observation history and the action queue (call at every episode start)."""
        self._obs: dict[str, deque] = {}
        self._actions: deque = deque()

    def forward(self, batch: Mapping[str, Any], reduction: str = "mean") -> tuple[Tensor, dict[str, float]]:
        """Training loss (vlastack's ``compute_loss``) and its logged terms."""
        if reduction != "mean":
            raise ValueError(f"{self.name}: reduction={reduction!r} is not supported (the loss is a mean over "
                             "valid steps); train without per-sample weighting (use_rabc=false)")
        return self.model.compute_loss(self._contract(batch))

    @torch.no_grad()
    def predict_action_chunk(self, batch: Mapping[str, Any], noise: Tensor | None = None, **kwargs: Any) -> Tensor:
        """A chunk (B, H, D_a) in physical units; images/state may carry the T axis or not (n_obs = 1).

        ``noise``: the sampler's initial action noise (B, horizon, D_a) (LeRobot's keyword; DUST's
        future-feature noise is then drawn as usual); ``kwargs`` go to vlastack's ``sample_actions``
        (``seed=``, DUST's ``num_vision_steps=``, Dita's ``num_inference_steps=``, ...).
        """
        data = self._contract(batch)
        if noise is not None:
            kwargs["noise"] = {**self.model.initial_noise(noise.shape[0]), "action": noise}
        return self.model.sample_actions(data, **kwargs).actions  # (B, H, D_a)

    @torch.no_grad()
    def select_action(self, batch: Mapping[str, Any], noise: Tensor | None = None) -> Tensor:
        """One action (B, D_a) per call: the next of the queued chunk, a new chunk when it runs out.

        Observations come one frame at a time (B, 3, H, W) / (B, D_s); with ``n_obs_steps`` > 1 the
        last frames are kept here (the first frame repeated at an episode start, as padding).
        """
        frames = self._history(batch)
        if not self._actions:
            chunk = self.predict_action_chunk(frames, noise=noise)  # (B, H, D_a)
            self._actions.extend(chunk[:, :self.chunk_steps()].transpose(0, 1))  # H' x (B, D_a)
        return self._actions.popleft()

    def _history(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """``batch`` with images and state stacked over the last ``n_obs`` frames (B, n_obs, ...)."""
        n = self.n_obs
        if n == 1:
            return dict(batch)
        out = dict(batch)
        for k, v in batch.items():
            if not (k == STATE or k.startswith(IMAGE_PREFIX)) or k.endswith("_is_pad") or not isinstance(v, Tensor):
                continue
            q = self._obs.get(k)
            if q is None:
                q = self._obs[k] = deque([v] * n, maxlen=n)
            else:
                q.append(v)
            out[k] = torch.stack(list(q), dim=1)  # (B, n_obs, ...)
        return out

    # ------------------------------------------------------------ checkpoints (vlastack's layout)

    def _save_pretrained(self, save_directory: Path) -> None:
        """``model.safetensors`` and ``README.md`` as vlastack writes them; LeRobot's ``config.json``
        with vlastack's block (the resolved config and frozen-encoder fingerprints) inside."""
        meta, tensors = self.model.checkpoint_parts(extra={"lerobot": {"type": self.config.type}})
        self.config.vlastack = {**meta.to_json()[ckpt.META_KEY], "config": meta.config}
        ckpt.write_checkpoint(save_directory, meta, tensors)  # its config.json is replaced next
        self.config._save_pretrained(Path(save_directory))

    @classmethod
    def _load_as_safetensor(cls, model: "VlastackPolicy", model_file: str, map_location: str,
                            strict: bool) -> "VlastackPolicy":
        """Weights through vlastack's loader (exact names and shapes; frozen encoders checked)."""
        path = os.path.dirname(model_file)
        ckpt.load_weights(model.model, path, ckpt.read_meta(path), strict=True)
        return model.to(map_location)
