"""Noise processes: flow-matching interpolant, time distribution, Euler; DDPM/DDIM via diffusers."""
import pytest
import torch

from vlastack.policies.noise import DDPM, FlowMatching


def test_interpolant_endpoints_and_velocity():
    fm = FlowMatching()
    x, eps = torch.randn(3, 4, 2), torch.randn(3, 4, 2)
    assert torch.allclose(fm.interpolate(x, eps, torch.zeros(3)), eps)
    assert torch.allclose(fm.interpolate(x, eps, torch.ones(3)), x)
    tau = torch.tensor([0.1, 0.5, 0.8])
    h = 1e-3
    fd = (fm.interpolate(x, eps, tau + h) - fm.interpolate(x, eps, tau)) / h  # d x_tau / d tau
    assert torch.allclose(fd, fm.velocity_target(x, eps), atol=1e-3)


def test_tau_distribution_matches_beta_cdf():
    fm = FlowMatching(s=0.999)
    tau = fm.sample_tau(40000, generator=torch.Generator().manual_seed(0))
    assert tau.min() >= 0 and tau.max() <= 0.999
    # P(tau <= t) = 1 - (1 - t/s)^1.5 for u ~ Beta(1.5, 1), tau = s (1 - u)
    for t in (0.1, 0.3, 0.6, 0.9):
        emp = (tau <= t).float().mean().item()
        assert abs(emp - (1 - (1 - t / 0.999) ** 1.5)) < 0.01, t
    assert abs(tau.mean().item() - 0.999 * 0.4) < 0.01
    # noisier levels are more likely: the density falls toward data
    assert fm.tau_density(torch.tensor(0.05)) > fm.tau_density(torch.tensor(0.9))


def test_tau_sampling_is_reproducible_and_general_beta_works():
    fm = FlowMatching()
    a = fm.sample_tau(8, generator=torch.Generator().manual_seed(3))
    b = fm.sample_tau(8, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    g = FlowMatching(alpha=2.0, beta=3.0).sample_tau(20000)
    assert abs(g.mean().item() - 0.999 * (1 - 2 / 5)) < 0.02
    with pytest.raises(ValueError):
        FlowMatching(s=0.0)


def test_euler_with_exact_field_reaches_target():
    fm = FlowMatching()
    target = torch.randn(2, 5)
    v = lambda x, tau: (target - x) / (1 - tau[:, None])  # noqa: E731  exact conditional field
    out = fm.sample(v, torch.randn(2, 5), steps=4)
    assert torch.allclose(out, target, atol=1e-5)
    assert fm.time_grid(4) == [0, 0.25, 0.5, 0.75, 1.0]
    with pytest.raises(ValueError):
        fm.time_grid(0)


@pytest.mark.parametrize("schedule", ["linear", "squaredcos_cap_v2"])
def test_ddpm_add_noise_matches_formula(schedule):
    d = DDPM(num_train_timesteps=100, beta_schedule=schedule)
    x, eps = torch.randn(4, 3), torch.randn(4, 3)
    t = torch.tensor([0, 10, 50, 99])
    abar = d.train_scheduler.alphas_cumprod[t][:, None]
    assert torch.allclose(d.add_noise(x, eps, t), abar.sqrt() * x + (1 - abar).sqrt() * eps, atol=1e-6)
    assert torch.equal(d.target(x, eps, t), eps)
    ts = d.sample_timesteps(1000, generator=torch.Generator().manual_seed(0))
    assert ts.min() >= 0 and ts.max() <= 99 and ts.dtype == torch.long


def test_schedules_differ():
    lin = DDPM(beta_schedule="linear").train_scheduler.alphas_cumprod
    cos = DDPM(beta_schedule="squaredcos_cap_v2").train_scheduler.alphas_cumprod
    assert not torch.allclose(lin, cos)


def test_ddim_with_oracle_epsilon_recovers_data():
    d = DDPM(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    x0 = torch.rand(3, 4) * 1.6 - 0.8
    abar = d.train_scheduler.alphas_cumprod

    def oracle(xt, t):  # the epsilon that makes x_t consistent with x0
        a = abar[t][:, None]
        return (xt - a.sqrt() * x0) / (1 - a).sqrt()

    calls = []
    out = d.sample(lambda x, t: (calls.append(int(t[0])), oracle(x, t))[1], torch.randn(3, 4), steps=10)
    assert torch.allclose(out, x0, atol=1e-3)
    assert len(calls) == 10 and calls == d.timesteps(10) and calls[0] > calls[-1]


def test_prediction_types_and_bad_arguments():
    x, eps, t = torch.randn(2, 3), torch.randn(2, 3), torch.tensor([5, 500])
    assert torch.equal(DDPM(prediction_type="sample").target(x, eps, t), x)
    d = DDPM(prediction_type="v_prediction")
    abar = d.train_scheduler.alphas_cumprod[t][:, None]
    assert torch.allclose(d.target(x, eps, t), abar.sqrt() * eps - (1 - abar).sqrt() * x, atol=1e-6)
    with pytest.raises(ValueError, match="beta_schedule"):
        DDPM(beta_schedule="cosine")
    with pytest.raises(ValueError, match="prediction_type"):
        DDPM(prediction_type="x0")
    with pytest.raises(ValueError, match="DDIM steps"):
        DDPM(num_train_timesteps=10).sample(lambda x, t: x, torch.zeros(1, 2), steps=20)
