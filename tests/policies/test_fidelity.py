"""Fidelity to the papers, checked where the bugs would hide: the world-model target is frame t + k
(store -> window sampler -> compute_loss), noise is drawn independently per modality and per sample
inside ``compute_loss``, and sampling gives back the actions a policy overfit on."""
import inspect

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vlastack.datasets.sampler import WindowSampler
from vlastack.datasets.store import TrajectoryStore
from vlastack.policies.base import make_policy
from vlastack.policies.dita import DitaConfig
from vlastack.policies.dust import STRATEGIES, DUSTConfig
from vlastack.policies.noise import FlowMatching
from vlastack.types import ACTION, STATE, DatasetSpec, fake_batch, image_key

WORLD_MODEL_ROWS = [n for n, s in STRATEGIES.items() if s.world_model]


def _spec(cfg):
    return DatasetSpec.robot(cameras=cfg.cameras, image_size=cfg.image_size, state_dim=cfg.state_dim,
                             action_dim=cfg.action_dim)


def _stats(cfg, lo=None, hi=None):
    lo = [-1.0] * cfg.action_dim if lo is None else lo
    hi = [1.0] * cfg.action_dim if hi is None else hi
    return {STATE: {"mean": [0.0] * cfg.state_dim, "std": [1.0] * cfg.state_dim},
            ACTION: {"min": lo, "max": hi, "q01": lo, "q99": hi}}


