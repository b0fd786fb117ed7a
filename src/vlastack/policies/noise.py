"""Noise processes, kept apart from the networks: flow matching and DDPM/DDIM.

Flow matching (DUST, pi0, GR00T convention): tau = 0 is pure noise, tau = 1 is data,

    x_tau = tau * x + (1 - tau) * eps,        target velocity v = x - eps,

tau drawn from p(tau) = Beta((s - tau) / s; 1.5, 1) with s = 0.999 (more weight on noisy
levels, never exactly data), and Euler integration from tau = 0 to 1.

DDPM / DDIM (Dita, Diffusion Policy): training noise is added by ``diffusers``'
:class:`~diffusers.DDPMScheduler` (linear or ``squaredcos_cap_v2`` betas) and samples are
drawn with :class:`~diffusers.DDIMScheduler` built from the same configuration.

The networks only ever see ``(x_t, t)``; the objects here own schedules, targets and samplers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor


def _expand(t: Tensor, like: Tensor) -> Tensor:
    """(B,) -> (B, 1, ..., 1) broadcastable against ``like`` (B, ...)."""
    return t.reshape(t.shape[0], *([1] * (like.dim() - 1))).to(like.dtype)


def _uniform(n: int, generator: torch.Generator | None, device) -> Tensor:
    return torch.rand(n, generator=generator, device=device)  # (n,)


# ---------------------------------------------------------------- flow matching


@dataclass(frozen=True)
class FlowMatching:
    """Rectified-flow / flow-matching process with the pi0 / GR00T time distribution.

    s: upper cut of tau (tau in [0, s]); alpha, beta: the Beta distribution's parameters.
    """

    s: float = 0.999
    alpha: float = 1.5
    beta: float = 1.0

    def __post_init__(self):
        if not 0.0 < self.s <= 1.0:
            raise ValueError(f"flow matching cut s must be in (0, 1], got {self.s}")
        if self.alpha <= 0 or self.beta <= 0:
            raise ValueError(f"Beta parameters must be positive, got ({self.alpha}, {self.beta})")

    def sample_tau(self, n: int, generator: torch.Generator | None = None, device=None) -> Tensor:
        """n noise levels from p(tau) = Beta((s - tau)/s; alpha, beta): tau = s * (1 - u), u ~ Beta.

        Uses the inverse CDF when ``beta == 1`` or ``alpha == 1`` (then ``generator`` is honoured);
        other parameter pairs draw from :class:`torch.distributions.Beta` on the global RNG.
        """
        if self.beta == 1.0:  # CDF(u) = u^alpha
            u = _uniform(n, generator, device) ** (1.0 / self.alpha)  # (n,)
        elif self.alpha == 1.0:  # CDF(u) = 1 - (1 - u)^beta
            u = 1.0 - (1.0 - _uniform(n, generator, device)) ** (1.0 / self.beta)  # (n,)
        else:
            dist = torch.distributions.Beta(torch.tensor(self.alpha, device=device),
                                            torch.tensor(self.beta, device=device))
            u = dist.sample((n,))  # (n,)
        return self.s * (1.0 - u)  # (n,)

    def tau_density(self, tau: Tensor) -> Tensor:
        """p(tau) on [0, s] (for tests and plots): Beta pdf at (s - tau)/s, divided by s."""
        u = ((self.s - tau) / self.s).clamp(0, 1)
        dist = torch.distributions.Beta(torch.tensor(self.alpha), torch.tensor(self.beta))
        inside = (tau >= 0) & (tau <= self.s)
        return torch.where(inside, dist.log_prob(u.clamp(1e-6, 1 - 1e-6)).exp() / self.s, torch.zeros_like(tau))

    @staticmethod
    def interpolate(x: Tensor, eps: Tensor, tau: Tensor) -> Tensor:
        """x, eps (B, ...), tau (B,) -> x_tau = tau * x + (1 - tau) * eps, (B, ...)."""
        t = _expand(tau, x)
        return t * x + (1 - t) * eps

    @staticmethod
    def velocity_target(x: Tensor, eps: Tensor) -> Tensor:
        """The regression target v = x - eps (B, ...)."""
        return x - eps

    @staticmethod
    def time_grid(steps: int) -> list[float]:
        """Euler grid 0 = tau_0 < ... < tau_steps = 1 (uniform), as python floats."""
        if steps < 1:
            raise ValueError(f"need at least one Euler step, got {steps}")
        return [i / steps for i in range(steps + 1)]

    @staticmethod
    def euler_step(x: Tensor, v: Tensor, dt: float) -> Tensor:
        """One Euler step toward data: x + dt * v."""
        return x + dt * v

    def sample(self, velocity_fn: Callable[[Tensor, Tensor], Tensor], noise: Tensor, steps: int) -> Tensor:
        """Integrate dx/dtau = v(x, tau) from tau = 0 (``noise``, (B, ...)) to 1 with ``steps`` Euler steps."""
        grid = self.time_grid(steps)
        x = noise
        for t0, t1 in zip(grid[:-1], grid[1:]):
            tau = torch.full((x.shape[0],), t0, device=x.device, dtype=x.dtype)  # (B,)
            x = self.euler_step(x, velocity_fn(x, tau), t1 - t0)
        return x


# ---------------------------------------------------------------- DDPM / DDIM

BETA_SCHEDULES = ("linear", "squaredcos_cap_v2")
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


class DDPM:
    """Discrete diffusion through ``diffusers``: DDPM noise-adding for training, DDIM sampling.

    num_train_timesteps: T (1000 for Dita pretraining, 100 for fine-tuning);
    beta_schedule: ``linear`` or ``squaredcos_cap_v2``; prediction_type: what the network
    predicts (``epsilon`` for Dita); clip_sample: clamp predicted x0 to [-clip_range, clip_range].
    """

    def __init__(self, num_train_timesteps: int = 1000, beta_schedule: str = "linear",
                 prediction_type: str = "epsilon", beta_start: float = 1e-4, beta_end: float = 0.02,
                 clip_sample: bool = True, clip_range: float = 1.0):
        from diffusers import DDIMScheduler, DDPMScheduler

        if beta_schedule not in BETA_SCHEDULES:
            raise ValueError(f"beta_schedule {beta_schedule!r} not one of {BETA_SCHEDULES}")
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type {prediction_type!r} not one of {PREDICTION_TYPES}")
        if num_train_timesteps < 2:
            raise ValueError(f"num_train_timesteps must be >= 2, got {num_train_timesteps}")
        self.num_train_timesteps = int(num_train_timesteps)
        self.prediction_type = prediction_type
        self.train_scheduler = DDPMScheduler(
            num_train_timesteps=num_train_timesteps, beta_start=beta_start, beta_end=beta_end,
            beta_schedule=beta_schedule, prediction_type=prediction_type, clip_sample=clip_sample,
            clip_sample_range=clip_range)
        self.sample_scheduler = DDIMScheduler.from_config(self.train_scheduler.config)

    def sample_timesteps(self, n: int, generator: torch.Generator | None = None, device=None) -> Tensor:
        """n integer steps uniform in [0, T), int64 (n,)."""
        return torch.randint(0, self.num_train_timesteps, (n,), generator=generator, device=device)

    def add_noise(self, x: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        """x_t = sqrt(abar_t) x + sqrt(1 - abar_t) eps; x, eps (B, ...), t (B,) int."""
        return self.train_scheduler.add_noise(x, eps, t)

    def target(self, x: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        """What the network regresses for ``prediction_type``: eps, x, or v (B, ...)."""
        if self.prediction_type == "epsilon":
            return eps
        if self.prediction_type == "sample":
            return x
        return self.train_scheduler.get_velocity(x, eps, t)

    def sample(self, model_fn: Callable[[Tensor, Tensor], Tensor], noise: Tensor, steps: int = 10,
               eta: float = 0.0, generator: torch.Generator | None = None) -> Tensor:
        """DDIM from ``noise`` (B, ...) in ``steps`` steps; ``model_fn(x_t, t (B,) int64)`` returns the prediction."""
        if not 1 <= steps <= self.num_train_timesteps:
            raise ValueError(f"DDIM steps must be in [1, {self.num_train_timesteps}], got {steps}")
        sched = self.sample_scheduler
        sched.set_timesteps(steps, device=noise.device)
        x = noise
        for t in sched.timesteps:
            tb = torch.full((x.shape[0],), int(t), device=x.device, dtype=torch.long)  # (B,)
            x = sched.step(model_fn(x, tb), int(t), x, eta=eta, generator=generator).prev_sample
        return x

    def timesteps(self, steps: int) -> list[int]:
        """The DDIM timesteps visited for ``steps`` sampling steps (descending)."""
        self.sample_scheduler.set_timesteps(steps)
        return [int(t) for t in self.sample_scheduler.timesteps]
