"""Checks of the benchmark's own machinery (no LeRobot needed): run with

    .venv/bin/python -m pytest -q bench/peers/test_peers.py

- the wire format round-trips nested dicts of arrays of several dtypes and plain values;
- the PyAV frame decoder that stands in for LeRobot's removed torchvision backend returns the
  frames at the requested timestamps of a video written by our LeRobot v3 converter (each frame
  carries its index as brightness, so an off-by-one shows);
- ratios are taken per round (adjacent runs) and the median reported;
- the exported-runtime rows (ONNX Runtime, OpenVINO, OpenVINO bf16) get their ratio and target lines, say
  when bf16 ran as f32, and come with the chunk's FLOPs and their share of the measured matmul peak;
- the LeRobot proxy is a registered vlastack policy whose checkpoint round-trips its config.
- ``--quick`` / ``--smoke`` fill in budgets that options given on the command line override.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))  # bench/: policy_speed, whose exported-runtime rows the worker runs

import wire  # noqa: E402


def test_wire_round_trip():
    msg = {"op": "chunk", "frames": [{"observation.state": np.arange(16, dtype=np.float32),
                                       "observation.images.left": np.full((4, 5, 3), 7, np.uint8), "task": "open it"},
                                      {"x": np.array([[1, 2], [3, 4]], np.int64), "flag": True, "none": None}],
           "seed": np.int64(3)}
    buf = io.BytesIO()
    wire.write(buf, msg)
    wire.write(buf, {"op": "close"})
    buf.seek(0)
    got = wire.read(buf)
    assert got["op"] == "chunk" and got["seed"] == 3
    f0, f1 = got["frames"]
    np.testing.assert_array_equal(f0["observation.state"], np.arange(16, dtype=np.float32))
    assert f0["observation.images.left"].dtype == np.uint8 and f0["observation.images.left"].shape == (4, 5, 3)
    assert f0["task"] == "open it" and f1["flag"] is True and f1["none"] is None
    np.testing.assert_array_equal(f1["x"], [[1, 2], [3, 4]])
    assert wire.read(buf) == {"op": "close"}
    with pytest.raises(EOFError):
        wire.read(buf)


def test_pyav_decoder_picks_the_requested_frames(tmp_path):
    pytest.importorskip("av")
    torch = pytest.importorskip("torch")
    from lerobot_worker import decode_video_frames_pyav

    from vlastack.datasets.lerobot import write_lerobot_v3
    from vlastack.types import DatasetSpec

    spec = DatasetSpec.robot(cameras=("left",), image_size=(32, 32), state_dim=2, action_dim=2, fps=10)
    lengths = (12, 9)

    def episodes():
        base = 0
        for length in lengths:
            img = np.zeros((length, 32, 32, 3), np.uint8)
            img[:] = (20 * (base + np.arange(length)) % 250)[:, None, None, None].astype(np.uint8) + 2
            yield ({"observation.images.left": img, "observation.state": np.zeros((length, 2), np.float32),
                    "action": np.zeros((length, 2), np.float32)}, "task", {})
            base += length

    root = write_lerobot_v3(tmp_path / "ds", spec, episodes(), len(lengths))
    video = next((root / "videos").rglob("*.mp4"))
    # second episode starts at 1.2 s in the shared file; ask for its frames 0, 3 and 8
    frames = decode_video_frames_pyav(video, [1.2, 1.5, 2.0], tolerance_s=1e-4)
    assert frames.shape == (3, 3, 32, 32) and frames.dtype == torch.float32
    want = np.array([(20 * g % 250) + 2 for g in (12, 15, 20)], np.float64) / 255
    got = frames.mean(dim=(1, 2, 3)).numpy()
    assert np.abs(got - want).max() < 6 / 255, (got * 255, want * 255)
    with pytest.raises(RuntimeError, match="not within"):
        decode_video_frames_pyav(video, [1.23], tolerance_s=1e-4)


def test_ratios_are_per_round_medians():
    import run as peers

    def res(sps, p50):
        return {"params_trainable": 20e6, "params_total": 40e6, "train": {"update_sps": sps, "e2e_sps": sps / 2},
                "train_cache": {"update_sps": 2 * sps, "e2e_sps": sps}, "rss_peak_train_mib": 1000.0,
                "latency": {"1": {"p50_ms": p50, "p99_ms": p50 * 1.1}, "2": {"p50_ms": p50 / 2, "p99_ms": p50}}}

    # round 1 is slow for both (a busy machine), round 2 fast: per-round ratios are 2.0 and 3.0
    rounds = [{"dust": res(10.0, 40.0), "diffusion": res(5.0, 100.0)},
              {"dust": res(30.0, 20.0), "diffusion": res(10.0, 100.0)}]
    absolute, ratios = peers.summarize_speed(rounds, ["dust", "diffusion"])
    r = ratios["dust/diffusion"]
    assert r["train_update_sps"] == pytest.approx(2.5)
    assert r["train_update_sps_cache"] == pytest.approx(5.0)
    assert r["lat1_p50_ms"] == pytest.approx(0.3)
    assert absolute["dust"]["train_update_sps"] == pytest.approx(20.0)
    assert absolute["dust"]["train_update_sps_cache"] == pytest.approx(40.0)
    # a failed run leaves the figure out rather than poisoning the median
    rounds[1]["diffusion"] = {"error": "boom"}
    _, ratios = peers.summarize_speed(rounds, ["dust", "diffusion"])
    assert ratios["dust/diffusion"]["train_update_sps"] == pytest.approx(2.0)
    table = peers.tables(*peers.summarize_speed(rounds, ["dust", "diffusion"]), None)
    assert "DUST small / LeRobot Diffusion Policy" in table


def _ours(p50, rt, bf16=None, bf16_ran="bf16"):
    """A synthetic worker result of ours: torch p50, ONNX Runtime p50 (``rt``), optionally OpenVINO bf16's."""
    out = {"latency": {"1": {"p50_ms": p50}, "2": {"p50_ms": p50 / 2}},
           "latency_runtime": {"export_s": 3.0, "onnxruntime": {"1": {"p50_ms": rt}, "2": {"p50_ms": rt / 2},
                                                                "max_abs_diff_vs_torch": 2e-6, "precision": "f32",
                                                                "precision_asked": "f32"}},
           "chunk_gflop": 2.5, "matmul_peak_gflops": {"1": 100.0, "2": 150.0}}
    if bf16 is not None:
        out["latency_runtime"]["openvino-bf16"] = {"1": {"p50_ms": bf16}, "2": {"p50_ms": bf16 * 0.8},
                                                   "max_abs_diff_vs_torch": 0.05, "precision": bf16_ran,
                                                   "precision_asked": "bf16"}
    return out


