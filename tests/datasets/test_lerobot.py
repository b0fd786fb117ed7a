"""LeRobotDataset reader and writer against datasets written by LeRobot itself.

Fixtures (tests/fixtures/, made by scripts/fixtures/make_lerobot_fixture.py):
- ``lerobot_v30``: written by lerobot 0.4.4 (``LeRobotDataset.create`` + ``add_frame`` +
  ``save_episode``), codebase v3.0, two cameras as AV1 mp4 with the three episodes back to back.
- ``lerobot_v30_images``: lerobot 0.4.4 with ``use_videos=False`` (PNG bytes inside the parquet).
- ``lerobot_v21``: written by lerobot 0.3.3 (the last release writing codebase v2.1; 0.4.4
  cannot), same calls, one parquet and one mp4 per episode.
Each has ``expected.json``: what the script handed to ``add_frame`` (exact states/actions,
per-frame image means), so these tests check our decoding against LeRobot's input.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from vlastack.datasets.lerobot import ConversionError, LeRobotReader, is_lerobot_dir, lerobot_version
from vlastack.types import ACTION, STATE

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
VIDEO_FIXTURES = ["lerobot_v30", "lerobot_v21"]
ALL_FIXTURES = VIDEO_FIXTURES + ["lerobot_v30_images"]
MEAN_TOL = 4.0  # per-frame per-channel mean error allowed after AV1 yuv420p compression


def expected(name: str) -> dict:
    return json.loads((FIXTURES / name / "expected.json").read_text())


def bright_square_corner(img: np.ndarray) -> tuple[float, float]:
    """Top-left of the near-white square: the centroid of bright pixels minus half its side."""
    mask = img.min(-1) > 200  # (H, W)
    rows, cols = np.nonzero(mask)
    return rows.mean(), cols.mean()


@pytest.mark.parametrize("name", ALL_FIXTURES)
def test_reader_matches_what_lerobot_was_given(name):
    exp = expected(name)
    with LeRobotReader(FIXTURES / name) as r:
        assert r.version == exp["codebase_version"]
        assert r.num_episodes == len(exp["lengths"])
        assert r.num_frames == sum(exp["lengths"])
        assert r.spec.fps == exp["fps"]
        assert r.spec.features[STATE].kind == "state" and r.spec.features[STATE].shape == (4,)
        assert r.spec.features[ACTION].kind == "action" and r.spec.features[ACTION].shape == (3,)
        assert r.spec.features[STATE].names == ("x", "y", "z", "gripper")
        assert r.spec.features["next.reward"].kind == "other"
        assert sorted(r.spec.cameras) == sorted(exp["cameras"])
        for cam, (h, w) in exp["cameras"].items():
            f = r.spec.features[f"observation.images.{cam}"]
            assert (f.kind, f.shape, f.dtype) == ("image", (h, w, 3), "uint8")
        episodes = list(r)
    assert [t for _, t, _ in episodes] == exp["tasks"]
    for i, (frames, task, meta) in enumerate(episodes):
        n = exp["lengths"][i]
        assert meta["episode_index"] == i and meta["tasks"] == [exp["tasks"][i]]
        np.testing.assert_array_equal(frames[STATE], np.asarray(exp["state"][i], np.float32))
        np.testing.assert_array_equal(frames[ACTION], np.asarray(exp["action"][i], np.float32))
        np.testing.assert_array_equal(frames["next.reward"][:, 0], np.asarray(exp["reward"][i], np.float32))
        for cam, (h, w) in exp["cameras"].items():
            imgs = frames[f"observation.images.{cam}"]
            assert imgs.shape == (n, h, w, 3) and imgs.dtype == np.uint8
            means = imgs.reshape(n, -1, 3).mean(1)  # (T, 3)
            np.testing.assert_allclose(means, np.asarray(exp["image_mean"][cam][i]), atol=MEAN_TOL)


@pytest.mark.parametrize("name", VIDEO_FIXTURES)
def test_video_frames_are_the_right_frames(name):
    """The moving square pins each decoded frame to its frame index (no off-by-one across episodes)."""
    exp = expected(name)
    side = exp["square"]
    with LeRobotReader(FIXTURES / name) as r:
        for i in range(r.num_episodes):
            frames, _, _ = r.read_episode(i)
            for cam, (h, w) in exp["cameras"].items():
                for t, img in enumerate(frames[f"observation.images.{cam}"]):
                    r0, c0 = 4 + t % (h - side - 8), (2 * t) % (w - side)
                    rc = bright_square_corner(img)
                    assert abs(rc[0] - (r0 + (side - 1) / 2)) < 1.0 and abs(rc[1] - (c0 + (side - 1) / 2)) < 1.0, \
                        (name, i, cam, t, rc, (r0, c0))


def test_png_images_in_parquet_are_lossless():
    exp = expected("lerobot_v30_images")
    with LeRobotReader(FIXTURES / "lerobot_v30_images") as r:
        for i, (frames, _, _) in enumerate(r):
            means = frames["observation.images.front"].reshape(exp["lengths"][i], -1, 3).mean(1)
            np.testing.assert_allclose(means, np.asarray(exp["image_mean"]["front"][i]), atol=1e-3)


def test_random_access_and_detection():
    assert is_lerobot_dir(FIXTURES / "lerobot_v30") and not is_lerobot_dir(FIXTURES)
    assert lerobot_version(FIXTURES / "lerobot_v21") == "v2.1"
    with LeRobotReader(FIXTURES / "lerobot_v30") as r:
        late = r.read_episode(2)[0]["observation.images.front"]
        early = r.read_episode(0)[0]["observation.images.front"]  # seeks backwards
        again = r.read_episode(2)[0]["observation.images.front"]
    assert late.shape[0] == 12 and early.shape[0] == 8
    np.testing.assert_array_equal(late, again)
    with pytest.raises(IndexError):
        LeRobotReader(FIXTURES / "lerobot_v30").read_episode(3)


# ----------------------------------------------------------------------------- bad input

def _copy(name: str, tmp_path: Path) -> Path:
    dst = tmp_path / name
    shutil.copytree(FIXTURES / name, dst)
    return dst


def test_missing_dir_and_info(tmp_path):
    with pytest.raises(ConversionError, match="not a directory"):
        LeRobotReader(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConversionError, match="info.json"):
        LeRobotReader(tmp_path / "empty")


def test_unsupported_version_names_the_choices(tmp_path):
    root = _copy("lerobot_v30", tmp_path)
    info = json.loads((root / "meta/info.json").read_text())
    info["codebase_version"] = "v1.6"
    (root / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(ConversionError, match=r"v1\.6.*v2\.1"):
        LeRobotReader(root)


def test_missing_video_names_the_file(tmp_path):
    root = _copy("lerobot_v30", tmp_path)
    (root / "videos/observation.images.wrist/chunk-000/file-000.mp4").unlink()
    r = LeRobotReader(root)
    with pytest.raises(ConversionError, match="observation.images.wrist"):
        r.read_episode(0)


def test_length_mismatch_names_the_episode(tmp_path):
    root = _copy("lerobot_v21", tmp_path)
    info = json.loads((root / "meta/episodes.jsonl").read_text().splitlines()[1])
    assert info["length"] == 10
    # claim the episode is longer than its video and data: the length check names the episode
    lines = (root / "meta/episodes.jsonl").read_text().splitlines()
    lines[1] = json.dumps({**info, "length": 11})
    (root / "meta/episodes.jsonl").write_text("\n".join(lines) + "\n")
    r = LeRobotReader(root)
    with pytest.raises(ConversionError, match="episode 1 has 10 frames"):
        r.read_episode(1)


def test_video_shorter_than_episode(tmp_path):
    """A video cut short leaves frames with no match within the tolerance: named, not silently wrong."""
    root = _copy("lerobot_v30", tmp_path)
    import pyarrow.parquet as pq

    path = next((root / "meta/episodes").glob("*/*.parquet"))
    tab = pq.read_table(path)
    col = "videos/observation.images.front/from_timestamp"
    vals = tab[col].to_pylist()
    vals[2] = vals[2] + 0.5  # episode 2 now runs past the end of the file
    tab = tab.set_column(tab.column_names.index(col), col, __import__("pyarrow").array(vals))
    pq.write_table(tab, path)
    r = LeRobotReader(root)
    with pytest.raises(ConversionError, match="observation.images.front"):
        r.read_episode(2)


# ----------------------------------------------------------------------------- writer (v3.0)

def _smooth_episode(t: int, h: int, w: int, seed: int) -> np.ndarray:
    """(t, h, w, 3) uint8 frames a video codec keeps well: gradients plus a moving block."""
    yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    base = np.stack([xx, yy, 0.5 * (xx + yy)], -1) * 150 + 30 + 10 * seed  # (h, w, 3)
    out = np.repeat(base[None], t, 0)  # (t, h, w, 3)
    for i in range(t):
        r, c = (2 * i) % (h - 8), (3 * i + seed) % (w - 8)
        out[i, r:r + 8, c:c + 8] = (230, 40, 40)
    return out.round().astype(np.uint8)


def _episodes_for(spec, lengths, tasks, action_free=()):
    rng = np.random.default_rng(0)
    for i, t in enumerate(lengths):
        frames = {k: _smooth_episode(t, *spec.features[k].shape[:2], i) for k in spec.image_keys}
        frames[STATE] = rng.standard_normal((t, spec.state_dim)).astype(np.float32)
        if i not in action_free:
            frames[ACTION] = rng.standard_normal((t, spec.action_dim)).astype(np.float32)
        yield frames, tasks[i % len(tasks)], {"success": i % 2 == 0, "source": f"test {i}",
                                               "has_action": i not in action_free}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB between uint8 images."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def _compare(ref_eps, got_eps, min_psnr=26.0):
    assert len(ref_eps) == len(got_eps)
    for (f1, t1, m1), (f2, t2, m2) in zip(ref_eps, got_eps):
        assert t1 == t2
        assert set(f1) == set(f2), (sorted(f1), sorted(f2))
        for k, v in f1.items():
            if v.dtype == np.uint8:
                assert f2[k].shape == v.shape and f2[k].dtype == np.uint8
                assert psnr(v, f2[k]) > min_psnr, (k, psnr(v, f2[k]))  # AV1/H.264 yuv420p at 32 x 48 px
                np.testing.assert_allclose(v.mean((1, 2)), f2[k].mean((1, 2)), atol=MEAN_TOL, err_msg=k)
            else:
                np.testing.assert_array_equal(v, f2[k], err_msg=k)


@pytest.mark.parametrize("vcodec", ["auto", "libx264"])
def test_writer_output_reads_back(tmp_path, vcodec):
    from vlastack.datasets.lerobot import write_lerobot_v3
    from vlastack.types import DatasetSpec

    spec = DatasetSpec.robot(cameras=("left", "wrist"), image_size=(32, 48), state_dim=5, action_dim=7, fps=15)
    ref = list(_episodes_for(spec, (6, 9, 4), ("open the drawer", "turn on the stove"), action_free=(1,)))
    done = []
    out = write_lerobot_v3(tmp_path / "ds", spec, iter(ref), 3, vcodec=vcodec, progress=lambda a, b: done.append((a, b)))
    assert done == [(1, 3), (2, 3), (3, 3)] and sorted(p.name for p in tmp_path.iterdir()) == ["ds"]
    info = json.loads((out / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["fps"] == 15 and info["total_frames"] == 19
    assert info["total_tasks"] == 2 and info["features"]["observation.images.left"]["dtype"] == "video"
    assert info["features"]["observation.images.left"]["info"]["video.codec"] == ("av1" if vcodec == "auto" else "h264")
    stats = json.loads((out / "meta/stats.json").read_text())
    assert np.asarray(stats["observation.images.wrist"]["mean"]).shape == (3, 1, 1)
    for name in ("min", "max", "mean", "std", "q01", "q99"):
        assert np.asarray(stats[STATE][name]).shape == (5,)
    all_state = np.concatenate([f[STATE] for f, _, _ in ref])
    np.testing.assert_allclose(stats[STATE]["mean"], all_state.mean(0), rtol=1e-5, atol=1e-6)
    assert len(list((out / "videos/observation.images.left").rglob("*.mp4"))) == 1  # episodes back to back
    with LeRobotReader(out) as r:
        got = list(r)
        assert r.spec.features[STATE].names == spec.features[STATE].names
    assert [m["success"] for _, _, m in got] == [True, False, True]
    assert got[1][2]["has_action"] is False and ACTION not in got[1][0]
    _compare(ref, got)


def test_writer_rejects_bad_input(tmp_path):
    from vlastack.datasets.lerobot import write_lerobot_v3
    from vlastack.types import DatasetSpec

    odd = DatasetSpec.robot(cameras=("left",), image_size=(31, 32), state_dim=2, action_dim=7)
    with pytest.raises(ConversionError, match="even height and width"):
        write_lerobot_v3(tmp_path / "a", odd, _episodes_for(odd, (3,), ("t",)))
    assert not list(tmp_path.iterdir())  # nothing half-written
    frac = DatasetSpec.robot(cameras=(), state_dim=2, action_dim=7, fps=12.5)
    with pytest.raises(ConversionError, match="integer fps"):
        write_lerobot_v3(tmp_path / "b", frac, _episodes_for(frac, (3,), ("t",)))
    ok = DatasetSpec.robot(cameras=(), state_dim=2, action_dim=7)
    write_lerobot_v3(tmp_path / "c", ok, _episodes_for(ok, (3,), ("t",)))
    with pytest.raises(ConversionError, match="already exists"):
        write_lerobot_v3(tmp_path / "c", ok, _episodes_for(ok, (3,), ("t",)))
    with pytest.raises(ConversionError, match="video codec 'vp8' unknown"):
        write_lerobot_v3(tmp_path / "d", ok, _episodes_for(ok, (3,), ("t",)), vcodec="vp8")


def test_lerobot_fixture_rewritten_by_us_matches(tmp_path):
    """LeRobot's fixture -> our v3 writer -> our reader: same data (images within two generations of AV1)."""
    from vlastack.datasets.lerobot import write_lerobot_v3

    with LeRobotReader(FIXTURES / "lerobot_v30") as r:
        ref = list(r)
        spec = r.spec
    out = write_lerobot_v3(tmp_path / "again", spec, iter(ref), len(ref))
    with LeRobotReader(out) as r2:
        assert r2.spec == spec
        _compare(ref, list(r2))


