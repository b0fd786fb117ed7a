"""Checkpoints as people share them: flat config.json, model card, old format, Hub cache, push (all offline)."""
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from vlastack.policies import checkpoint as ckpt
from vlastack.policies.base import Policy, load_policy, make_policy
from vlastack.rollout.stats import success_summary
from vlastack.types import DatasetSpec, fake_observation


def _policy(seed: int = 0) -> Policy:
    torch.manual_seed(seed)
    stats = {"observation.state": {"mean": [0.0] * 4, "std": [1.0] * 4},
             "action": {"min": [-3.0] * 3, "max": [3.0] * 3}}
    policy = make_policy("dust", "tiny", stats=stats)
    with torch.no_grad():  # a fresh DUST's output layers are zero: give each seed its own weights
        for w in policy.parameters():
            if w.requires_grad:
                w.add_(0.05 * torch.randn_like(w))
    return policy


def _chunk(policy: Policy, obs) -> torch.Tensor:
    return policy.sample_actions(obs, seed=3).actions


@pytest.fixture(scope="module")
def obs():
    c = _policy().config
    assert (c.state_dim, c.action_dim) == (4, 3)
    spec = DatasetSpec.robot(cameras=c.cameras, image_size=c.image_size, state_dim=4, action_dim=3)
    return fake_observation(spec, batch_size=2)


def _eval_info() -> dict:
    eps = [{"task": "OpenDrawer", "success": s, "steps": 40} for s in (True, True, False, True)]
    block = success_summary(eps)
    return {"suite": "kitchen", "episodes_per_seed": 4, "seeds": [100000], "complete": True,
            "summary": {"per_task": {"OpenDrawer": block}, "overall": block}}


def _write_format1(policy: Policy, path: Path) -> Path:
    """A checkpoint as vlastack wrote it before format 2 (the old save_pretrained, verbatim layout)."""
    from safetensors.torch import save_file

    path.mkdir(parents=True)
    frozen = policy.frozen_modules()
    skip = tuple(p + "." for p in frozen)
    tensors = {k: v.detach().contiguous() for k, v in policy.state_dict().items() if not k.startswith(skip)}
    save_file(tensors, str(path / "model.safetensors"), metadata={"policy": policy.name, "format": "1"})
    meta = {"policy": policy.name, "format": 1, "config": policy.config.to_dict(),
            "frozen_modules": {p: m.fingerprint() for p, m in frozen.items()}, "includes_frozen": False,
            "training": {"step": 6, "val_loss": 0.5, "ema": True}}
    (path / "config.json").write_text(json.dumps(meta, indent=2))
    return path


def _hub_cache(root: Path, repo_id: str, revs: dict[str, Path]) -> Path:
    """Lay checkpoint folders out as huggingface_hub's cache: models--org--name/{refs,snapshots}."""
    repo = root / ("models--" + repo_id.replace("/", "--"))
    for i, (ref, src) in enumerate(revs.items()):
        commit = f"{i + 1:040x}"
        snap = repo / "snapshots" / commit
        snap.mkdir(parents=True)
        for f in src.iterdir():
            (snap / f.name).write_bytes(f.read_bytes())
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return root


