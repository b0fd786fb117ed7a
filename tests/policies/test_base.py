"""Policy base: config round trips and presets, registry, checkpoints (frozen-module fingerprints)."""
import dataclasses
import hashlib
import json

import pytest
import torch
from torch import nn

from vlastack.policies import base
from vlastack.policies.normalizer import Normalizer
from vlastack.types import ActionChunk, ContractError


class _FrozenThing(nn.Module):
    """A frozen 'encoder' whose weights come from a seed (rebuilt, not stored)."""

    frozen = True
    name = "frozen_thing"

    def __init__(self, seed):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(torch.randn(4, 4, generator=g), requires_grad=False)

    def fingerprint(self):
        return hashlib.sha1(self.w.detach().numpy().tobytes()).hexdigest()[:16]


@dataclasses.dataclass
class ToyConfig(base.PolicyConfig):
    action_dim: int = 2
    hidden: tuple[int, ...] = (8,)
    frozen_seed: int = 0
    PRESETS = {"wide": {"hidden": [32]}}

    def __post_init__(self):
        if self.action_dim < 1:
            raise ValueError("action_dim must be >= 1")


@base.register_policy("toy_test")
class ToyPolicy(base.Policy):
    config_class = ToyConfig

    def __init__(self, config, stats=None):
        super().__init__(config)
        self.net = nn.Linear(config.action_dim, config.hidden[0])
        self.out = nn.Linear(config.hidden[0], config.action_dim)
        self.enc = _FrozenThing(config.frozen_seed)
        self.normalizer = Normalizer({"action": config.action_dim}, {"action": "min_max"}, stats=stats)

    def compute_loss(self, batch):
        a = self.normalizer.normalize("action", batch["action"])
        loss = (self.out(self.net(a)) - a).pow(2).mean()
        return loss, {"loss": loss.item()}

    def sample_actions(self, obs, seed=0):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(1, 3, self.config.action_dim, generator=g)
        return ActionChunk(self.normalizer.unnormalize("action", self.out(self.net(x))))


STATS = {"action": {"min": [-1.0, -2.0], "max": [1.0, 4.0]}}


def test_config_round_trip_presets_and_errors():
    c = ToyConfig.preset("wide", action_dim=3)
    assert c.hidden == (32,) and c.action_dim == 3
    assert ToyConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    with pytest.raises(ValueError, match="unknown preset 'huge'.*wide"):
        ToyConfig.preset("huge")
    with pytest.raises(ValueError, match="unknown fields \\['colour'\\]"):
        ToyConfig.from_dict({"colour": 1})
    with pytest.raises(ValueError, match="action_dim"):
        c.replace(action_dim=0)


def test_registry_and_make_policy():
    assert base.policy_class("toy_test") is ToyPolicy and "toy_test" in base.available_policies()
    assert "dust" in base.available_policies()
    p = base.make_policy("toy_test", "wide", stats=STATS)
    assert p.config.hidden == (32,) and p.name == "toy_test"
    assert base.make_policy("toy_test", {"action_dim": 2}, hidden=[4]).config.hidden == (4,)
    with pytest.raises(ValueError, match="unknown policy 'nope'"):
        base.make_policy("nope")
    with pytest.raises(TypeError, match="config must be"):
        base.make_policy("toy_test", 3)

    with pytest.raises(ValueError, match="already registered"):
        @base.register_policy("toy_test")
        class Other(base.Policy):  # noqa: F841
            pass


def test_save_load_round_trip_skips_frozen_and_checks_fingerprint(tmp_path):
    p = base.make_policy("toy_test", stats=STATS)
    with torch.no_grad():
        p.net.weight.add_(1.0)
    p.save_pretrained(tmp_path / "ck")
    meta = json.loads((tmp_path / "ck" / "config.json").read_text())
    assert meta["type"] == "toy_test" and "enc" in meta["vlastack"]["frozen_modules"]
    from safetensors.torch import load_file
    keys = set(load_file(str(tmp_path / "ck" / "model.safetensors")))
    assert "enc.w" not in keys and "normalizer.affine.action.scale" in keys
    q = base.load_policy(tmp_path / "ck")
    assert type(q) is ToyPolicy
    assert torch.equal(q.sample_actions(None, seed=3).actions, p.sample_actions(None, seed=3).actions)
    assert torch.equal(ToyPolicy.from_pretrained(tmp_path / "ck").net.weight, p.net.weight)
    # a different frozen module than the one trained with is refused
    meta["frozen_seed"] = 1
    (tmp_path / "ck" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="frozen module 'enc'.*trained with"):
        base.load_policy(tmp_path / "ck")


def test_checkpoint_errors(tmp_path):
    p = base.make_policy("toy_test", stats=STATS)
    p.save_pretrained(tmp_path / "ck", include_frozen=True)
    with pytest.raises(FileNotFoundError, match="not a policy checkpoint"):
        base.load_policy(tmp_path / "empty")
    meta = json.loads((tmp_path / "ck" / "config.json").read_text())
    meta["hidden"] = [16]
    (tmp_path / "ck" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="shape mismatches"):
        base.load_policy(tmp_path / "ck")
    meta["type"] = "someone_else"
    (tmp_path / "ck" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="unknown policy 'someone_else'"):
        base.load_policy(tmp_path / "ck")
    meta["type"] = "dust"
    (tmp_path / "ck" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="holds a 'dust' policy checkpoint, expected a 'toy_test'"):
        ToyPolicy.from_pretrained(tmp_path / "ck")


def test_input_helpers():
    imgs = torch.randint(0, 256, (2, 4, 5, 3), dtype=torch.uint8)
    out = base.images_to_float(imgs, "observation.images.left", (4, 5))
    assert out.shape == (2, 3, 4, 5) and out.max() <= 1.0
    with pytest.raises(ContractError, match="observation.images.left: expected uint8"):
        base.images_to_float(imgs.float(), "observation.images.left", (4, 5))
    with pytest.raises(ContractError, match="expected image size 8x8"):
        base.images_to_float(imgs, "observation.images.left", (8, 8))
    assert base.check_tasks("open", 1) == ["open"]
    assert base.check_tasks(["", "open"], 2) == ["", "open"]  # "": no instruction (the blank control)
    with pytest.raises(ContractError, match="missing the instruction"):
        base.check_tasks(None, 2)
    with pytest.raises(ContractError, match="expected 2 instructions"):
        base.check_tasks(["a"], 2)
    with pytest.raises(ContractError, match="whitespace"):
        base.check_tasks(["a", " "], 2)
    assert base.feature_key("tiny", "observation.images.left") == "features.tiny.observation.images.left"