def _theirs(p50):
    return {"latency": {"1": {"p50_ms": p50}, "2": {"p50_ms": p50}}}


def test_exported_runtime_rows_and_targets():
    import run as peers

    rounds = [{"dust": _ours(60.0, 40.0), "diffusion": _theirs(160.0)},
              {"dust": _ours(70.0, 30.0), "diffusion": _theirs(100.0)}]  # per-round ratios 0.25 and 0.3
    rows = peers.runtime_rows(rounds, [1, 2])
    r = rows["dust/onnxruntime"]
    assert r["lat1_p50_ms"] == pytest.approx(35.0) and r["ratio1"] == pytest.approx(0.275)
    assert r["ratio2"] == pytest.approx(0.1375) and r["max_abs_diff"] == pytest.approx(2e-6)
    absolute, ratios = peers.summarize_speed(rounds, ["dust", "diffusion"])
    goals = peers.targets(ratios, None, rows, absolute)
    assert any("onnxruntime, 1 thread, p50): ratio 0.28 -> NOT MET" in g for g in goals)
    assert any("onnxruntime, 2 threads, p50): ratio 0.14 -> MET" in g for g in goals)
    assert any(g.startswith("DUST small chunk under 50 ms") and "torch 65.0 ms, onnxruntime 35.0 ms -> MET "
               "(best: onnxruntime)" in g for g in goals)
    assert "DUST small (onnxruntime) | 35.0 | 0.28 | 17.5 | 0.14 | 2e-06 | f32 |" in \
        peers.tables(absolute, ratios, None, rows)


