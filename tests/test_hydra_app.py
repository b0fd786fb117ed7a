"""Every config-taking command is a real Hydra app through one entry (vlastack.hydra_app)."""
from __future__ import annotations

import json
import logging
import pathlib

import pytest
import yaml

import vlastack
from vlastack import cli, hydra_app
from vlastack.rollout import evaluate as E

CONFIG_COMMANDS = ["collect", "train", "eval", "serve", "deploy"]
SRC = pathlib.Path(vlastack.__file__).parent


def _main(name: str):
    import importlib

    module, func, _ = cli.COMMANDS[name]
    return getattr(importlib.import_module(module), func)


@pytest.mark.parametrize("name", CONFIG_COMMANDS)
def test_hydra_flags_work_on_every_command(name, capsys):
    main = _main(name)
    assert main(["--cfg", "job"]) == 0  # before: `vlastack eval --cfg job` -> LexerNoViableAltException
    shown = yaml.safe_load(capsys.readouterr().out)
    assert isinstance(shown, dict) and "hydra" not in shown
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert f"usage: vlastack {name}" in out and "== Config" in out and "--cfg job" in out
    assert main(["--info", "searchpath"]) == 0
    assert "pkg://vlastack.configs" in capsys.readouterr().out
    assert main(["--cfg", "hydra"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["hydra"]["job"]["config_name"] == name


def test_policy_alias_and_open_keys_reach_the_composed_config(capsys):
    assert _main("eval")(["--cfg", "job", "policy=expert", "sampling.vision_steps=4"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["policy_kind"] == "expert" and shown["sampling"] == {"vision_steps": 4}
    assert _main("deploy")(["--cfg", "job", "policy=scripted"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["policy_kind"] == "scripted"
    assert _main("serve")(["--cfg", "job", "sampling.vision_steps=8"]) == 0  # as docs/serving.md shows
    assert yaml.safe_load(capsys.readouterr().out)["sampling"] == {"vision_steps": 8}


def test_a_run_records_config_overrides_command_and_commit(tmp_path, capsys):
    out = tmp_path / "ev"
    root = logging.getLogger()
    handlers = list(root.handlers)
    args = ["policy=expert", "env=metaworld", "tasks=reach-v3", "episodes=1", "max_steps=5", "cameras=[corner]",
            "image_size=[24,24]", "workers=0", "videos=0", "progress=false", f"out={out}"]
    assert E.main(args) == 0
    hydra_dir = out / ".hydra"
    assert yaml.safe_load((hydra_dir / "config.yaml").read_text())["policy_kind"] == "expert"
    assert yaml.safe_load((hydra_dir / "overrides.yaml").read_text())[0] == "policy_kind=expert"
    run = json.loads((hydra_dir / hydra_app.RUNS_FILE).read_text().splitlines()[-1])
    assert run["command"].startswith("vlastack eval policy=expert env=metaworld") and run["vlastack"]
    rev = hydra_app.source_revision()
    assert run["git_commit"] == rev["git_commit"]
    if rev["git_commit"] is not None:  # a git checkout (the tests' usual case); a wheel install records null
        assert len(run["git_commit"]) == 40 and isinstance(run["git_dirty"], bool)
    assert (out / "eval.log").is_file() and (out / E.INFO_FILE).is_file()
    assert root.handlers == handlers  # in-process runs leave the caller's logging as it was
    assert E.main(args) == 0  # a rerun resumes and appends its own line
    assert len((hydra_dir / hydra_app.RUNS_FILE).read_text().splitlines()) == 2


def test_bad_input_stops_before_the_run_directory(tmp_path, capsys):
    out = tmp_path / "never"
    assert E.main(["policy=expert", "env=metaworld", "tasks=reach-v9", f"out={out}"]) == 2
    assert "reach-v9" in capsys.readouterr().err
    assert _main("collect")(["env=metaworld", "episodes=0", f"out={out}.zarr"]) == 2
    assert "episodes" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing written: no run dir, no .hydra


def test_user_configs_add_and_shadow_packaged_ones(tmp_path, monkeypatch, capsys):
    user = tmp_path / "my_configs"
    (user / "env").mkdir(parents=True)
    mw = yaml.safe_load((hydra_app.configs_dir() / "env" / "metaworld.yaml").read_text())
    (user / "env" / "my_metaworld.yaml").write_text(yaml.safe_dump({**mw, "default_task": "push-v3"}))
    main = _main("collect")
    assert main(["--cfg", "job", "env=my_metaworld"]) == 2  # not known without the user's folder
    capsys.readouterr()
    assert main(["--config-dir", str(user), "--cfg", "job", "env=my_metaworld"]) == 0  # Hydra's flag adds options
    assert yaml.safe_load(capsys.readouterr().out)["env"]["default_task"] == "push-v3"
    monkeypatch.setenv(hydra_app.CONFIGS_ENV, str(user))
    assert main(["--cfg", "job", "env=my_metaworld", "--resolve"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["task"] == "push-v3"
    assert hydra_app.compose("collect", ["env=my_metaworld"]).env.default_task == "push-v3"
    (user / "collect.yaml").write_text((hydra_app.configs_dir() / "collect.yaml").read_text()
                                       .replace("episodes: 50", "episodes: 7"))
    assert main(["--cfg", "job"]) == 0  # VLASTACK_CONFIGS also shadows: its collect.yaml wins
    assert yaml.safe_load(capsys.readouterr().out)["episodes"] == 7
    monkeypatch.setenv(hydra_app.CONFIGS_ENV, str(tmp_path / "missing"))
    assert main(["--cfg", "job"]) == 2
    assert "VLASTACK_CONFIGS" in capsys.readouterr().err


def test_no_private_hydra_api_in_the_sources():
    used = [str(p.relative_to(SRC)) for p in SRC.rglob("*.py") if "hydra._internal" in p.read_text()]
    assert not used, f"Hydra's private API (use hydra.main, its sweepers and launchers): {used}"


def test_overrides_rewriter_leaves_flags_alone():
    rw = hydra_app.overrides_rewriter(("sampling.",), {"policy": "policy_kind"})
    assert rw(["-m", "--cfg", "job", "policy=a,b", "sampling.k=1", "+x=1", "hydra.run.dir=d", "tasks=[a,b]"]) == \
        ["-m", "--cfg", "job", "policy_kind=a,b", "++sampling.k=1", "+x=1", "hydra.run.dir=d", "tasks=[a,b]"]
