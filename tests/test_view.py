"""`vlastack view`: one stored episode as an mp4 with curves (decoded back) and as a Rerun recording."""
import numpy as np
import pytest

from vlastack import view as V
from vlastack.cli import main as cli_main
from vlastack.datasets.store import TrajectoryStore
from vlastack.rollout.video import count_frames
from vlastack.types import ACTION, STATE, DatasetSpec, image_key

LENGTHS = (6, 9)
SIZE = (32, 48)  # (H, W)
# one solid colour per camera, so the decoded video shows where each camera went
COLOURS = {"left": (230, 30, 30), "wrist": (30, 30, 230)}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Two episodes: cameras left (red) + wrist (blue) 32x48, state 3, action 2; a ramp in state[0]."""
    path = tmp_path_factory.mktemp("view") / "demo.zarr"
    spec = DatasetSpec.robot(cameras=tuple(COLOURS), image_size=SIZE, state_dim=3, action_dim=2, fps=10.0)
    with TrajectoryStore.create(path, spec) as st:
        for i, n in enumerate(LENGTHS):
            frames = {image_key(c): np.broadcast_to(np.array(rgb, np.uint8), (n, *SIZE, 3)).copy()
                      for c, rgb in COLOURS.items()}
            state = np.zeros((n, 3), np.float32)
            state[:, 0] = np.linspace(0, 1, n)  # (T,)
            state[:, 1] = i
            frames[STATE] = state
            frames[ACTION] = np.stack([np.sin(np.arange(n)), np.cos(np.arange(n))], 1).astype(np.float32)  # (T, 2)
            st.append_episode(frames, task=f"open drawer {i}", success=bool(i))
    return str(path)


def test_mp4_frames_hold_cameras_and_moving_cursor(store, tmp_path):
    out = V.view(store, episode=1, out=tmp_path / "ep1.mp4", format="mp4")
    ep = V.load_episode(store, 1)
    expected = V.episode_frames(ep)
    n, (h, w) = count_frames(out)
    assert n == LENGTHS[1] == len(expected)
    assert (h, w) == expected[0].shape[:2]
    assert w > 2 * SIZE[1] + V.PANEL_WIDTH - 2 and h % 2 == 0 and w % 2 == 0  # cameras side by side + curves
    import av

    with av.open(str(out)) as c:
        decoded = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    # the two cameras, upscaled side by side below the caption: red on the left, blue beside it
    scale = int(np.ceil(192 / SIZE[0]))
    row = decoded[0].shape[0] // 2
    red = decoded[0][row, SIZE[1] * scale // 2].astype(int)
    blue = decoded[0][row, SIZE[1] * scale + SIZE[1] * scale // 2].astype(int)
    assert red[0] > 180 and red[2] < 80, red
    assert blue[2] > 180 and blue[0] < 80, blue
    # the curve panel changes between frames (the cursor moves), the camera part does not
    cam_w = 2 * SIZE[1] * scale
    panel0, panel_last = expected[0][:, cam_w:], expected[-1][:, cam_w:]
    assert np.abs(panel0.astype(int) - panel_last.astype(int)).sum() > 0
    cursor = np.all(expected[3][:, cam_w:] == V._CURSOR_RGB, axis=-1)  # (H, panel W)
    cols = np.flatnonzero(cursor.any(0))
    assert len(cols) and cols.max() - cols.min() <= 2  # one thin vertical line


def test_cli_writes_mp4_and_rejects_bad_input(store, tmp_path, capsys):
    out = tmp_path / "cli.mp4"
    assert cli_main(["view", store, "episode=0", f"out={out}", "cameras=left"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    n, (h, w) = count_frames(out)
    assert n == LENGTHS[0] and w < 2 * SIZE[1] * 6 + V.PANEL_WIDTH  # one camera only
    assert cli_main(["view", store, "episode=5", "format=mp4"]) == 2
    assert "out of range; the store has episodes 0..1" in capsys.readouterr().err
    assert cli_main(["view", store, "cameras=top", "format=mp4"]) == 2
    assert "cameras: unknown ['top']" in capsys.readouterr().err
    assert cli_main(["view", store, "format=gif"]) == 2
    assert "valid choices: ['auto', 'rrd', 'mp4']" in capsys.readouterr().err
    assert cli_main(["view", store, "speed=2"]) == 2
    assert "unknown option 'speed'" in capsys.readouterr().err


def test_rerun_recording_contents(store, tmp_path):
    pytest.importorskip("rerun", reason="rerun-sdk (the `viz` extra) is not installed")
    import rerun.dataframe as rdf

    out = V.view(store, episode=1, out=tmp_path / "ep1.rrd")  # format inferred from the suffix
    assert out.suffix == ".rrd" and out.stat().st_size > 0
    rec = rdf.load_recording(str(out))
    paths = {c.entity_path for c in rec.schema().component_columns()}
    assert {"/cameras/left", "/cameras/wrist", "/state/s0", "/state/s2", "/action/a0", "/action/a1",
            "/success", "/instruction", "/episode"} <= paths, sorted(paths)
    table = rec.view(index="frame", contents="/state/s0").select().read_all()
    frames = table.column("frame").to_pylist()
    assert frames == list(range(LENGTHS[1]))
    scalar_col = [n for n in table.column_names if n.startswith("/state/s0:") and "Scalar" in n][0]
    values = [v[0] for v in table.column(scalar_col).to_pylist()]
    np.testing.assert_allclose(values, np.linspace(0, 1, LENGTHS[1]), atol=1e-6)
    images = rec.view(index="frame", contents="/cameras/left").select().read_all()
    assert images.num_rows == LENGTHS[1]
    static = rec.view(index="frame", contents="/instruction").select_static().read_all()
    text_col = [n for n in static.column_names if "Text" in n and "/instruction" in n][0]
    assert static.column(text_col).to_pylist()[0][0] == "open drawer 1"
    success = rec.view(index="frame", contents="/success").select().read_all()
    s_col = [n for n in success.column_names if n.startswith("/success:") and "Scalar" in n][0]
    assert [v[0] for v in success.column(s_col).to_pylist()] == [0.0] * (LENGTHS[1] - 1) + [1.0]
