"""Normalisation of low-dimensional features (state, action), saved inside checkpoints.

Modes, per key, each an affine map ``x_n = (x - offset) / scale``:

    mean_std   offset = mean,              scale = std             (zero mean, unit variance)
    min_max    offset = (max + min) / 2,   scale = (max - min) / 2 ([min, max] -> [-1, 1])
    q01_q99    offset = (q99 + q01) / 2,   scale = (q99 - q01) / 2 ([q01, q99] -> [-1, 1])
    identity   offset = 0,                 scale = 1

Statistics come as the store's ``compute_stats()`` output, ``{key: {mean, std, min, max,
q01, q99}}`` (lists, numpy arrays or tensors, one value per dimension). Offsets and scales
are buffers, so they travel in ``model.safetensors``; a normalizer built without statistics
(as ``from_pretrained`` does before loading) refuses to run until it is fitted or loaded.

Bad statistics fail loudly: NaN/inf values, a missing key or field, a dimension mismatch,
and near-zero scales (constant dimensions). For constant dimensions pass
``on_constant="unit"`` to use scale 1 there (the dimension is then only centred).
"""

from __future__ import annotations

import warnings
from typing import Any, Mapping

import numpy as np
import torch
from torch import Tensor, nn

NORM_MODES = ("mean_std", "min_max", "q01_q99", "identity")
_FIELDS = {"mean_std": ("mean", "std"), "min_max": ("min", "max"), "q01_q99": ("q01", "q99"), "identity": ()}
ON_CONSTANT = ("raise", "unit")


def _slot(key: str) -> str:
    """Module-safe name of a flat key (``observation.state`` -> ``observation__state``)."""
    return key.replace(".", "__")


