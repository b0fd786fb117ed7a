"""The small encoder interfaces every policy codes against, plus shared helpers.

``VisionEncoder``: float images (N, 3, H, W) in [0, 1] -> patch grid (N, C, h, w) and pooled (N, C).
``TextEncoder``: list of N strings -> tokens (N, L, D), mask (N, L) bool (True = valid), pooled (N, D).

A *frozen* encoder has no trainable parameters, always runs in eval mode (``.train()``
on a parent module leaves it in eval) and runs under ``torch.no_grad``; its outputs
are plain tensors that downstream trainable layers may consume.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import math
from collections import OrderedDict
from typing import Iterator, Sequence

import torch
from torch import Tensor, nn


def seeded_init(seed: int | None):
    """Context manager: module construction inside it draws from ``torch.manual_seed(seed)``
    without disturbing the caller's global RNG (a no-op when ``seed`` is None)."""
    if seed is None:
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def _ctx():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            yield

    return _ctx()


class _FrozenMixin:
    """Freezing behaviour shared by vision and text encoders."""

    frozen: bool

    def _apply_freeze(self) -> None:
        """Turn off gradients of every parameter and switch to eval mode when ``self.frozen``."""
        if self.frozen:
            for p in self.parameters():
                p.requires_grad_(False)
            nn.Module.train(self, False)

    def train(self, mode: bool = True):
        """Like ``nn.Module.train`` but a frozen encoder stays in eval mode."""
        return nn.Module.train(self, bool(mode) and not self.frozen)

    def _grad_ctx(self):
        """``torch.no_grad()`` for a frozen encoder, otherwise a null context."""
        return torch.no_grad() if self.frozen else contextlib.nullcontext()

    def fingerprint(self) -> str:
        """A short hash of the encoder's name and weights (parameters and buffers).

        Stored beside cached features so a cache written by different weights is detected."""
        h = hashlib.sha1(self.name.encode())
        for k, v in sorted(self.state_dict().items()):
            h.update(k.encode())
            t = v.detach().to("cpu").contiguous()
            h.update(str(tuple(t.shape)).encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        return h.hexdigest()[:16]


class VisionEncoder(_FrozenMixin, nn.Module):
    """Images (N, 3, H, W) float in [0, 1] -> (patch grid (N, C, h, w), pooled (N, C)).

    Attributes: ``out_dim`` (C), ``frozen``, ``name`` (the feature-cache encoder name).
    """

    out_dim: int
    frozen: bool
    name: str

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:  # pragma: no cover - abstract
        """Encode images: (N, 3, H, W) -> (N, C, h, w), (N, C)."""
        raise NotImplementedError

    def grid_size(self, image_hw: Sequence[int]) -> tuple[int, int]:  # pragma: no cover - abstract
        """(h, w) of the patch grid for input images of size ``image_hw`` = (H, W)."""
        raise NotImplementedError

    def num_tokens(self, image_hw: Sequence[int]) -> int:
        """h * w: the number of patch tokens for images of size (H, W)."""
        h, w = self.grid_size(image_hw)
        return h * w

    def extra_repr(self) -> str:
        return f"name={self.name!r}, out_dim={self.out_dim}, frozen={self.frozen}"


class TextEncoder(_FrozenMixin, nn.Module):
    """Instructions (list of N str) -> (tokens (N, L, D), mask (N, L) bool True=valid, pooled (N, D)).

    Attributes: ``out_dim`` (D), ``frozen``, ``name``.
    """

    out_dim: int
    frozen: bool
    name: str

    def forward(self, texts: list[str]) -> tuple[Tensor, Tensor, Tensor]:  # pragma: no cover - abstract
        """Encode a batch of strings."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"name={self.name!r}, out_dim={self.out_dim}, frozen={self.frozen}"


def module_device(module: nn.Module) -> torch.device:
    """The device of a module's first parameter or buffer (CPU when it has none)."""
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")


def module_dtype(module: nn.Module) -> torch.dtype:
    """The floating dtype of a module's first floating parameter or buffer (float32 when it has none)."""
    for t in itertools.chain(module.parameters(), module.buffers()):
        if t.is_floating_point():
            return t.dtype
    return torch.float32


def check_images(images, who: str, like: nn.Module | None = None) -> Tensor:
    """Validate encoder input: a float tensor (N, 3, H, W) in [0, 1]; raise naming the problem.

    With ``like``, the images are returned on that module's device and in its floating dtype."""
    if not isinstance(images, Tensor):
        raise TypeError(f"{who}: images must be a torch.Tensor (N, 3, H, W) float in [0, 1], got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"{who}: images must be (N, 3, H, W) channels-first RGB, got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"{who}: images must be floating point in [0, 1], got dtype {images.dtype} "
                        "(convert uint8 frames with images.float() / 255)")
    if images.shape[0] == 0 or images.shape[2] == 0 or images.shape[3] == 0:
        raise ValueError(f"{who}: empty image batch {tuple(images.shape)}")
    if like is not None:
        images = images.to(device=module_device(like), dtype=module_dtype(like))
    return images


def check_texts(texts, who: str) -> list[str]:
    """Validate text-encoder input: a list/tuple of strings, each text or exactly ``""`` (no
    instruction: the blank-instruction control; every encoder still emits its start token);
    whitespace-only strings are refused as a likely bug. Raise naming the problem."""
    if isinstance(texts, str):
        raise TypeError(f"{who}: pass a list of strings (one per batch element), got a single str {texts!r}")
    try:
        texts = list(texts)
    except TypeError:
        raise TypeError(f"{who}: texts must be a list of str, got {type(texts).__name__}") from None
    if not texts:
        raise ValueError(f"{who}: empty batch of texts")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"{who}: texts[{i}] must be str, got {type(t).__name__}")
        if t and not t.strip():
            raise ValueError(f"{who}: texts[{i}] is an empty instruction (whitespace only; \"\" means none)")
    return texts