def test_openvino_bf16_row_and_its_target_lines():
    import run as peers

    # bf16 per-round 1-thread ratios 20/160 = 0.125 and 40/100 = 0.4 -> median 0.2625; 2 threads 0.1 and 0.32
    rounds = [{"dust": _ours(60.0, 40.0, bf16=20.0), "diffusion": _theirs(160.0)},
              {"dust": _ours(70.0, 30.0, bf16=40.0), "diffusion": _theirs(100.0)}]
    rows = peers.runtime_rows(rounds, [1, 2])
    r = rows["dust/openvino-bf16"]
    assert r["lat1_p50_ms"] == pytest.approx(30.0) and r["ratio1"] == pytest.approx(0.2625)
    assert r["ratio2"] == pytest.approx(0.21) and r["precision"] == "bf16"
    absolute, ratios = peers.summarize_speed(rounds, ["dust", "diffusion"])
    goals = peers.targets(ratios, None, rows, absolute)
    assert "DUST chunk latency <= 1/4 of Diffusion Policy's (openvino-bf16, 1 thread, p50): ratio 0.26 -> NOT MET" \
        in goals
    assert "DUST chunk latency <= 1/4 of Diffusion Policy's (openvino-bf16, 2 threads, p50): ratio 0.21 -> MET" in goals
    wall = [g for g in goals if g.startswith("DUST small chunk under 50 ms")]
    assert wall == ["DUST small chunk under 50 ms wall on 1 thread, 3 cameras 128x128: torch 65.0 ms, onnxruntime "
                    "35.0 ms, openvino-bf16 30.0 ms -> MET (best: openvino-bf16)"]
    assert "| DUST small (openvino-bf16) | 30.0 | 0.26 | 24.0 | 0.21 | 0.05 | bf16 |" in \
        peers.tables(absolute, ratios, None, rows)
    # a CPU without bf16: OpenVINO computes in f32, and every line says so
    rounds[0]["dust"]["latency_runtime"]["openvino-bf16"]["precision"] = "f32"
    rounds[1]["dust"]["latency_runtime"]["openvino-bf16"]["precision"] = "f32"
    goals = peers.targets(ratios, None, peers.runtime_rows(rounds, [1, 2]), absolute)
    assert any("(openvino-bf16, computed in f32, 1 thread, p50)" in g for g in goals)
    assert any("openvino-bf16, computed in f32 30.0 ms -> MET (best: openvino-bf16, computed in f32)" in g
               for g in goals)
    # without the openvino extra the worker reports the error for the row: the table says what to install
    for r in rounds:
        r["dust"]["latency_runtime"]["openvino-bf16"] = {"error": "openvino is not installed: pip install "
                                                                  "'vlastack[openvino]'"}
    table = peers.tables(absolute, ratios, None, peers.runtime_rows(rounds, [1, 2]))
    assert "| DUST small (openvino-bf16) | n/a | n/a | n/a | n/a | n/a | failed: openvino is not installed: pip " \
        "install 'vlastack[openvino]' |" in table


def test_chunk_flops_and_share_of_the_matmul_peak():
    import run as peers

    rounds = [{"dust": _ours(50.0, 40.0, bf16=20.0), "diffusion": _theirs(160.0)},
              {"dust": _ours(50.0, 30.0, bf16=40.0), "diffusion": _theirs(100.0)}]
    rounds[1]["dust"]["matmul_peak_gflops"] = {"1": 125.0, "2": 140.0}  # the best round's peak counts
    absolute, ratios = peers.summarize_speed(rounds, ["dust", "diffusion"])
    rows = peers.runtime_rows(rounds, [1, 2])
    f = peers.flop_rows(rounds, absolute, rows, [1, 2])["dust"]
    assert f["chunk_gflop"] == pytest.approx(2.5) and f["peak_gflops"] == {1: 125.0, 2: 150.0}
    # torch: 2.5 GFLOP in 50 ms = 50 GFLOP/s = 40% of 125; 2 threads 25 ms = 100 GFLOP/s = 67% of 150
    assert f["rows"]["torch"]["gflops1"] == pytest.approx(50.0) and f["rows"]["torch"]["share1"] == pytest.approx(0.4)
    assert f["rows"]["torch"]["share2"] == pytest.approx(100 / 150)
    assert f["rows"]["openvino-bf16"]["gflops1"] == pytest.approx(2.5 / 0.030)
    table = peers.tables(absolute, ratios, None, rows, [1, 2], peers.flop_rows(rounds, absolute, rows, [1, 2]))
    assert "| DUST small (torch) | 2.500 | 50.0 | 40% | 100.0 | 67% |" in table
    assert "fp32 matmul peak measured by DUST small's worker: 125.0 GFLOP/s on 1 thread, 150.0 GFLOP/s on 2 threads" \
        in table
    # results measured before the FLOP count existed: no table
    for r in rounds:
        del r["dust"]["chunk_gflop"]
    assert peers.flop_rows(rounds, absolute, rows, [1, 2]) == {}