def test_save_pretrained_writes_flat_config_weights_and_model_card(tmp_path, obs):
    p = _policy()
    assert p.preset == "tiny"
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "eval_info.json").write_text(json.dumps(_eval_info()))
    p.save_pretrained(tmp_path / "ck", extra={"training": {"step": 1200, "val_loss": 0.0421, "ema": True,
                                                           "data": {"paths": ["data/open_drawer.zarr"],
                                                                    "train_episodes": 45, "val_episodes": 5}}})
    doc = json.loads((tmp_path / "ck" / "config.json").read_text())
    assert doc["type"] == "dust" and doc["horizon"] == p.config.horizon and doc["cameras"] == list(p.config.cameras)
    assert doc["vlastack"]["format"] == ckpt.FORMAT and doc["vlastack"]["preset"] == "tiny"
    assert doc["vlastack"]["parameters"] == p.num_parameters()
    assert sorted(f.name for f in (tmp_path / "ck").iterdir()) == ["README.md", "config.json", "eval_info.json",
                                                                  "model.safetensors"]
    card = (tmp_path / "ck" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: vlastack\n")
    for text in ("| policy | `dust` |", "| preset | tiny |", "| data | data/open_drawer.zarr |",
                 "| episodes | 45 train, 5 validation |", "| training steps | 1200 |", "| validation loss | 0.0421 |",
                 "| OpenDrawer | 75.0% | [30.1%, 95.4%] | 3 / 4 |"):
        assert text in card, text
    q = Policy.from_pretrained(tmp_path / "ck")
    assert q.preset == "tiny" and torch.equal(_chunk(q, obs), _chunk(p, obs))


def test_old_format_checkpoints_still_load_and_resave_as_format_2(tmp_path, obs):
    p = _policy()
    old = _write_format1(p, tmp_path / "old")
    q = load_policy(old)
    assert torch.equal(_chunk(q, obs), _chunk(p, obs))
    meta = ckpt.read_meta(old)
    assert meta.type == "dust" and meta.training["step"] == 6 and set(meta.frozen_modules) == {"vision", "text"}
    q.save_pretrained(tmp_path / "new")
    assert json.loads((tmp_path / "new" / "config.json").read_text())["type"] == "dust"
    # an unknown layout gets one line saying what is wrong
    (tmp_path / "old" / "config.json").write_text(json.dumps({"policy": "dust", "format": 7, "config": {}}))
    with pytest.raises(ckpt.CheckpointError, match="unknown checkpoint format 7"):
        load_policy(old)
    (tmp_path / "old" / "config.json").write_text(json.dumps({"architectures": ["Bert"]}))
    with pytest.raises(ckpt.CheckpointError, match="not a vlastack policy config \\(no 'type' field"):
        load_policy(old)
    (tmp_path / "old" / "config.json").write_text(json.dumps({"type": "dust", "vlastack": {"format": 99}}))
    with pytest.raises(ckpt.CheckpointError, match="format 99 is newer.*upgrade vlastack"):
        load_policy(old)


def test_a_host_frameworks_config_json_with_the_config_in_the_vlastack_block_loads(tmp_path, obs):
    """What the LeRobot plugins write: LeRobot's own fields flat (unknown to vlastack), our config in the block."""
    p = _policy()
    p.save_pretrained(tmp_path / "ck")
    meta, _ = p.checkpoint_parts()
    doc = {"type": "dust", "n_obs_steps": 1, "input_features": {}, "device": "cpu", "use_amp": False,
           "preset": "tiny", "optimizer_lr": None, "width": None,
           "vlastack": {**meta.to_json()["vlastack"], "config": meta.config}}
    (tmp_path / "ck" / "config.json").write_text(json.dumps(doc))
    q = Policy.from_pretrained(tmp_path / "ck")
    assert q.config == p.config and torch.equal(_chunk(q, obs), _chunk(p, obs))
    doc["vlastack"]["config"] = ["not", "a", "dict"]
    (tmp_path / "ck" / "config.json").write_text(json.dumps(doc))
    with pytest.raises(ckpt.CheckpointError, match="block's 'config' must be a JSON object"):
        Policy.from_pretrained(tmp_path / "ck")


def test_from_pretrained_by_repo_id_reads_the_hub_cache_offline(tmp_path, obs):
    a, b = _policy(0), _policy(1)
    a.save_pretrained(tmp_path / "a")
    b.save_pretrained(tmp_path / "b")
    cache = _hub_cache(tmp_path / "hub", "vlastack-test/dust-tiny", {"main": tmp_path / "a", "v1": tmp_path / "b"})
    q = Policy.from_pretrained("vlastack-test/dust-tiny", cache_dir=cache, local_files_only=True)
    assert torch.equal(_chunk(q, obs), _chunk(a, obs))
    r = Policy.from_pretrained("vlastack-test/dust-tiny", revision="v1", cache_dir=cache, local_files_only=True)
    assert torch.equal(_chunk(r, obs), _chunk(b, obs)) and not torch.equal(_chunk(r, obs), _chunk(a, obs))
    with pytest.raises(FileNotFoundError, match="no such local path, and Hub repo 'vlastack-test/missing'.*"
                                                "only the cache .* is read"):
        Policy.from_pretrained("vlastack-test/missing", cache_dir=cache, local_files_only=True)
    with pytest.raises(ckpt.CheckpointError, match="revision='v1' applies to Hub repo ids"):
        Policy.from_pretrained(tmp_path / "a", revision="v1")


def test_hub_cache_env_and_offline_mode_in_a_fresh_process(tmp_path):
    """HF_HUB_CACHE + HF_HUB_OFFLINE=1 as a user sets them: `eval checkpoint=org/name` resolves from the cache."""
    _policy(0).save_pretrained(tmp_path / "a")
    cache = _hub_cache(tmp_path / "hub", "vlastack-test/dust-tiny", {"main": tmp_path / "a"})
    code = ("from vlastack.rollout.policy_adapters import resolve_checkpoint\n"
            "from vlastack.policies.checkpoint import read_meta\n"
            "d = resolve_checkpoint('vlastack-test/dust-tiny')\n"
            "print(d, read_meta(d).type)\n")
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == [str(cache / "models--vlastack-test--dust-tiny" / "snapshots" / f"{1:040x}"), "dust"]
    env["HF_HUB_CACHE"] = str(tmp_path / "empty")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1 and "offline (HF_HUB_OFFLINE=1 or local_files_only)" in out.stderr


class FakeApi:
    """Stands in for huggingface_hub.HfApi: records calls and what upload_folder would send."""

    def __init__(self, token=None):
        self.calls = []

    def create_repo(self, repo_id, **kw):
        self.calls.append(("create_repo", repo_id, kw))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, *, repo_id, folder_path, allow_patterns=None, **kw):
        files = {f.name: f.read_bytes() for f in Path(folder_path).iterdir()
                 if allow_patterns is None or f.name in allow_patterns}
        self.calls.append(("upload_folder", repo_id, kw, files))
        return SimpleNamespace(commit_url=f"https://huggingface.co/{repo_id}/commit/{1:040x}")