def _future_features(policy, images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """What the paper's world model predicts, computed here from the images themselves: the frozen
    encoder's grid of each future camera, average-pooled to the future grid, tokens per-token
    LayerNorm'ed. images: cam -> (B, H, W, 3) uint8 -> (B, N_v, C)."""
    cfg = policy.config
    toks = []
    with torch.no_grad():
        for cam in cfg.future_camera_list:
            x = torch.as_tensor(np.asarray(images[cam])).permute(0, 3, 1, 2).float() / 255  # (B, 3, H, W)
            grid, _ = policy.vision(x)  # (B, C, h, w)
            toks.append(F.adaptive_avg_pool2d(grid, cfg.future_grid).flatten(2).transpose(1, 2))  # (B, gh*gw, C)
    o = torch.cat(toks, dim=1)  # (B, N_v, C)
    return F.layer_norm(o, (o.shape[-1],)) if cfg.future_target_norm == "layernorm" else o


class _LossProbe:
    """Records, during one ``compute_loss``, every flow-matching interpolation (x, eps, tau) and the
    network's inputs and outputs."""

    def __init__(self, policy, monkeypatch):
        self.interp: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.net_in: dict = {}
        self.net_out: tuple = ()
        original = FlowMatching.interpolate

        def record(x, eps, tau):
            self.interp.append((x.detach().clone(), eps.detach().clone(), tau.detach().clone()))
            return original(x, eps, tau)

        monkeypatch.setattr(FlowMatching, "interpolate", staticmethod(record))
        sig = inspect.signature(policy.net.forward)

        def pre(_m, args, kwargs):
            self.net_in = {k: (v.detach().clone() if torch.is_tensor(v) else v)
                           for k, v in sig.bind(*args, **kwargs).arguments.items()}

        def post(_m, _args, _kwargs, out):
            self.net_out = tuple(v.detach().clone() if v is not None else None for v in out)

        policy.net.register_forward_pre_hook(pre, with_kwargs=True)
        policy.net.register_forward_hook(post, with_kwargs=True)

    def modality(self, shape_tail) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The one recorded interpolation whose x ends with ``shape_tail``: (x, eps, tau)."""
        hits = [r for r in self.interp if tuple(r[0].shape[1:]) == tuple(shape_tail)]
        assert len(hits) == 1, [tuple(r[0].shape) for r in self.interp]
        return hits[0]


def _dust(strategy="mmdit_decoupled", seed=0, **over):
    torch.manual_seed(seed)
    cfg = DUSTConfig.preset("tiny", strategy=strategy, **over)
    return make_policy("dust", cfg, stats=_stats(cfg))


# ---------------------------------------------------------------- (a) the world-model target is frame t + k


def _frame_store(path, cfg, episodes=2, length=12):
    """Episodes whose every frame is a different random image (so frames t and t + k differ)."""
    rng = np.random.default_rng(0)
    store = TrajectoryStore.create(str(path), _spec(cfg))
    for e in range(episodes):
        frames = {STATE: rng.normal(size=(length, cfg.state_dim)).astype(np.float32),
                  ACTION: rng.uniform(-1, 1, size=(length, cfg.action_dim)).astype(np.float32)}
        for c in cfg.cameras:
            frames[image_key(c)] = rng.integers(0, 256, size=(length, *cfg.image_size, 3), dtype=np.uint8)
        store.append_episode(frames, task=f"task {e}")
    store.close()
    return TrajectoryStore.open(str(path))


@pytest.mark.parametrize("strategy", WORLD_MODEL_ROWS)
def test_world_model_target_is_the_frame_k_steps_ahead(tmp_path, monkeypatch, strategy):
    """Store -> the policy's own window (delta_indices) -> compute_loss: the target of the vision
    loss is the encoder's pooled features of frame t + k, read here straight from the store, and
    not those of frame t (a swapped future frame fails this)."""
    p = _dust(strategy)
    cfg = p.config
    store = _frame_store(tmp_path / "s.zarr", cfg)
    sampler = WindowSampler(store, cfg.delta_indices())
    anchors = np.array([0, 3, 7, 12 + 1, 12 + 5])  # episode 0 frames 0, 3, 7; episode 1 frames 1, 5 (all t + k inside)
    batch = sampler.get_batch(anchors)
    t = sampler.anchor_global[anchors]  # (B,) global frame of t
    ahead = {c: store.read_rows(image_key(c), t + cfg.future_offset) for c in cfg.cameras}  # frame t + k
    now = {c: store.read_rows(image_key(c), t) for c in cfg.cameras}  # frame t
    probe = _LossProbe(p, monkeypatch)
    p.compute_loss(batch)
    target, _, _ = probe.modality((cfg.num_future_tokens, p.feat_dim))
    expected, current = _future_features(p, ahead), _future_features(p, now)
    assert not torch.allclose(expected, current, atol=1e-3)  # the test can tell the two frames apart
    torch.testing.assert_close(target, expected, atol=1e-5, rtol=1e-5)
    # and the current-frame conditioning reads frame t (the same sampler window, index n_obs - 1)
    for c in cfg.cameras:
        assert np.array_equal(batch[image_key(c)][:, cfg.n_obs_steps - 1], now[c])


# ---------------------------------------------------------------- (c) independent noise inside compute_loss


def _corr(x: torch.Tensor, y: torch.Tensor) -> float:
    x, y = x.flatten().double(), y.flatten().double()
    return float(torch.corrcoef(torch.stack([x, y]))[0, 1])


@pytest.mark.parametrize("strategy", WORLD_MODEL_ROWS)
def test_noise_levels_and_noise_inside_compute_loss(monkeypatch, strategy):
    """Inside ``compute_loss``, per sample: decoupled rows draw tau_A and tau_o independently, joint
    rows use one tau for both; eps_A and eps_o are independent standard normals; the network gets
    exactly A_tau = tau_A A + (1 - tau_A) eps_A and o_tau = tau_o o + (1 - tau_o) eps_o, and the
    loss is ||v_A - (A - eps_A)||^2 + lambda ||v_o - (o - eps_o)||^2 on those same draws."""
    p = _dust(strategy)
    cfg, b = p.config, 512
    batch = fake_batch(_spec(cfg), batch_size=b, n_obs=cfg.n_obs_steps, horizon=cfg.horizon,
                       future_offset=cfg.future_offset, seed=0)
    probe = _LossProbe(p, monkeypatch)
    torch.manual_seed(1)
    loss, m = p.compute_loss(batch)
    a, eps_a, tau_a = probe.modality((cfg.horizon, cfg.action_dim))
    o, eps_o, tau_o = probe.modality((cfg.num_future_tokens, p.feat_dim))
    net = probe.net_in
    # the network sees these very draws
    torch.testing.assert_close(net["tau_a"], tau_a)
    torch.testing.assert_close(net["tau_o"], tau_o)
    torch.testing.assert_close(net["a_t"], tau_a[:, None, None] * a + (1 - tau_a[:, None, None]) * eps_a)
    torch.testing.assert_close(net["o_t"], tau_o[:, None, None] * o + (1 - tau_o[:, None, None]) * eps_o)
    torch.testing.assert_close(a, p.normalizer.normalize(ACTION, torch.as_tensor(batch[ACTION])))
    # one noise level per sample, spread over p(tau) (mean of s * (1 - Beta(1.5, 1)) = 0.4)
    for tau in (tau_a, tau_o):
        assert tau.shape == (b,) and tau.unique().numel() > 0.9 * b
        assert 0 <= float(tau.min()) and float(tau.max()) <= cfg.tau_s and abs(float(tau.mean()) - 0.4) < 0.05
    if STRATEGIES[strategy].noise.name == "joint":
        assert torch.equal(tau_a, tau_o)
    else:
        assert abs(_corr(tau_a, tau_o)) < 0.15
        assert float((tau_a - tau_o).abs().mean()) > 0.15  # not one level shifted or jittered
    # noise: standard normal, independent of each other and of tau
    for eps in (eps_a, eps_o):
        assert abs(float(eps.mean())) < 0.05 and abs(float(eps.std()) - 1) < 0.05
    n = min(eps_a[0].numel(), eps_o[0].numel())
    assert abs(_corr(eps_a.flatten(1)[:, :n], eps_o.flatten(1)[:, :n])) < 0.05
    assert abs(_corr(eps_a.flatten(1)[:, :n], eps_a.roll(1, 0).flatten(1)[:, :n])) < 0.05  # fresh per sample
    assert abs(_corr(eps_o.flatten(1).mean(1), tau_o)) < 0.15
    # the loss on the same draws
    v_a, v_o = probe.net_out
    loss_a = (v_a - (a - eps_a)).pow(2).mean()
    loss_o = (v_o - (o - eps_o)).pow(2).mean()
    assert float(loss.detach()) == pytest.approx(float(loss_a + cfg.lambda_wm * loss_o), rel=1e-5)
    assert m["loss_world"] == pytest.approx(float(loss_o), rel=1e-5)


def test_no_world_model_row_draws_action_noise_only(monkeypatch):
    """The no-world-model baseline: one interpolation (the actions), no future tokens or tau_o given
    to the network, and the loss is the action loss alone."""
    p = _dust("no_wm")
    cfg = p.config
    batch = fake_batch(_spec(cfg), batch_size=64, n_obs=cfg.n_obs_steps, horizon=cfg.horizon, seed=0)
    probe = _LossProbe(p, monkeypatch)
    loss, m = p.compute_loss(batch)
    a, eps_a, tau_a = probe.modality((cfg.horizon, cfg.action_dim))
    assert len(probe.interp) == 1 and probe.net_in.get("o_t") is None and probe.net_in.get("tau_o") is None
    v_a, v_o = probe.net_out
    assert v_o is None and "loss_world" not in m
    assert float(loss.detach()) == pytest.approx(float((v_a - (a - eps_a)).pow(2).mean()), rel=1e-5)


# ---------------------------------------------------------------- (b) sampling recovers overfit training data


def _overfit(policy, batch, steps, lr=1e-2, copies=8):
    """Adam with a cosine decay on ``copies`` copies of the batch (fresh noise for each copy)."""
    big = {k: (torch.cat([torch.as_tensor(v)] * copies) if not isinstance(v, list) else v * copies)
           for k, v in batch.items()}
    opt = torch.optim.Adam([q for q in policy.parameters() if q.requires_grad], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        loss, _ = policy.compute_loss(big)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return float(loss.detach())


@pytest.mark.parametrize("name", ["dust", "dita"])
def test_sampling_recovers_overfit_training_actions(name):
    """Two fixed samples (different images, instructions and action chunks, actions in physical
    units far from [-1, 1]), overfit: ``sample_actions`` from fresh noise gives back each sample's
    own chunk within 15% of the half range, much nearer to it than to the other sample's."""
    torch.manual_seed(0)
    cls = DUSTConfig if name == "dust" else DitaConfig
    cfg = cls.preset("tiny")
    lo = torch.tensor([-2.0, 0.0, 10.0])[:cfg.action_dim]
    hi = torch.tensor([2.0, 4.0, 30.0])[:cfg.action_dim]
    p = make_policy(name, cfg, stats=_stats(cfg, lo.tolist(), hi.tolist()))
    extra = {"future_offset": cfg.future_offset} if name == "dust" else {}
    batch = fake_batch(_spec(cfg), batch_size=2, n_obs=cfg.n_obs_steps, horizon=cfg.horizon, seed=1, **extra)
    batch["task"] = ["open the drawer", "turn on the stove"]
    unit = torch.rand(2, cfg.horizon, cfg.action_dim, generator=torch.Generator().manual_seed(5)) * 1.6 - 0.8
    batch[ACTION] = lo + (unit + 1) / 2 * (hi - lo)  # (2, H, D_a) physical units
    _overfit(p, batch, steps=200)
    n_obs = cfg.n_obs_steps
    obs = {k: (torch.as_tensor(v)[:, :n_obs] if k.startswith("observation.") else v) for k, v in batch.items()
           if k != ACTION and not k.endswith("_is_pad")}
    p.eval()
    sampling = {"num_inference_steps": 10} if name == "dita" else {}
    chunk = p.sample_actions(obs, seed=0, **sampling).actions  # (2, H, D_a)
    scale = (hi - lo) / 2
    own = ((chunk - batch[ACTION]).abs() / scale).mean(dim=(1, 2))  # (2,) in units of the half range
    other = ((chunk - batch[ACTION].flip(0)).abs() / scale).mean(dim=(1, 2))  # (2,)
    print(f"{name}: error to own chunk {own.tolist()}, to the other {other.tolist()} (half ranges)")
    assert float(own.max()) < 0.15, (own, other)
    assert bool((own < 0.4 * other).all()), (own, other)