def test_runtime_names_and_defaults(monkeypatch):
    pytest.importorskip("torch")
    import policy_speed  # the worker's rows: the names run.py accepts must be the ones it runs
    import run as peers

    assert list(peers.RUNTIMES) == list(policy_speed.EXPORTED_ROWS)
    assert policy_speed.EXPORTED_ROWS["openvino-bf16"] == ("openvino", "bf16")
    assert peers.parse_args(["--runtimes", "openvino-bf16,onnxruntime"]).runtimes == ["openvino-bf16", "onnxruntime"]
    assert peers.parse_args(["--runtimes", ""]).runtimes == []
    with pytest.raises(SystemExit):
        peers.parse_args(["--runtimes", "openvino_bf16"])
    have = {"onnx", "onnxruntime"}  # no openvino: its two rows are left out, with the extra named
    monkeypatch.setattr(peers.importlib.util, "find_spec", lambda m: object() if m in have else None)
    a = peers.parse_args([])
    assert a.runtimes == ["onnxruntime"]
    assert a.runtime_notes == ["openvino left out: openvino not installed (pip install 'vlastack[openvino]')",
                               "openvino-bf16 left out: openvino not installed (pip install 'vlastack[openvino]')"]
    have |= {"openvino"}
    assert peers.parse_args([]).runtimes == ["onnxruntime", "openvino", "openvino-bf16"]


def test_proxy_checkpoint_round_trips(tmp_path):
    pytest.importorskip("torch")
    from lerobot_proxy import LeRobotProxyConfig, LeRobotProxyPolicy, write_proxy_checkpoint

    from vlastack.policies.base import load_policy
    from vlastack.rollout.policy_adapters import policy_inputs

    cfg = LeRobotProxyConfig(checkpoint=str(tmp_path / "lerobot"), python=sys.executable, state_dim=16,
                             n_obs_steps=2, horizon=8)
    path = write_proxy_checkpoint(tmp_path / "proxy", cfg)
    assert json.loads((path / "config.json").read_text())["type"] == "lerobot"
    p = load_policy(path)
    assert isinstance(p, LeRobotProxyPolicy) and p.config == cfg
    inputs = policy_inputs(p.config)
    assert inputs.n_obs == 2 and inputs.state_dim == 16 and inputs.horizon == 8
    with pytest.raises(ValueError, match="checkpoint and python"):
        LeRobotProxyConfig()


def test_presets_fill_budgets_and_explicit_options_win():
    import run as peers

    a = peers.parse_args(["--quick"])
    assert (a.tasks, a.budget_min, a.eval_episodes, a.rounds) == (["OpenDrawer"], 5.0, 10, 2)
    a = peers.parse_args(["--quick", "--budget-minutes", "8", "--eval-episodes=4", "--tasks", "CloseDrawer"])
    assert (a.tasks, a.budget_min, a.eval_episodes, a.rounds) == (["CloseDrawer"], 8.0, 4, 2)
    a = peers.parse_args(["--budget-min", "3"])  # the old spelling still works
    assert (a.budget_min, a.eval_episodes, a.tasks) == (3.0, 10, ["OpenDrawer", "CloseDrawer"])
    assert peers.parse_args(["--smoke"]).budget_min == 1.0
    with pytest.raises(SystemExit):
        peers.parse_args(["--quick", "--smoke"])
    with pytest.raises(SystemExit):
        peers.parse_args(["--budget-minutes", "0"])
    with pytest.raises(SystemExit):
        peers.parse_args(["--policies", "dust,pi0"])


def test_speed_rounds_from_another_run(tmp_path):
    import run as peers

    path = tmp_path / "results.partial.json"
    with pytest.raises(SystemExit, match="no such file"):
        peers.load_rounds(path, ["dust"])
    path.write_text(json.dumps({"command": "run.py --quick", "rounds": [{"dust": {"params_trainable": 1}}]}))
    rounds, cmd = peers.load_rounds(path, ["dust"])
    assert cmd == "run.py --quick" and rounds[0]["dust"]["params_trainable"] == 1
    with pytest.raises(SystemExit, match="no measurement of"):
        peers.load_rounds(path, ["dust", "act"])
    path.write_text(json.dumps({"command": "x", "success": {}}))
    with pytest.raises(SystemExit, match="holds no speed rounds"):
        peers.load_rounds(path, ["dust"])


def test_success_target_is_not_shown_when_neither_succeeds():
    import run as peers

    def s(k, n=10):
        return {"overall": {"successes": k, "episodes": n, "success_rate": k / n}}

    assert peers.targets({}, {"dust": s(0), "diffusion": s(0)})[0].endswith("budget is too short to tell)")
    assert peers.targets({}, {"dust": s(3), "diffusion": s(2)})[0].endswith("-> MET")
    assert peers.targets({}, {"dust": s(1), "diffusion": s(2)})[0].endswith("-> NOT MET")
