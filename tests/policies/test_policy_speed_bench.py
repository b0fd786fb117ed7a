"""bench/policy_speed.py on the tiny presets: every figure it prints is produced and sane."""
import dataclasses
import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

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


def test_train_comparison_prints_both_rates_and_their_ratio(bench, capsys):
    out = bench.train_comparison(batch_size=4, rounds=2, steps=1, preset="tiny", cameras=("left",))
    dust, base = out["tiny"], out["tiny_no_wm"]
    assert dust["future_tokens"] > 0 and base["future_tokens"] == 0 and dust["cameras"] == ["left"]
    for row in (dust, base):
        assert row["samples_per_s"] > 0 and row["samples_per_cpu_s"] > 0 and row["gflop_fwd_bwd"] > 0
        assert all(v >= 0 for v in row["phases_cpu_ms"].values()) and row["phases_cpu_ms"]["backward"] > 0
        assert row["forward_parts_cpu_ms"]["conditioning encoder"] > 0
    assert "vision DiT blocks" in dust["forward_parts_cpu_ms"] and "vision DiT blocks" not in base["forward_parts_cpu_ms"]
    assert dust["gflop_fwd_bwd"] > base["gflop_fwd_bwd"]  # the world-model stream costs work
    assert out["ratio"] == pytest.approx(dust["samples_per_s"] / base["samples_per_s"])
    printed = capsys.readouterr().out
    assert "ratio tiny / tiny_no_wm samples/s" in printed and "target >= 0.70x" in printed


def test_train_comparison_bf16_autocasts_and_prints_the_speed_up(bench, capsys, monkeypatch):
    seen = []
    real = torch.autocast

    def spy(device_type, dtype=None, enabled=True, **kw):
        seen.append((device_type, dtype, enabled))
        return real(device_type, dtype=dtype, enabled=enabled, **kw)

    monkeypatch.setattr(bench.torch, "autocast", spy)
    out = bench.train_comparison(batch_size=4, rounds=2, steps=1, preset="tiny", cameras=("left",),
                                 precisions=("fp32", "bf16"))
    assert set(out) >= {"tiny fp32", "tiny bf16", "tiny_no_wm fp32", "tiny_no_wm bf16", "ratios fp32", "ratios bf16",
                        "speedup tiny bf16 / fp32"}
    assert out["tiny bf16"]["precision"] == "bf16" and out["ratios bf16"]["ratio"] > 0
    assert ("cpu", torch.bfloat16, True) in seen and ("cpu", torch.bfloat16, False) in seen
    printed = capsys.readouterr().out
    assert "speed-up tiny bf16 / fp32" in printed and "ratio tiny bf16 / tiny_no_wm bf16" in printed
    with pytest.raises(ValueError, match="valid"):
        bench.train_comparison(batch_size=4, rounds=1, steps=1, preset="tiny", precisions=("fp16",))


def test_dita_loop_ratio_arithmetic(bench):
    parts = {"uncached step (whole sequence)": 30.0, "first step, full pass keeping prefix K/V": 32.0,
             "cached step (suffix only)": 10.0}
    line = bench.dita_loop_ratio(parts, steps=10)
    assert "no-cache 300.0 ms" in line and "cache 122.0 ms" in line and "ratio 2.46x" in line


def test_unknown_entry_is_refused(bench):
    with pytest.raises(SystemExit, match="unknown entries"):
        bench.main(["--device", "cpu", "--entries", "dust-huge"])


EXPORTED_ROWS_CHECK = r"""
import importlib.util, sys
import pytest, torch
spec = importlib.util.spec_from_file_location("policy_speed_bench", sys.argv[1])
bench = importlib.util.module_from_spec(spec); sys.modules[spec.name] = bench; spec.loader.exec_module(bench)
from vlastack.policies.base import make_policy, policy_class
from vlastack.policies.export import export_policy
out = sys.argv[2]
cfg = policy_class("dust").config_class.preset("tiny")
policy = make_policy("dust", cfg, stats=bench.generic_stats(cfg)).eval()
export_policy(policy, out, format="onnx")
obs = bench.generic_obs(cfg)
ref = policy.sample_actions(obs, seed=0).actions  # (1, H, D_a)
assert list(bench.EXPORTED_ROWS) == ["onnxruntime", "openvino", "openvino-bf16"]
import openvino as ov
has_bf16 = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
for row, (runtime, precision) in bench.EXPORTED_ROWS.items():
    ex = bench.load_exported_row(out, row, 1)
    assert ex.runtime == runtime, (row, ex.runtime)
    ran = bench.inference_precision(ex)
    # OpenVINO computes in bf16 only where the CPU has it
    assert ran == ("f32" if precision is None or not has_bf16 else "bf16"), (row, ran)
    torch.testing.assert_close(ex.sample_actions(obs, seed=0).actions, ref, atol=5e-2, rtol=0)
with pytest.raises(ValueError, match="choose one of"):
    bench.load_exported_row(out, "openvino_bf16", 1)
print("exported rows ok")
"""


def test_exported_rows_open_in_their_runtime_and_precision(tmp_path):
    """Each EXPORTED_ROWS row (bench/peers/run.py --runtimes) opens the export in its runtime and precision.

    In a child process: OpenVINO's bf16 plugin left in the pytest process made a later test's
    simulator workers crash the whole run (rc 139 in tests/rollout/test_collect.py)."""
    pytest.importorskip("onnx", reason="the onnx extra exports the graph")
    pytest.importorskip("onnxruntime", reason="the onnx extra runs it")
    pytest.importorskip("openvino", reason="the openvino extra runs the openvino rows")
    import subprocess

    r = subprocess.run([sys.executable, "-c", EXPORTED_ROWS_CHECK, str(BENCH), str(tmp_path / "onnx")],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and "exported rows ok" in r.stdout, r.stdout[-2000:] + r.stderr[-4000:]