def downsampled(size: int, n_halvings: int) -> int:
    """Spatial size after ``n_halvings`` stride-2 'same' steps: ceil(size / 2) each time."""
    for _ in range(n_halvings):
        size = math.ceil(size / 2)
    return size


def masked_mean(tokens: Tensor, mask: Tensor) -> Tensor:
    """Mean of tokens (N, L, D) over valid positions of mask (N, L) -> (N, D)."""
    m = mask.to(tokens.dtype).unsqueeze(-1)  # (N, L, 1)
    return (tokens * m).sum(1) / m.sum(1).clamp_min(1.0)  # (N, D)


def sinusoidal_1d(length: int, dim: int, device=None) -> Tensor:
    """Fixed sinusoidal positions (length, dim), as in 'Attention is all you need'."""
    pos = torch.arange(length, dtype=torch.float32, device=device)[:, None]  # (L, 1)
    half = dim // 2
    freq = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=device) / max(half, 1))
    ang = pos * freq[None]  # (L, half)
    out = torch.zeros(length, dim, device=device)
    out[:, 0:2 * half:2] = torch.sin(ang)
    out[:, 1:2 * half:2] = torch.cos(ang)
    return out  # (L, dim)


class EmbeddingCache:
    """An LRU cache of per-string text embeddings: text -> (tokens (L_i, D), pooled (D,)).

    Instructions repeat a lot in robot data, so a frozen text encoder encodes each
    distinct string once. ``hits`` / ``misses`` count lookups.
    """

    def __init__(self, max_size: int):
        if max_size < 0:
            raise ValueError(f"cache size must be >= 0, got {max_size}")
        self.max_size = int(max_size)
        self._d: OrderedDict[str, tuple[Tensor, Tensor]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, text: str) -> tuple[Tensor, Tensor] | None:
        """The cached pair for ``text`` (marked most recent), or None."""
        v = self._d.get(text)
        if v is None:
            self.misses += 1
            return None
        self.hits += 1
        self._d.move_to_end(text)
        return v

    def put(self, text: str, tokens: Tensor, pooled: Tensor) -> None:
        """Store a pair, evicting the least recently used beyond ``max_size``."""
        if self.max_size == 0:
            return
        self._d[text] = (tokens, pooled)
        self._d.move_to_end(text)
        while len(self._d) > self.max_size:
            self._d.popitem(last=False)

    def clear(self) -> None:
        """Drop every entry and reset the counters."""
        self._d.clear()
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._d)

    def __iter__(self) -> Iterator[str]:
        return iter(self._d)


def assemble_cached(texts: list[str], entries: dict[str, tuple[Tensor, Tensor]], pad_to: int | None,
                    device) -> tuple[Tensor, Tensor, Tensor]:
    """Pad per-string (tokens (L_i, D), pooled (D,)) into (N, L, D), mask (N, L), pooled (N, D)."""
    lengths = [entries[t][0].shape[0] for t in texts]
    length = max(lengths) if pad_to is None else pad_to
    dim = entries[texts[0]][0].shape[-1]
    tokens = torch.zeros(len(texts), length, dim, dtype=entries[texts[0]][0].dtype, device=device)  # (N, L, D)
    mask = torch.zeros(len(texts), length, dtype=torch.bool, device=device)  # (N, L)
    for i, t in enumerate(texts):
        tok = entries[t][0]  # (L_i, D)
        tokens[i, : tok.shape[0]] = tok.to(device)
        mask[i, : tok.shape[0]] = True
    pooled = torch.stack([entries[t][1].to(device) for t in texts])  # (N, D)
    return tokens, mask, pooled
