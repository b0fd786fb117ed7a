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
    # Dita paper reads no proprioception on purpose: the store's state_dim does not turn it on
    pc = policy_config({"name": "dita", "preset": "paper"}, data)
    assert pc.state_dim == 0 and pc.action_dim == 6


def test_video_store_gets_neutral_action_stats():
    pc = policy_config({"name": "dust", "preset": "tiny"}, {"action_dim": None, "state_dim": 4})
    st = policy_stats({"observation.state": {"mean": [0] * 4, "std": [1] * 4}}, pc)
    assert list(st[ACTION]["std"]) == [1.0] * pc.action_dim
    with pytest.raises(TrainConfigError, match="policy.state_dim"):
        policy_stats({"observation.state": {"mean": [0] * 3, "std": [1] * 3}}, pc)


def test_configs_dir_is_the_repository_one():
    assert Path(CONFIGS, "train.yaml").is_file()
