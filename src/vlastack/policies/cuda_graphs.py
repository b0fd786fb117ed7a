"""Batch-1 sampling on a GPU through CUDA graphs, with an eager fallback that says why.

At batch 1 a GPU is launch-bound: DUST small's 4-step chunk costs the same with or without its
action blocks, and Dita's prefix cache is slower than recomputing (docs/gpu.md). Capturing the
whole chunk (image encoder, conditioning, every denoising step with its schedule, the prefix
cache built inside the chunk, unnormalisation) replays it as a few graph launches.

    from vlastack.policies.cuda_graphs import GraphedPolicy
    fast = GraphedPolicy(policy.to("cuda"))        # policy.for_inference(torch.bfloat16, prepack=False) for bf16
    chunk = fast.sample_actions(obs, seed=0)       # same chunk as policy.sample_actions(obs, seed=0)
    fast.reason                                    # None while graphs run; else why it is eager

The chunk is :class:`~vlastack.policies.export.ChunkGraph` (tensor inputs, noise included),
compiled by ``torch.compile`` with the ``cudagraphs`` backend (default: the captured FX graphs
replayed as CUDA graphs, no kernel generation, so compiling takes seconds) or with inductor and
``mode="reduce-overhead"`` (``backend="inductor"``: fused kernels too, slower to compile). The
policies' host-side checks break the graph; each region between breaks is captured and
replayed, and re-recorded only if an input shape changes. The instruction is encoded outside the
graph (its tokenizer runs on the host) and cached by the text encoder. Anything that stops the
graphs (no CUDA device, a batch other than 1, a compile or capture error) makes the call, and
every later one, run the policy's own eager ``sample_actions`` with the same noise, and logs the
reason once.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

import torch

from ..types import ActionChunk, Observation
from .base import Policy
from .export import ChunkGraph, chunk_inputs

log = logging.getLogger(__name__)

DEFAULT_TEXT_LENGTH = 64


class GraphedPolicy:
    """A torch policy whose batch-1 chunks run through CUDA graphs (``torch.compile(mode="reduce-overhead")``).

    ``sampling``: fixed ``sample_actions`` options (the captured schedule). ``reason`` is None while
    graphs are used, else the logged reason for the eager fallback.
    """

    BACKENDS = ("cudagraphs", "inductor")

    def __init__(self, policy: Policy, sampling: Mapping[str, Any] | None = None, backend: str = "cudagraphs"):
        if backend not in self.BACKENDS:
            raise ValueError(f"GraphedPolicy backend {backend!r}: choose one of {list(self.BACKENDS)}")
        self.policy = policy.eval()
        self.backend = backend
        self.config, self.name = policy.config, policy.name
        self.sampling = dict(sampling or {})
        self.text_length = int(getattr(policy.text, "max_length", 0) or DEFAULT_TEXT_LENGTH)
        self.reason: str | None = None
        self.graphed_calls = 0
        self._compiled = None
        if policy.device.type != "cuda":
            self._fallback(f"CUDA graphs need a CUDA device; the policy is on {policy.device}")
        else:
            graph = ChunkGraph(policy, self.sampling)
            self._compiled = torch.compile(graph, backend="cudagraphs", dynamic=False) if backend == "cudagraphs" \
                else torch.compile(graph, mode="reduce-overhead", dynamic=False)

    @property
    def device(self) -> torch.device:
        """The policy's device."""
        return self.policy.device

    def eval(self) -> "GraphedPolicy":
        """Returns self (the policy is in eval mode)."""
        return self

    def initial_noise(self, batch: int, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """The policy's starting noise (same order, same generator)."""
        return self.policy.initial_noise(batch, generator)

    def _fallback(self, reason: str) -> None:
        if self.reason is None:
            log.warning("CUDA graphs off, sampling eagerly: %s", reason)
        self.reason = reason

    def sample_actions(self, obs: Observation | Mapping[str, Any], generator: torch.Generator | None = None,
                       seed: int | None = None) -> ActionChunk:
        """A chunk (B, H, D_a) in physical units; graphs at batch 1, eager otherwise (same noise either way)."""
        names, inputs = chunk_inputs(self.policy, obs, self.text_length, generator, seed, self.device)
        b = inputs[0].shape[0]
        if self._compiled is not None and self.reason is None and b != 1:
            self._fallback(f"graphs are captured for batch 1, got batch {b}")
        if self._compiled is not None and self.reason is None:
            try:
                skips = _cudagraph_skips()
                with torch.no_grad():  # not inference_mode: CUDA-graph trees want ordinary tensors
                    actions = self._compiled(*inputs).clone()  # (1, H, D_a); clone: the graph reuses its output
                if _cudagraph_skips() > skips:  # compiled, but a region could not be captured
                    self._fallback("torch.compile skipped CUDA graphs for a region (TORCH_LOGS=perf_hints says why)")
                    return ActionChunk(actions, extras={"cuda_graphs": False})
                self.graphed_calls += 1
                return ActionChunk(actions, extras={"cuda_graphs": True})
            except Exception as e:  # noqa: BLE001 - any compile / capture failure falls back, with its reason
                self._fallback(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        noise = {n[len("noise."):]: x for n, x in zip(names, inputs) if n.startswith("noise.")}
        chunk = self.policy.sample_actions(obs, noise=noise, **self.sampling)
        return ActionChunk(chunk.actions, extras={**chunk.extras, "cuda_graphs": False})


def _cudagraph_skips() -> int:
    """How many times torch.compile declined to capture a region in a CUDA graph (inductor's counter)."""
    from torch._dynamo.utils import counters

    return int(sum(counters["inductor"].get(k, 0) for k in ("cudagraph_skips",)))


__all__ = ["GraphedPolicy"]
