"""DUST's variants as strategy objects: the paper's 2x2 ablation grid plus the no-world-model
baseline. A strategy is a denoiser network kind x a noise coupling:

    strategy          network                                noise       world model  paper (RoboCasa-100)
    mmdit_decoupled   MMDiT: per-stream weights, joint attn  decoupled   yes          DUST          .501
    mmdit_joint       MMDiT                                  joint       yes          MMDiT + joint .382
    dit_decoupled     one shared-weight DiT over both        decoupled   yes          DiT + decoupled .425
    dit_joint         one shared-weight DiT over both        joint       yes          DiT + joint   .380
    no_wm             the action stream alone                (actions)   no           GR00T N1.5    .417

- network ``mmdit``: action tokens and future-frame tokens keep their own weights (LayerNorms,
  QKV, projections, MLPs, adaLN, timestep embedding) and meet in one joint self-attention; then
  stream-specific DiT blocks (:class:`~vlastack.policies.dust.model.DUSTNetwork`).
- network ``dit``: one DiT whose every weight (blocks, adaLN, timestep embedding) is shared by
  the action and future-frame tokens, run over their concatenation with a timestep per token
  (:class:`~vlastack.policies.dust.model.SharedDiTNetwork`); only the modality encoders and
  decoders are per modality. Same depth as the MMDiT stack (``n_mmdit + n_stream_blocks``).
- noise ``decoupled``: tau_A and tau_o drawn independently per sample; asynchronous sampling
  (N_o = q * N_A vision steps, actions every q-th). ``joint``: one tau per sample for both
  modalities; synchronous sampling (N_o = N_A).
- ``no_wm`` has no future-frame tokens and no world-model loss (GR00T N1.5-style flow head).
  Formerly named ``dit_single``, which still loads (old checkpoints and configs) as an alias.

The model asks its strategy; no boolean mode flags are spread through the network code.
"""

from __future__ import annotations

import warnings
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


class NoiseCoupling:
    """How the modalities' noise levels relate: training draws and the sampler's steps."""

    name: str = ""
    world_model: bool = True

    def check_steps(self, n_a: int, n_o: int) -> None:
        """Raise unless (N_A, N_o) is a valid step pair for this coupling."""
        if n_a < 1 or n_o < 1:
            raise ValueError(f"{self.name} noise: need at least one step, got N_A={n_a}, N_o={n_o}")

    def train_taus(self, fm: FlowMatching, n: int, generator: torch.Generator | None = None,
                   device=None) -> tuple[Tensor, Tensor | None]:
        """Noise levels for a training batch: tau_a (n,) and tau_o (n,) or None without a world model."""
        raise NotImplementedError

    def schedule(self, n_a: int, n_o: int) -> list[Step]:
        """The sampler's steps for N_A action steps and N_o vision steps."""
        raise NotImplementedError


