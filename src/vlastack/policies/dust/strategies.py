"""DUST's variants as strategy objects: which streams exist, how training draws noise
levels, and which denoising steps the sampler takes.

    mmdit_decoupled   DUST as published: action + world-model streams, independent tau per
                      stream, asynchronous sampling (N_o = q * N_A vision steps, actions every q-th)
    mmdit_joint       ablation: both streams, one shared tau; synchronous sampling (N_o = N_A)
    dit_single        ablation / GR00T N1.5-style flow head: the action stream alone (its
                      MMDiT blocks reduce to DiT blocks), no world-model stream

The model asks its strategy; no boolean mode flags are spread through the network code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..noise import FlowMatching


@dataclass(frozen=True)
class Step:
    """One sampler step: vision goes tau_o -> tau_o + dt_o; actions go tau_a -> tau_a + dt_a when ``advance``."""

    tau_a: float
    dt_a: float
    tau_o: float
    dt_o: float
    advance: bool


class Strategy:
    """Base: a named variant with its noise-level sampling and its sampling schedule."""

    name: str = ""
    world_model: bool = True

    def check_steps(self, n_a: int, n_o: int) -> None:
        """Raise unless (N_A, N_o) is a valid step pair for this strategy."""
        if n_a < 1 or n_o < 1:
            raise ValueError(f"{self.name}: need at least one step, got N_A={n_a}, N_o={n_o}")

    def train_taus(self, fm: FlowMatching, n: int, generator: torch.Generator | None = None,
                   device=None) -> tuple[Tensor, Tensor | None]:
        """Noise levels for a training batch: tau_a (n,) and tau_o (n,) or None without a world model."""
        raise NotImplementedError

    def schedule(self, n_a: int, n_o: int) -> list[Step]:
        """The sampler's steps for N_A action steps and N_o vision steps."""
        raise NotImplementedError


class DecoupledNoise(Strategy):
    """Independent tau per stream; vision advances every step, actions every q = N_o / N_A steps.

    Actions advance on the last step of each group of q, so the action velocity is read when
    the predicted future observation is the most refined it gets before the next action level.
    """

    name = "mmdit_decoupled"
    world_model = True

    def check_steps(self, n_a: int, n_o: int) -> None:
        """N_o must be a multiple q * N_A."""
        super().check_steps(n_a, n_o)
        if n_o % n_a:
            raise ValueError(f"{self.name}: N_o ({n_o}) must be a multiple q * N_A of N_A ({n_a})")

    def train_taus(self, fm, n, generator=None, device=None):
        """tau_a and tau_o drawn independently from p(tau)."""
        return fm.sample_tau(n, generator, device), fm.sample_tau(n, generator, device)  # (n,), (n,)

    def schedule(self, n_a: int, n_o: int) -> list[Step]:
        """N_o steps; actions advance on steps q-1, 2q-1, ..."""
        self.check_steps(n_a, n_o)
        q = n_o // n_a
        return [Step(tau_a=(i // q) / n_a, dt_a=1.0 / n_a, tau_o=i / n_o, dt_o=1.0 / n_o, advance=(i % q == q - 1))
                for i in range(n_o)]


class JointNoise(Strategy):
    """One tau shared by both streams (the paper's "joint noise" ablation); N_o must equal N_A."""

    name = "mmdit_joint"
    world_model = True

    def check_steps(self, n_a: int, n_o: int) -> None:
        """N_o must equal N_A."""
        super().check_steps(n_a, n_o)
        if n_o != n_a:
            raise ValueError(f"{self.name}: joint noise samples both streams together, so N_o ({n_o}) "
                             f"must equal N_A ({n_a}); use strategy 'mmdit_decoupled' for test-time scaling")

    def train_taus(self, fm, n, generator=None, device=None):
        """One tau per sample, shared by both streams."""
        tau = fm.sample_tau(n, generator, device)  # (n,)
        return tau, tau.clone()

    def schedule(self, n_a: int, n_o: int) -> list[Step]:
        """N_A synchronous steps, both streams advancing."""
        self.check_steps(n_a, n_o)
        return [Step(i / n_a, 1.0 / n_a, i / n_a, 1.0 / n_a, True) for i in range(n_a)]


class SingleStream(Strategy):
    """Action stream only (GR00T N1.5-style flow-matching DiT head); N_o is ignored."""

    name = "dit_single"
    world_model = False

    def train_taus(self, fm, n, generator=None, device=None):
        """tau_a only."""
        return fm.sample_tau(n, generator, device), None

    def schedule(self, n_a: int, n_o: int) -> list[Step]:
        """N_A action steps."""
        super().check_steps(n_a, max(n_o, 1))
        return [Step(i / n_a, 1.0 / n_a, 0.0, 0.0, True) for i in range(n_a)]


STRATEGIES: dict[str, type[Strategy]] = {s.name: s for s in (DecoupledNoise, JointNoise, SingleStream)}


def make_strategy(name: str) -> Strategy:
    """The strategy object for ``name`` (one of :data:`STRATEGIES`)."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown DUST strategy {name!r}; choose one of {sorted(STRATEGIES)}")
    return STRATEGIES[name]()
