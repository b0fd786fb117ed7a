"""vlastack train's configuration: every group composes and validates, bad keys and types fail at start."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from vlastack.policies.base import policy_class
from vlastack.rollout.common import compose, configs_dir
from vlastack.train.builder import data_fields, policy_config, policy_stats
from vlastack.train.config import TrainAppConfig, TrainConfigError, from_hydra
from vlastack.types import ACTION, DatasetSpec

CONFIGS = configs_dir("train.yaml")
BASE = ["dataset.path=/data/x.zarr", "run_dir=/tmp/run"]
# experiments whose required keys (???) are filled here
REQUIRED = {"dust_finetune": ["train.init_from=/ckpt"], "dita_fewshot": ["train.init_from=/ckpt"],
            "multitask": ["dataset.path=null", "dataset.paths=[/a.zarr,/b.zarr]"]}


def _group_files(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


def _cases() -> list[tuple[str, str]]:
    return [(g, name) for g in ("policy", "dataset", "train", "experiment") for name in _group_files(g)]


def test_every_group_has_files():
    for g in ("policy", "dataset", "train", "experiment"):
        assert _group_files(g), f"configs/{g}/ is empty"


@pytest.mark.parametrize("group,name", _cases(), ids=[f"{g}={n}" for g, n in _cases()])
def test_every_config_composes_and_validates(group, name):
    extra = list(REQUIRED.get(name, []))
    if group == "dataset" and name == "multi":
        extra = ["dataset.path=null", "dataset.paths=[/a.zarr,/b.zarr]"]
    cfg = compose("train", [f"{group}={name}", *BASE, *extra])
    app = from_hydra(cfg)
    assert isinstance(app, TrainAppConfig)
    assert app.run_dir == "/tmp/run"
    # the policy section builds a real policy config (data fields from a typical store)
    pc = policy_config(app.policy, data_fields(DatasetSpec.robot()))
    assert type(pc) is policy_class(app.policy["name"]).config_class


def test_policy_yaml_lists_exactly_the_config_fields():
    for name in _group_files("policy"):
        cfg = OmegaConf.to_container(compose("train", [f"policy={name}", *BASE]).policy)
        cls = policy_class(cfg["name"]).config_class
        fields = {f.name for f in dataclasses.fields(cls)}
        assert set(cfg) - {"name", "preset"} == fields, name


@pytest.mark.parametrize("override,needle", [
    ("train.lrx=1", "lrx"),                       # Hydra: not in struct
    ("+train.bogus=1", "train.bogus: unknown key"),  # appended keys still fail our schema
    ("train.batch_size=abc", "train.batch_size"),
    ("train.batch_size=0", "train.batch_size: must be >= 1"),
    ("train.precision=fp8", "train.precision: 'fp8' is not one of"),
    ("train.strategy=zero3", "train.strategy"),
    ("train.threads=0", "train.threads: must be >= 1"),
    ("dataset.cache_features=maybe", "dataset.cache_features"),
    ("resume=sometimes", "resume"),
    ("train.optim.betas=[0.9]", "train.optim.betas"),
])
def test_bad_settings_fail_at_start_naming_the_key(override, needle):
    with pytest.raises(Exception) as ei:
        from_hydra(compose("train", [*BASE, override]))
    assert needle in str(ei.value)


def test_missing_dataset_and_run_dir():
    with pytest.raises(TrainConfigError, match="dataset.path: required"):
        from_hydra(compose("train", ["run_dir=/tmp/r"]))
    with pytest.raises(TrainConfigError, match="run_dir"):
        from_hydra(compose("train", ["dataset.path=/d.zarr"]))
    with pytest.raises(TrainConfigError, match="not both"):
        from_hydra(compose("train", [*BASE, "dataset.paths=[/a.zarr]"]))


def test_policy_fields_checked_by_type_and_by_the_policy():
    section = {"name": "dust", "preset": "tiny", "width": "wide"}
    with pytest.raises(TrainConfigError, match="policy.width: expected int"):
        policy_config(section)
    with pytest.raises(TrainConfigError, match="policy.widht: unknown field of DUSTConfig"):
        policy_config({"name": "dust", "preset": "tiny", "widht": 32})
    with pytest.raises(TrainConfigError, match="policy: width 33 must be divisible by heads"):
        policy_config({"name": "dust", "preset": "tiny", "width": 33})
    with pytest.raises(TrainConfigError, match="policy.name"):
        policy_config({"name": "nope"})


def test_policy_config_precedence():
    data = data_fields(DatasetSpec.robot(cameras=("left", "right"), image_size=(64, 64), state_dim=5,
                                         action_dim=6))
    pc = policy_config({"name": "dust", "preset": "tiny", "width": 64, "heads": 4}, data)
    assert pc.cameras == ("left", "right") and pc.image_size == (64, 64)  # dataset over preset
    assert (pc.state_dim, pc.action_dim, pc.width) == (5, 6, 64)  # explicit over preset
    pc = policy_config({"name": "dust", "preset": "tiny", "cameras": ["wrist"]}, data)
    assert pc.cameras == ("wrist",)  # explicit over dataset
    # encoder kwargs merge key by key with the preset's
    pc = policy_config({"name": "dust", "preset": "tiny", "vision_encoder_kwargs": {"hidden": 4}}, data)
    assert pc.vision_encoder_kwargs == {"out_dim": 16, "stride": 16, "hidden": 4}
    # ... unless the section names another encoder: the preset's kwargs were for its own
    pc = policy_config({"name": "dust", "preset": "paper_sized", "vision_encoder": "hf:/models/siglip2",
                        "vision_encoder_kwargs": {"image_size": [256, 256]}}, data)
    assert pc.vision_encoder_kwargs == {"image_size": [256, 256]}  # not the preset's EfficientNet layer
    pc = policy_config({"name": "dust", "preset": "paper_sized", "text_encoder": "hf:/models/t5"}, data)
    assert pc.vision_encoder_kwargs == {"layer": "block5"} and pc.text_encoder_kwargs == {}
    # Dita paper_sized reads no proprioception on purpose: the store's state_dim does not turn it on
    pc = policy_config({"name": "dita", "preset": "paper_sized"}, data)
    assert pc.state_dim == 0 and pc.action_dim == 6
    with pytest.warns(DeprecationWarning, match="deprecated alias of 'paper_sized'"):
        assert policy_config({"name": "dita", "preset": "paper"}, data) == pc


def test_video_store_gets_neutral_action_stats():
    pc = policy_config({"name": "dust", "preset": "tiny"}, {"action_dim": None, "state_dim": 4})
    st = policy_stats({"observation.state": {"mean": [0] * 4, "std": [1] * 4}}, pc)
    assert list(st[ACTION]["std"]) == [1.0] * pc.action_dim
    with pytest.raises(TrainConfigError, match="policy.state_dim"):
        policy_stats({"observation.state": {"mean": [0] * 3, "std": [1] * 3}}, pc)


def test_configs_dir_is_the_packaged_one():
    import vlastack

    assert Path(CONFIGS, "train.yaml").is_file() and CONFIGS == Path(vlastack.__file__).resolve().parent / "configs"


# ---------------------------------------------------------------- optimiser defaults per policy

DUST_OPTIM = dict(lr=1e-4, betas=[0.95, 0.999], eps=1e-8, weight_decay=1e-5)  # DUST paper
DITA_OPTIM = dict(lr=1e-4, betas=[0.9, 0.95], eps=1e-8, weight_decay=0.05)  # Dita paper


def _trainer_cfg(*overrides):
    """The training config the loop runs with (nulls filled from the policy's published values)."""
    from vlastack.train.loop import Trainer

    return Trainer(from_hydra(compose("train", [*BASE, *overrides]))).cfg


def _optim(cfg) -> dict:
    return {k: getattr(cfg.optim, k) for k in ("lr", "betas", "eps", "weight_decay")}


@pytest.mark.parametrize("policy,expected,warmup", [
    *[(p, DUST_OPTIM, (None, 0.05)) for p in ("dust", "dust_mmdit_joint", "dust_dit_decoupled", "dust_dit_joint",
                                              "dust_no_wm")],
    ("dita", DITA_OPTIM, (500, None))])
def test_each_policy_trains_with_its_papers_optimiser(policy, expected, warmup):
    cfg = _trainer_cfg(f"policy={policy}")
    assert _optim(cfg) == expected
    assert (cfg.schedule.warmup_steps, cfg.schedule.warmup_fraction) == warmup


def test_train_settings_still_win_over_the_policy_defaults():
    cfg = _trainer_cfg("policy=dust", "train.optim.betas=[0.9,0.95]", "train.optim.weight_decay=0.1",
                       "train.optim.lr=3e-4", "train.schedule.warmup_steps=7")
    assert _optim(cfg) == dict(DUST_OPTIM, betas=[0.9, 0.95], weight_decay=0.1, lr=3e-4)
    assert (cfg.schedule.warmup_steps, cfg.schedule.warmup_fraction) == (7, None)
    cfg = _trainer_cfg("policy=dita", "train.schedule.warmup_fraction=0.1")
    assert (cfg.schedule.warmup_steps, cfg.schedule.warmup_fraction) == (None, 0.1)
    # a recipe's own values (the quickstart's lr and warmup) stay; what it leaves null is DUST's
    cfg = _trainer_cfg("experiment=quickstart")
    assert _optim(cfg) == dict(DUST_OPTIM, lr=5e-4) and cfg.schedule.warmup_steps == 20
    with pytest.raises(TrainConfigError, match="not both"):
        _trainer_cfg("policy=dust", "train.schedule.warmup_steps=7", "train.schedule.warmup_fraction=0.1")


def test_adamw_is_fused_where_torch_fuses_it():
    """make_optimizer takes torch's fused AdamW for plain float CPU/CUDA parameters, the loop otherwise."""
    import torch

    from vlastack.policies.base import make_policy
    from vlastack.train.optim import fused_adamw_ok, make_optimizer

    cfg = _trainer_cfg("policy=dust")
    torch.manual_seed(0)
    policy = make_policy("dust", policy_class("dust").config_class.preset("tiny"))
    assert make_optimizer(policy, cfg.optim).defaults["fused"] is True
    w = torch.nn.Parameter(torch.ones(3))
    assert fused_adamw_ok([w]) and not fused_adamw_ok([])
    assert not fused_adamw_ok([w, torch.nn.Parameter(torch.ones(2, device="meta"))])  # mixed devices
    assert not fused_adamw_ok([torch.nn.Parameter(torch.ones(3, device="meta"))])  # a device it does not fuse on


def test_dust_adamw_groups_and_warmup_follow_the_paper():
    """AdamW betas (0.95, 0.999), eps 1e-8, wd 1e-5 on weight matrices and none on biases / norms;
    cosine schedule with 5% linear warmup."""
    import torch

    from vlastack.policies.base import make_policy
    from vlastack.train.optim import CosineSchedule, make_optimizer

    cfg = _trainer_cfg("policy=dust")
    torch.manual_seed(0)
    pc = policy_class("dust").config_class.preset("tiny")
    policy = make_policy("dust", pc)
    opt = make_optimizer(policy, cfg.optim)
    assert opt.defaults["betas"] == (0.95, 0.999) and opt.defaults["eps"] == 1e-8
    groups = {g["name"]: g for g in opt.param_groups}
    assert groups["decay"]["weight_decay"] == 1e-5 and groups["no_decay"]["weight_decay"] == 0.0
    names = {id(q): n for n, q in policy.named_parameters() if q.requires_grad}
    no_decay = {names[id(q)] for q in groups["no_decay"]["params"]}
    assert all(n in no_decay for n in names.values() if n.endswith(".bias"))
    assert "condition.norm_in.weight" in no_decay and "net.mmdit.0.qkv.0.weight" not in no_decay
    sched = CosineSchedule(cfg.schedule, cfg.optim.lr, total_steps=1000)
    lrs = [sched.factor(s) for s in range(1000)]
    assert sched.warmup_steps == 50 and lrs[49] < lrs[50] == max(lrs) and lrs[0] < 0.05
    assert all(x > y for x, y in zip(lrs[50:-1], lrs[51:]))
