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