@pytest.mark.skipif(not os.environ.get("VLASTACK_LEROBOT_PYTHON"),
                    reason="set VLASTACK_LEROBOT_PYTHON to a python with lerobot 0.4.4 to run")
def test_lerobot_itself_loads_our_output(tmp_path):
    """LeRobotDataset (0.4.4) reads what our writer wrote: frames, tasks and pixels agree with our reader."""
    import subprocess

    from vlastack.datasets.lerobot import write_lerobot_v3

    with LeRobotReader(FIXTURES / "lerobot_v30") as r:
        ref, spec = list(r), r.spec
    out = write_lerobot_v3(tmp_path / "ours", spec, iter(ref), len(ref))
    script = Path(__file__).resolve().parents[2] / "scripts/fixtures/check_lerobot_load.py"
    res = subprocess.run([os.environ["VLASTACK_LEROBOT_PYTHON"], str(script), str(out)], capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    summary = json.loads(res.stdout)
    assert summary["num_frames"] == 30 and summary["num_episodes"] == 3 and summary["fps"] == 10
    with LeRobotReader(out) as r:
        ours = list(r)
    k = 0
    for frames, task, meta in ours:
        for t in range(len(frames[STATE])):
            rec = summary["frames"][k]
            assert (rec["episode_index"], rec["frame_index"], rec["task"]) == (meta["episode_index"], t, task)
            np.testing.assert_array_equal(np.float32(rec["state"]), frames[STATE][t])
            np.testing.assert_array_equal(np.float32(rec["action"]), frames[ACTION][t])
            for cam, mean in rec["image_mean"].items():
                np.testing.assert_allclose(mean, frames[cam][t].reshape(-1, 3).mean(0), atol=0.05)
            k += 1


# ----------------------------------------------------------------------------- store <-> LeRobot

@pytest.mark.parametrize("name", ALL_FIXTURES)
def test_lerobot_fixture_into_store(tmp_path, name):
    from vlastack.datasets.lerobot import lerobot_to_store
    from vlastack.datasets.store import TrajectoryStore

    exp = expected(name)
    calls = []
    lerobot_to_store(FIXTURES / name, tmp_path / "s.zarr", progress=lambda a, b: calls.append((a, b)))
    assert calls[-1] == (len(exp["lengths"]),) * 2
    with TrajectoryStore.open(tmp_path / "s.zarr") as s:
        assert s.num_episodes == len(exp["lengths"]) and s.num_frames == sum(exp["lengths"])
        assert np.array_equal(s.episode_ends, np.cumsum(exp["lengths"]))
        assert [e["instruction"] for e in s.episodes] == exp["tasks"]
        assert s.episodes[1]["source"].startswith(f"lerobot {exp['codebase_version']}")
        assert s.fps == exp["fps"] and s.spec.features[STATE].kind == "state"
        assert s.stats is not None and STATE in s.stats
        for i in range(s.num_episodes):
            ep = s.episode(i)
            np.testing.assert_array_equal(ep[STATE], np.asarray(exp["state"][i], np.float32))
            for cam in exp["cameras"]:
                means = ep[f"observation.images.{cam}"].reshape(exp["lengths"][i], -1, 3).mean(1)
                np.testing.assert_allclose(means, np.asarray(exp["image_mean"][cam][i]), atol=MEAN_TOL)


def test_store_round_trip_through_lerobot_v3(tmp_path):
    """store -> LeRobot v3 -> store: low-dim exact, images within AV1 tolerance, metadata kept."""
    from vlastack.datasets.lerobot import lerobot_to_store, store_to_lerobot
    from vlastack.datasets.store import TrajectoryStore
    from vlastack.types import DatasetSpec

    spec = DatasetSpec.robot(cameras=("left", "wrist"), image_size=(32, 48), state_dim=9, action_dim=7, fps=20)
    ref = list(_episodes_for(spec, (7, 12, 5), ("open the drawer", "pick the apple"), action_free=(2,)))
    with TrajectoryStore.create(tmp_path / "a.zarr", spec) as s:
        for frames, task, meta in ref:
            s.append_episode(frames, task=task, success=meta["success"], source=meta["source"])
    out = store_to_lerobot(tmp_path / "a.zarr", tmp_path / "lerobot")
    lerobot_to_store(out, tmp_path / "b.zip")
    with TrajectoryStore.open(tmp_path / "a.zarr") as a, TrajectoryStore.open(tmp_path / "b.zip") as b:
        assert b.spec == a.spec and b.num_frames == a.num_frames
        assert np.array_equal(a.episode_ends, b.episode_ends)
        for ea, eb in zip(a.episodes, b.episodes):
            for field in ("instruction", "success", "length", "source", "has_action"):
                assert ea[field] == eb[field], field
        _compare([(a.episode(i), "", {}) for i in range(3)], [(b.episode(i), "", {}) for i in range(3)])
    assert b.episodes[2]["has_action"] is False


# ----------------------------------------------------------------------------- vlastack inspect / convert

def test_detect_format(tmp_path):
    from vlastack.datasets.convert import detect_format

    assert detect_format(FIXTURES / "lerobot_v30") == "lerobot"
    assert detect_format(FIXTURES / "robomimic_lift_image.hdf5") == "robomimic"
    with pytest.raises(ConversionError, match="no such file"):
        detect_format(tmp_path / "nope")
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(ConversionError, match=r"not a recognised dataset; expected one of \('store', 'lerobot'"):
        detect_format(tmp_path / "x.txt")


def test_convert_and_inspect_commands(tmp_path, capsys):
    from vlastack.datasets.convert import convert_main, detect_format, inspect_main
    from vlastack.datasets.store import TrajectoryStore

    exp = expected("lerobot_v21")
    z = tmp_path / "v21.zarr"
    assert convert_main([str(FIXTURES / "lerobot_v21"), str(z), "--quiet"]) == 0
    assert "wrote 3 episodes, 30 frames (LeRobot v2.1 -> store)" in capsys.readouterr().out
    assert detect_format(z) == "store"
    # store -> LeRobot v3.0 -> zip store: the v2.1 data came through both hops
    assert convert_main([str(z), str(tmp_path / "v30"), "--to", "lerobot", "--quiet"]) == 0
    assert lerobot_version(tmp_path / "v30") == "v3.0"
    assert convert_main([str(tmp_path / "v30"), str(tmp_path / "back.zip"), "--quiet"]) == 0
    capsys.readouterr()
    with TrajectoryStore.open(tmp_path / "back.zip") as s:
        assert [e["instruction"] for e in s.episodes] == exp["tasks"]
        np.testing.assert_array_equal(s.episode(2)[STATE], np.asarray(exp["state"][2], np.float32))

    assert inspect_main([str(tmp_path / "back.zip"), "--episodes", "2"]) == 0
    out = capsys.readouterr().out
    for text in ("episodes", "frames", "30", "observation.images.front", "(32, 48, 3)", "uint8",
                 "observation.state", "(4)", "float32", "pick up the red cube", "2/2 (100%)", "open the drawer",
                 "size on disk", "KiB", "statistics (saved", "q99", "lerobot v2.1 lerobot_v21 episode 1"):
        assert text in out, text


def test_commands_report_bad_input(tmp_path, capsys):
    from vlastack.datasets.convert import convert_main, inspect_main

    assert inspect_main([str(tmp_path / "missing.zarr")]) == 2
    assert "missing.zarr" in capsys.readouterr().err
    (tmp_path / "notes.txt").write_text("x")
    assert convert_main([str(tmp_path / "notes.txt"), str(tmp_path / "o.zarr"), "--quiet"]) == 2
    assert "not a recognised dataset" in capsys.readouterr().err
    out = tmp_path / "o.zarr"
    assert convert_main([str(FIXTURES / "lerobot_v30_images"), str(out), "--quiet"]) == 0
    assert convert_main([str(FIXTURES / "lerobot_v30_images"), str(out), "--quiet"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert convert_main([str(FIXTURES / "lerobot_v30_images"), str(out), "--quiet", "--overwrite",
                         "--task", "wave"]) == 0
    assert convert_main([str(FIXTURES / "robomimic_lift_image.hdf5"), str(tmp_path / "r.zarr"), "--quiet",
                         "--mapping", "colour=red"]) == 2
    assert "unknown name 'colour'" in capsys.readouterr().err


def test_console_script_runs(tmp_path):
    """Once through the installed ``vlastack`` entry point, as a user runs it."""
    import subprocess
    import sys

    exe = Path(sys.executable).parent / "vlastack"
    if not exe.exists():
        pytest.skip("the vlastack console script is not installed in this environment")
    dst = tmp_path / "cli.zarr"
    res = subprocess.run([str(exe), "convert", str(FIXTURES / "lerobot_v30"), str(dst)], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "3/3" in res.stdout + res.stderr and "wrote 3 episodes" in res.stdout
    res = subprocess.run([str(exe), "inspect", str(dst), "--no-stats"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "observation.images.wrist" in res.stdout and "pick up the red cube" in res.stdout


def test_back_to_back_episodes_decode_without_reseeking():
    """Sequential reading of a v3.0 file holding three episodes seeks once per camera, not per episode."""
    with LeRobotReader(FIXTURES / "lerobot_v30") as r:
        list(r)
        assert {k: c.seeks for k, c in r._cursors.items()} == {"observation.images.front": 1,
                                                                "observation.images.wrist": 1}