class DecoupledNoise(NoiseCoupling):
    """Independent tau per modality; vision advances every step, actions every q = N_o / N_A steps.

    Actions advance on the last step of each group of q, so the action velocity is read when
    the predicted future observation is the most refined it gets before the next action level.
    """

    name = "decoupled"
    world_model = True

    def check_steps(self, n_a: int, n_o: int) -> None:
        """N_o must be a multiple q * N_A."""
        super().check_steps(n_a, n_o)
        if n_o % n_a:
            raise ValueError(f"{self.name} noise: N_o ({n_o}) must be a multiple q * N_A of N_A ({n_a})")

    def train_taus(self, fm, n, generator=None, device=None):
        """tau_a and tau_o drawn independently from p(tau), one of each per sample."""
        return fm.sample_tau(n, generator, device), fm.sample_tau(n, generator, device)  # (n,), (n,)

    def schedule(self, n_a: int, n_o: int) -> list[Step]:
        """N_o steps; actions advance on steps q-1, 2q-1, ..."""
        self.check_steps(n_a, n_o)
        q = n_o // n_a
        return [Step(tau_a=(i // q) / n_a, dt_a=1.0 / n_a, tau_o=i / n_o, dt_o=1.0 / n_o, advance=(i % q == q - 1))
                for i in range(n_o)]


class JointNoise(NoiseCoupling):
    """One tau per sample shared by both modalities (the paper's "joint noise" rows); N_o must equal N_A."""

    name = "joint"
    world_model = True

    def check_steps(self, n_a: int, n_o: int) -> None:
        """N_o must equal N_A."""
        super().check_steps(n_a, n_o)
        if n_o != n_a:
            raise ValueError(f"{self.name} noise samples both modalities together, so N_o ({n_o}) must equal N_A "
                             f"({n_a}); use a decoupled strategy (mmdit_decoupled, dit_decoupled) for "
                             "test-time scaling")

    def train_taus(self, fm, n, generator=None, device=None):
        """One tau per sample, shared by both modalities."""
        tau = fm.sample_tau(n, generator, device)  # (n,)
        return tau, tau.clone()

    def schedule(self, n_a: int, n_o: int) -> list[Step]:
        """N_A synchronous steps, both modalities advancing."""
        self.check_steps(n_a, n_o)
        return [Step(i / n_a, 1.0 / n_a, i / n_a, 1.0 / n_a, True) for i in range(n_a)]


class ActionOnlyNoise(NoiseCoupling):
    """Actions alone (no world model); N_o is ignored."""

    name = "action-only"
    world_model = False

    def train_taus(self, fm, n, generator=None, device=None):
        """tau_a only."""
        return fm.sample_tau(n, generator, device), None

    def schedule(self, n_a: int, n_o: int) -> list[Step]:
        """N_A action steps."""
        super().check_steps(n_a, max(n_o, 1))
        return [Step(i / n_a, 1.0 / n_a, 0.0, 0.0, True) for i in range(n_a)]


SingleStream = ActionOnlyNoise  # the former name of the no-world-model coupling

NETWORKS = ("mmdit", "dit")


@dataclass(frozen=True)
class Strategy:
    """One row of the ablation grid: a denoiser network kind and a noise coupling.

    ``network``: "mmdit" (per-modality weights, joint attention) or "dit" (one shared-weight DiT
    over both token sets, a timestep per token). The noise methods delegate to ``noise``.
    """

    name: str
    network: str
    noise: NoiseCoupling
    summary: str

    def __post_init__(self):
        if self.network not in NETWORKS:
            raise ValueError(f"strategy {self.name!r}: network {self.network!r} is not one of {NETWORKS}")
        if self.network == "dit" and not self.noise.world_model:
            raise ValueError(f"strategy {self.name!r}: the shared-weight DiT needs the world-model tokens")

    @property
    def world_model(self) -> bool:
        """Whether the strategy has the world-model (future-frame) tokens and loss."""
        return self.noise.world_model

    def check_steps(self, n_a: int, n_o: int) -> None:
        """Raise unless (N_A, N_o) is a valid step pair (see the noise coupling)."""
        try:
            self.noise.check_steps(n_a, n_o)
        except ValueError as e:
            raise ValueError(f"strategy {self.name!r}: {e}") from None

    def train_taus(self, fm: FlowMatching, n: int, generator: torch.Generator | None = None,
                   device=None) -> tuple[Tensor, Tensor | None]:
        """Noise levels for a training batch: tau_a (n,), tau_o (n,) or None."""
        return self.noise.train_taus(fm, n, generator, device)

    def schedule(self, n_a: int, n_o: int) -> list[Step]:
        """The sampler's steps for N_A action steps and N_o vision steps."""
        self.check_steps(n_a, n_o)
        return self.noise.schedule(n_a, n_o)


STRATEGIES: dict[str, Strategy] = {s.name: s for s in (
    Strategy("mmdit_decoupled", "mmdit", DecoupledNoise(), "DUST: MMDiT, a noise level per modality"),
    Strategy("mmdit_joint", "mmdit", JointNoise(), "MMDiT, one noise level for both modalities"),
    Strategy("dit_decoupled", "dit", DecoupledNoise(), "shared-weight DiT, a noise level per modality"),
    Strategy("dit_joint", "dit", JointNoise(), "shared-weight DiT, one noise level for both modalities"),
    Strategy("no_wm", "mmdit", ActionOnlyNoise(), "no world model: the action stream alone"),
)}

#: former strategy names, still read from old configs and checkpoints
STRATEGY_ALIASES: dict[str, str] = {"dit_single": "no_wm"}


def canonical_strategy(name: str) -> str:
    """``name``, or the current name of a former one (with a DeprecationWarning); raises for unknown names."""
    if name in STRATEGY_ALIASES:
        new = STRATEGY_ALIASES[name]
        warnings.warn(f"DUST strategy {name!r} is now named {new!r}", DeprecationWarning, stacklevel=3)
        return new
    if name not in STRATEGIES:
        raise ValueError(f"unknown DUST strategy {name!r}; choose one of {sorted(STRATEGIES)}")
    return name


def make_strategy(name: str) -> Strategy:
    """The strategy for ``name`` (one of :data:`STRATEGIES`, or a former name in :data:`STRATEGY_ALIASES`)."""
    return STRATEGIES[canonical_strategy(name)]
