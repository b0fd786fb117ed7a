"""Dependency layering: policies and datasets need no simulator; robosuite's start-up noise is filtered, real warnings show."""
from __future__ import annotations

import logging
import pathlib
import subprocess
import sys

import pytest

from vlastack import logs

SIMULATORS = ("mujoco", "robosuite", "metaworld")

_IMPORT_ALL = """
import importlib, pkgutil, sys
import vlastack.policies, vlastack.datasets
for pkg in (vlastack.policies, vlastack.datasets):
    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
        importlib.import_module(m.name)
print(" ".join(sorted({m.split(".")[0] for m in sys.modules})))
"""


def test_policies_and_datasets_import_no_simulator():
    r = subprocess.run([sys.executable, "-c", _IMPORT_ALL], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    loaded = set(r.stdout.split())
    assert "vlastack" in loaded and "torch" in loaded  # the check itself ran
    assert not loaded & set(SIMULATORS), f"imported with vlastack.policies / vlastack.datasets: {loaded & set(SIMULATORS)}"


def test_known_harmless_filter_drops_only_those_messages():
    f = logs.KnownHarmless(logs.KNOWN_HARMLESS["robosuite_logs"])

    def rec(msg: str) -> logging.LogRecord:
        return logging.LogRecord("robosuite_logs", logging.WARNING, __file__, 1, msg, None, None)

    assert not f.filter(rec("No private macro file found!"))
    assert not f.filter(rec('The config has defined for the controller "torso", but the robot does not have it'))
    assert f.filter(rec("Joint limits exceeded"))  # a real warning passes


def test_filtered_messages_are_ones_robosuite_really_logs():
    robosuite = pytest.importorskip("robosuite")
    text = "\n".join(p.read_text(errors="ignore") for p in pathlib.Path(robosuite.__file__).parent.rglob("*.py"))
    for prefix in logs.KNOWN_HARMLESS["robosuite_logs"]:
        assert prefix.rstrip('"') in text, f"robosuite no longer says {prefix!r}: drop it from vlastack.logs"


_ROBOSUITE = """
import logging, {first}
import robosuite
logging.getLogger("robosuite_logs").warning("a real problem")
"""


@pytest.mark.parametrize("first,quiet", [("vlastack", True), ("sys", False)], ids=["with vlastack", "without"])
def test_robosuite_import_is_quiet_after_vlastack(first, quiet):
    pytest.importorskip("robosuite")
    r = subprocess.run([sys.executable, "-c", _ROBOSUITE.format(first=first)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    noisy = [p for p in ("No private macro file found", "Could not import robosuite_models") if p in r.stderr]
    assert (not noisy) == quiet, r.stderr  # without vlastack's filter robosuite prints them (the control)
    assert "a real problem" in r.stderr  # real warnings still show
