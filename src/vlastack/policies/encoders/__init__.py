"""Encoders behind small interfaces: vision, text and state.

    from vlastack.policies.encoders import make_vision_encoder, make_text_encoder, StateEncoder
    vis = make_vision_encoder("efficientnet_lite0")       # frozen ImageNet EfficientNet-lite0
    grid, pooled = vis(images)                           # (N, 3, H, W) [0, 1] -> (N, 1280, H/32, W/32), (N, 1280)
    txt = make_text_encoder("minilm")                    # frozen all-MiniLM-L6-v2
    tokens, mask, pooled = txt(["open the drawer"])      # (1, L, 384), (1, L) bool, (1, 384)

Vision names: "efficientnet_lite0" (pretrained, frozen; ``layer=`` picks the feature map),
"resnet18_gn" (GroupNorm ResNet-18 from scratch, trainable), "hf:<path>" (any transformers
vision tower), "tiny" (random convs for tests). Text names: "minilm", "hf:<path>", "tiny".
Every factory passes keyword arguments to the class (``frozen=`` among them);
``cache_name=`` overrides the encoder's ``name`` (its feature-cache name). ``register_vision_encoder`` / ``register_text_encoder``
add more names.
"""

from __future__ import annotations

from typing import Callable

from .base import EmbeddingCache, TextEncoder, VisionEncoder
from .efficientnet import EfficientNetLite0Encoder
from .hf import HFTextEncoder, HFVisionEncoder, make_minilm, minilm_path
from .resnet import ResNet18GNEncoder, SpatialSoftmax
from .state import StateEncoder
from .tiny import TinyTextEncoder, TinyVisionEncoder

HF_PREFIX = "hf:"

VISION_ENCODERS: dict[str, Callable[..., VisionEncoder]] = {
    "efficientnet_lite0": EfficientNetLite0Encoder,
    "resnet18_gn": ResNet18GNEncoder,
    "tiny": TinyVisionEncoder,
}
TEXT_ENCODERS: dict[str, Callable[..., TextEncoder]] = {
    "minilm": make_minilm,
    "tiny": TinyTextEncoder,
}


def register_vision_encoder(name: str, factory: Callable[..., VisionEncoder]) -> None:
    """Add a vision encoder factory under ``name`` (raises if taken)."""
    if name in VISION_ENCODERS or name.startswith(HF_PREFIX):
        raise ValueError(f"vision encoder name {name!r} is taken or reserved")
    VISION_ENCODERS[name] = factory


def register_text_encoder(name: str, factory: Callable[..., TextEncoder]) -> None:
    """Add a text encoder factory under ``name`` (raises if taken)."""
    if name in TEXT_ENCODERS or name.startswith(HF_PREFIX):
        raise ValueError(f"text encoder name {name!r} is taken or reserved")
    TEXT_ENCODERS[name] = factory


def make_vision_encoder(name: str, **kw) -> VisionEncoder:
    """Build a vision encoder by name: one of VISION_ENCODERS or "hf:<local path or cached hub id>"."""
    if not isinstance(name, str):
        raise TypeError(f"vision encoder name must be str, got {type(name).__name__}")
    if "cache_name" in kw:
        kw["name"] = kw.pop("cache_name")
    if name.startswith(HF_PREFIX):
        if not name[len(HF_PREFIX):]:
            raise ValueError("vision encoder 'hf:' needs a path, e.g. 'hf:/models/siglip-base'")
        return HFVisionEncoder(name[len(HF_PREFIX):], **kw)
    if name not in VISION_ENCODERS:
        raise ValueError(f"unknown vision encoder {name!r}; choose one of {sorted(VISION_ENCODERS)} or 'hf:<path>'")
    return VISION_ENCODERS[name](**kw)


def make_text_encoder(name: str, **kw) -> TextEncoder:
    """Build a text encoder by name: one of TEXT_ENCODERS or "hf:<local path or cached hub id>"."""
    if not isinstance(name, str):
        raise TypeError(f"text encoder name must be str, got {type(name).__name__}")
    if "cache_name" in kw:
        kw["name"] = kw.pop("cache_name")
    if name.startswith(HF_PREFIX):
        if not name[len(HF_PREFIX):]:
            raise ValueError("text encoder 'hf:' needs a path, e.g. 'hf:/models/clip-text'")
        return HFTextEncoder(name[len(HF_PREFIX):], **kw)
    if name not in TEXT_ENCODERS:
        raise ValueError(f"unknown text encoder {name!r}; choose one of {sorted(TEXT_ENCODERS)} or 'hf:<path>'")
    return TEXT_ENCODERS[name](**kw)


__all__ = [
    "VisionEncoder", "TextEncoder", "StateEncoder", "EmbeddingCache",
    "EfficientNetLite0Encoder", "ResNet18GNEncoder", "SpatialSoftmax", "HFVisionEncoder", "HFTextEncoder",
    "TinyVisionEncoder", "TinyTextEncoder", "make_minilm", "minilm_path",
    "make_vision_encoder", "make_text_encoder", "register_vision_encoder", "register_text_encoder",
    "VISION_ENCODERS", "TEXT_ENCODERS", "HF_PREFIX",
]
