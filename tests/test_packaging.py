"""An installable package: a wheel, installed non-editable elsewhere, runs the commands from another directory."""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import zipfile

import pytest

import vlastack

ROOT = pathlib.Path(vlastack.__file__).resolve().parents[2]  # the source checkout (src/vlastack/..)
FIXTURES = pathlib.Path(__file__).parent / "fixtures"


def _run(cmd: list, cwd: pathlib.Path, env: dict, timeout: int = 300) -> subprocess.CompletedProcess:
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{cmd}: exit {r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return r


def test_wheel_installs_and_runs_outside_the_checkout(tmp_path):
    if not (ROOT / "pyproject.toml").is_file():
        pytest.skip("vlastack is not running from a source checkout")
    setuptools = pytest.importorskip("setuptools")
    if int(setuptools.__version__.split(".")[0]) < 77:
        pytest.skip(f"building the wheel needs setuptools>=77 (the test extra), found {setuptools.__version__}")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    source, wheels, site, elsewhere = (tmp_path / d for d in ("source", "wheels", "site", "elsewhere"))
    elsewhere.mkdir()
    # build from a copy: setuptools writes build/ and *.egg-info next to the sources
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", wheels, source],
         elsewhere, env)
    (whl,) = wheels.glob("vlastack-*.whl")
    names = set(zipfile.ZipFile(whl).namelist())
    shipped = {str(p.relative_to(ROOT / "src")) for p in (ROOT / "src/vlastack/configs").rglob("*.yaml")}
    assert shipped and shipped <= names, sorted(shipped - names)  # every config is in the wheel
    assert {"hydra_plugins/vlastack_searchpath/__init__.py", "vlastack/envs/kitchen/assets/drawer.xml"} <= names
    _run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", site, whl], elsewhere, env)

    env["PYTHONPATH"] = str(site)  # the installed copy first; its dependencies from this interpreter's site-packages
    where = _run([sys.executable, "-c", "import vlastack; print(vlastack.__file__)"], elsewhere, env).stdout
    assert where.strip().startswith(str(site)), where
    exe = [site / "bin" / "vlastack"] if (site / "bin" / "vlastack").is_file() else [sys.executable, "-m", "vlastack.cli"]

    out = _run([*exe, "collect", "--help"], elsewhere, env).stdout
    assert "usage: vlastack collect" in out and "episodes: 50" in out
    _run([*exe, "convert", FIXTURES / "lerobot_v30", "demo.zarr", "--quiet"], elsewhere, env)
    out = _run([*exe, "inspect", "demo.zarr", "--no-stats"], elsewhere, env).stdout
    assert "episodes" in out.lower() and "observation.state" in out
    out = _run([*exe, "train", "--cfg", "job", "policy=dust", "dataset.path=demo.zarr", "run_dir=runs/x"],
               elsewhere, env).stdout
    assert "policy:" in out and "name: dust" in out and "path: demo.zarr" in out
    # a run records its command line; an installed copy has no git commit to record
    r = subprocess.run([*map(str, exe), "train", "policy=dust", "dataset.path=missing.zarr", "run_dir=runs/y"],
                       cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "missing.zarr" in r.stderr, r.stderr[-2000:]
    run = json.loads((elsewhere / "runs/y/.hydra/runs.jsonl").read_text().splitlines()[-1])
    assert run["command"] == "vlastack train policy=dust dataset.path=missing.zarr run_dir=runs/y"
    assert run["git_commit"] is None and run["vlastack"] == vlastack.__version__