class _Affine(nn.Module):
    """offset and scale buffers of one key, each (dim,)."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("offset", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))


class Normalizer(nn.Module):
    """Per-key affine normalisation of flat features.

    Args:
        dims: key -> feature dimension, e.g. ``{"observation.state": 9, "action": 7}``.
        modes: key -> one of :data:`NORM_MODES` (every key in ``dims`` needs a mode).
        stats: optional statistics to fit right away (see :meth:`fit`).
        min_scale: scales below this count as constant dimensions.
        on_constant: ``"raise"`` (default) or ``"unit"`` (scale 1 there, with a warning).
        clip: clamp normalised min_max / q01_q99 values to [-1, 1].
    """

    def __init__(self, dims: Mapping[str, int], modes: Mapping[str, str],
                 stats: Mapping[str, Mapping[str, Any]] | None = None, min_scale: float = 1e-6,
                 on_constant: str = "raise", clip: bool = False):
        super().__init__()
        missing = sorted(set(dims) - set(modes))
        if missing:
            raise ValueError(f"normalizer: no mode for {missing}; give one of {NORM_MODES} per key")
        for k, m in modes.items():
            if m not in NORM_MODES:
                raise ValueError(f"normalizer: mode {m!r} for {k!r} is not one of {NORM_MODES}")
        if on_constant not in ON_CONSTANT:
            raise ValueError(f"normalizer: on_constant {on_constant!r} is not one of {ON_CONSTANT}")
        self.dims = {k: int(d) for k, d in dims.items()}
        self.modes = {k: modes[k] for k in dims}
        self.min_scale, self.on_constant, self.clip = float(min_scale), on_constant, bool(clip)
        self.affine = nn.ModuleDict({_slot(k): _Affine(d) for k, d in self.dims.items()})
        # 1 once fitted (or loaded from a fitted checkpoint); identity-only normalizers need no stats
        need = any(m != "identity" for m in self.modes.values())
        self.register_buffer("fitted", torch.tensor(0 if need else 1, dtype=torch.uint8))
        if stats is not None:
            self.fit(stats)

    # ------------------------------------------------------------ fitting

    def _vector(self, key: str, field: str, stats: Mapping[str, Any]) -> np.ndarray:
        if field not in stats:
            raise ValueError(f"normalizer: stats for {key!r} lack {field!r} (mode {self.modes[key]!r} "
                             f"needs {_FIELDS[self.modes[key]]}); got fields {sorted(stats)}")
        v = stats[field]
        v = v.detach().cpu().numpy() if isinstance(v, Tensor) else np.asarray(v)
        v = np.asarray(v, dtype=np.float64).reshape(-1)
        dim = self.dims[key]
        if v.size == 1:
            v = np.full(dim, v.item())
        if v.size != dim:
            raise ValueError(f"normalizer: stats[{key!r}][{field!r}] has {v.size} values, expected {dim}")
        bad = np.flatnonzero(~np.isfinite(v))
        if bad.size:
            raise ValueError(f"normalizer: stats[{key!r}][{field!r}] is not finite at dims {bad.tolist()} "
                             f"({v[bad].tolist()}); recompute the dataset statistics")
        return v

    def fit(self, stats: Mapping[str, Mapping[str, Any]]) -> "Normalizer":
        """Set offsets and scales from ``{key: {mean, std, min, max, q01, q99}}`` (extra keys ignored)."""
        for key, mode in self.modes.items():
            if mode == "identity":
                continue
            if key not in stats:
                raise ValueError(f"normalizer: no statistics for {key!r}; stats hold {sorted(stats)}")
            lo_f, hi_f = _FIELDS[mode]
            a, b = self._vector(key, lo_f, stats[key]), self._vector(key, hi_f, stats[key])
            if mode == "mean_std":
                offset, scale = a, b
                if (scale < 0).any():
                    raise ValueError(f"normalizer: negative std for {key!r} at dims {np.flatnonzero(scale < 0).tolist()}")
            else:
                if (b < a).any():
                    raise ValueError(f"normalizer: {hi_f} < {lo_f} for {key!r} at dims {np.flatnonzero(b < a).tolist()}")
                offset, scale = (a + b) / 2, (b - a) / 2
            small = np.flatnonzero(scale < self.min_scale)
            if small.size:
                msg = (f"normalizer: {key!r} has (near-)constant dims {small.tolist()} under {mode!r} "
                       f"(scale {scale[small].tolist()} < {self.min_scale})")
                if self.on_constant == "raise":
                    raise ValueError(msg + "; fix the statistics, or set on_constant='unit' (policy config "
                                     "field norm_on_constant) to only centre those dims")
                warnings.warn(msg + "; using scale 1 there", stacklevel=2)
                scale = scale.copy()
                scale[small] = 1.0
            slot = self.affine[_slot(key)]
            slot.offset.copy_(torch.as_tensor(offset, dtype=slot.offset.dtype))
            slot.scale.copy_(torch.as_tensor(scale, dtype=slot.scale.dtype))
        self.fitted.fill_(1)
        return self

    # ------------------------------------------------------------ use

    def _get(self, key: str, x: Tensor) -> _Affine:
        if key not in self.dims:
            raise KeyError(f"normalizer: unknown key {key!r}; it normalizes {sorted(self.dims)}")
        if not int(self.fitted):
            raise RuntimeError(f"normalizer has no statistics (needed for {key!r}): build the policy with "
                               "stats=<dataset compute_stats()> or load a trained checkpoint")
        if x.shape[-1] != self.dims[key]:
            raise ValueError(f"{key!r}: expected last dimension {self.dims[key]}, got shape {tuple(x.shape)}")
        return self.affine[_slot(key)]

    def normalize(self, key: str, x: Tensor) -> Tensor:
        """x (..., dim) in physical units -> normalised (..., dim)."""
        a = self._get(key, x)
        y = (x - a.offset.to(x.dtype)) / a.scale.to(x.dtype)
        if self.clip and self.modes[key] in ("min_max", "q01_q99"):
            y = y.clamp(-1.0, 1.0)
        return y

    def unnormalize(self, key: str, x: Tensor) -> Tensor:
        """Inverse of :meth:`normalize` (without undoing clipping): (..., dim) -> physical units."""
        a = self._get(key, x)
        return x * a.scale.to(x.dtype) + a.offset.to(x.dtype)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}: {m}[{self.dims[k]}]" for k, m in self.modes.items())
