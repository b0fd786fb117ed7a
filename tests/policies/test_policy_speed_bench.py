"""bench/policy_speed.py on the tiny presets: every figure it prints is produced and sane."""
import dataclasses
import importlib.util
import os
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "policy_speed.py"


@pytest.fixture(scope="module")
def bench():
    before = os.environ.get("OMP_WAIT_POLICY")
    spec = importlib.util.spec_from_file_location("policy_speed_bench", BENCH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    try:
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.modules.pop(spec.name, None)
    if before is None:  # the module sets it for its own process; do not leak it to later tests
        os.environ.pop("OMP_WAIT_POLICY", None)
    else:
        os.environ["OMP_WAIT_POLICY"] = before


@pytest.mark.parametrize("label,parts", [("dust-tiny", "dust_parts"), ("dita-tiny", "dita_parts")])
def test_tiny_entries_produce_every_figure(bench, label, parts, capsys):
    entry = {e.label: e for e in bench.ENTRIES}[label]
    e = dataclasses.replace(entry, train_steps=1, sampling=entry.sampling[:1], threads=(1,), repeats=1, warmup=0,
                            breakdown=getattr(bench, parts),
                            target=(entry.sampling[0], 1, 1e9))
    out = bench.run_entry(e, "cpu")
    assert out["params_trainable"] > 0 and out["params_total"] >= out["params_trainable"]
    for key in ("train_images_sps", "train_images_sps_cpu", "train_cache_sps", "train_cache_sps_cpu"):
        assert out[key] > 0, key
    assert len(out["latency"]) == len(e.sampling)
    for row in out["latency"]:
        assert row["ms"] > 0 and row["cpu_ms"] > 0 and row["ratio_no_skip_over_skip"] > 0
        assert row["cpu_ratio_no_skip_over_skip"] > 0
    assert out["breakdown_cpu_ms"] and all(v >= 0 for v in out["breakdown_cpu_ms"].values())
    assert out["target"]["met"]
    printed = capsys.readouterr().out
    assert "parts of a chunk" in printed and "target:" in printed and "samples/s" in printed
    if label == "dita-tiny":
        assert "denoising loop alone" in bench.dita_loop_ratio(out["breakdown_cpu_ms"])


def test_dita_loop_ratio_arithmetic(bench):
    parts = {"uncached step (whole sequence)": 30.0, "first step, full pass keeping prefix K/V": 32.0,
             "cached step (suffix only)": 10.0}
    line = bench.dita_loop_ratio(parts, steps=10)
    assert "no-cache 300.0 ms" in line and "cache 122.0 ms" in line and "ratio 2.46x" in line


def test_unknown_entry_is_refused(bench):
    with pytest.raises(SystemExit, match="unknown entries"):
        bench.main(["--device", "cpu", "--entries", "dust-huge"])