def test_push_uploads_the_checkpoint_files_and_round_trips_through_the_cache(tmp_path, obs):
    p = _policy()
    old = _write_format1(p, tmp_path / "run" / "checkpoints" / "step_0000006")
    (old / "training_state.pt").write_bytes(b"not for the hub")
    os.symlink("step_0000006", tmp_path / "run" / "checkpoints" / "last")
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "eval_info.json").write_text(json.dumps(_eval_info()))
    api = FakeApi()
    info = ckpt.push(tmp_path / "run", "vlastack-test/dust-tiny", api=api, private=True,
                     eval_info=tmp_path / "eval")
    assert info.commit_url.endswith("/commit/" + f"{1:040x}")
    (c_name, c_repo, c_kw), (u_name, u_repo, u_kw, files) = api.calls
    assert (c_name, c_repo, c_kw["exist_ok"], c_kw["private"]) == ("create_repo", "vlastack-test/dust-tiny", True, True)
    assert (u_name, u_repo) == ("upload_folder", "vlastack-test/dust-tiny")
    assert sorted(files) == ["README.md", "config.json", "eval_info.json", "model.safetensors"]
    assert json.loads(files["config.json"])["type"] == "dust"  # pushed as format 2
    card = files["README.md"].decode()
    assert "# vlastack-test/dust-tiny" in card and "| OpenDrawer | 75.0% |" in card
    assert 'Policy.from_pretrained("vlastack-test/dust-tiny")' in card and "| training steps | 6 |" in card
    # what was uploaded loads back by repo id
    (tmp_path / "sent").mkdir()
    for name, data in files.items():
        (tmp_path / "sent" / name).write_bytes(data)
    cache = _hub_cache(tmp_path / "hub", "vlastack-test/dust-tiny", {"main": tmp_path / "sent"})
    q = Policy.from_pretrained("vlastack-test/dust-tiny", cache_dir=cache, local_files_only=True)
    assert torch.equal(_chunk(q, obs), _chunk(p, obs))
    with pytest.raises(ckpt.CheckpointError, match="repo_id: 'not a repo' is not a Hub repo id"):
        ckpt.push(old, "not a repo", api=api)


def test_push_command(tmp_path, monkeypatch, capsys):
    import huggingface_hub

    from vlastack.cli import main

    _policy().save_pretrained(tmp_path / "ck")
    made = []
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda token=None: made.append(FakeApi()) or made[-1])
    assert main(["push", f"checkpoint={tmp_path / 'ck'}", "repo_id=me/dust-tiny", "private=false"]) == 0
    assert "pushed" in capsys.readouterr().out and made[0].calls[0][2]["private"] is False
    assert main(["push", "checkpoint=x", "repo=me/y"]) == 2
    assert "bad argument 'repo=me/y'" in capsys.readouterr().err
    assert main(["push", f"checkpoint={tmp_path / 'nowhere'}", "repo_id=me/y"]) == 1
    assert "is not a policy checkpoint" in capsys.readouterr().err
