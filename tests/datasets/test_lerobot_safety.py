"""Untrusted LeRobot datasets: path templates that leave the dataset are refused; ``overwrite`` only ever
replaces a dataset we wrote, and swaps it in atomically."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from vlastack import fsutil
from vlastack.datasets.lerobot import ConversionError, LeRobotReader, write_lerobot_v3
from vlastack.types import STATE, DatasetSpec

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
V3_DATA = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
V3_VIDEO = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"


def _dataset_with(tmp_path, name="lerobot_v30", **info_changes) -> Path:
    """A copy of a fixture, a copy of its files *outside* it (what a hostile template points at), and
    ``info_changes`` applied to its info.json (``{outside}`` in a value is that folder)."""
    root = tmp_path / "ds"
    shutil.copytree(FIXTURES / name, root)
    outside = tmp_path / "outside"
    shutil.copytree(FIXTURES / name, outside)
    info = json.loads((root / "meta/info.json").read_text())
    for k, v in info_changes.items():
        info[k] = v.replace("{outside}", str(outside))
    (root / "meta/info.json").write_text(json.dumps(info))
    return root


def _read_all(root: Path) -> list:
    with LeRobotReader(root) as r:
        return list(r)


@pytest.mark.parametrize("key, template", [
    ("data_path", "../outside/" + V3_DATA),
    ("data_path", "{outside}/" + V3_DATA),
    ("video_path", "../outside/" + V3_VIDEO),
    ("video_path", "{outside}/" + V3_VIDEO),
    ("data_path", "data/../../outside/" + V3_DATA),
], ids=["data-dotdot", "data-absolute", "video-dotdot", "video-absolute", "data-inner-dotdot"])
def test_path_templates_leaving_the_dataset_are_refused(tmp_path, key, template):
    root = _dataset_with(tmp_path, **{key: template})
    with pytest.raises(ConversionError, match=rf"info\.json: {key} .*outside the dataset"):
        _read_all(root)


def test_template_fields_other_than_the_known_ones_are_refused(tmp_path):
    root = _dataset_with(tmp_path, data_path="data/{chunk_index.__class__}/file-{file_index:03d}.parquet")
    with pytest.raises(ConversionError, match=r"data_path .*chunk_index\.__class__.*fields"):
        _read_all(root)


def test_a_file_that_resolves_outside_the_dataset_is_refused(tmp_path):
    root = _dataset_with(tmp_path)
    target = root / "data/chunk-000/file-000.parquet"
    target.unlink()
    target.symlink_to(tmp_path / "outside/data/chunk-000/file-000.parquet")
    with pytest.raises(ConversionError, match=r"file-000\.parquet.*resolves outside the dataset"):
        _read_all(root)


def test_an_image_cell_path_outside_the_dataset_is_refused(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path / "ds"
    shutil.copytree(FIXTURES / "lerobot_v30_images", root)
    data = next((root / "data").rglob("*.parquet"))
    table = pq.read_table(data)
    key = next(c for c in table.column_names if c.startswith("observation.images."))
    secret = tmp_path / "secret.png"
    secret.write_bytes(table[key][0].as_py()["bytes"])  # a valid PNG, outside the dataset
    cells = pa.array([{"bytes": None, "path": str(secret)}] * table.num_rows, type=table[key].type)
    pq.write_table(table.set_column(table.column_names.index(key), key, cells), data)
    with pytest.raises(ConversionError, match=rf"{key}: image path .*secret\.png.*outside the dataset"):
        _read_all(root)


# --------------------------------------------------------------------------- overwrite

SPEC = DatasetSpec.robot(cameras=(), state_dim=2, action_dim=3, fps=10)


def _episodes(value: float, n: int = 2):
    for _ in range(n):
        yield ({STATE: np.full((4, 2), value, np.float32), "action": np.full((4, 3), value, np.float32)},
               "wave", {})


def _states(root: Path) -> float:
    return float(np.concatenate([f[STATE] for f, _, _ in _read_all(root)]).mean())


def test_overwrite_refuses_a_directory_that_is_not_our_dataset(tmp_path):
    home = tmp_path / "home"
    (home / "meta").mkdir(parents=True)
    (home / "thesis.tex").write_text("precious")
    with pytest.raises(ConversionError, match=r"home: .*not a dataset written by vlastack.*refusing to replace"):
        write_lerobot_v3(home, SPEC, _episodes(1.0), overwrite=True)
    assert (home / "thesis.tex").read_text() == "precious"
    theirs = tmp_path / "theirs"
    shutil.copytree(FIXTURES / "lerobot_v30", theirs)  # a LeRobot dataset written by LeRobot, not by us
    with pytest.raises(ConversionError, match="not a dataset written by vlastack"):
        write_lerobot_v3(theirs, SPEC, _episodes(1.0), overwrite=True)
    assert (theirs / "meta/info.json").read_bytes() == (FIXTURES / "lerobot_v30/meta/info.json").read_bytes()
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(ConversionError, match="not a directory"):
        write_lerobot_v3(a_file, SPEC, _episodes(1.0), overwrite=True)
    lookalike = tmp_path / "out.partial"  # a user's folder that happens to have our temporary name
    lookalike.mkdir()
    (lookalike / "keep").write_text("x")
    write_lerobot_v3(tmp_path / "out", SPEC, _episodes(1.0))
    assert (lookalike / "keep").exists()


def test_overwrite_replaces_our_dataset_atomically(tmp_path, monkeypatch):
    out = tmp_path / "out"
    write_lerobot_v3(out, SPEC, _episodes(1.0))
    write_lerobot_v3(out, SPEC, _episodes(2.0), overwrite=True)
    assert _states(out) == 2.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary or old copies left

    class Killed(BaseException):
        pass

    def killed(*a, **k):
        raise Killed()

    # a failure while the new dataset is written, or a kill at the swap: the old dataset stays whole
    def failing():
        yield from _episodes(3.0, 1)
        raise RuntimeError("source broke")

    with pytest.raises(RuntimeError, match="source broke"):
        write_lerobot_v3(out, SPEC, failing(), overwrite=True)
    assert _states(out) == 2.0 and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    if not fsutil._exchange_supported(tmp_path):
        pytest.skip("this filesystem has no RENAME_EXCHANGE")
    monkeypatch.setattr(fsutil, "_exchange", killed)
    with pytest.raises(Killed):
        write_lerobot_v3(out, SPEC, _episodes(4.0), overwrite=True)
    assert _states(out) == 2.0
    # the swap is one rename: no moment without a complete dataset at ``out``
    monkeypatch.undo()
    seen = []
    real = os.replace

    def watch(a, b, **k):
        seen.append((Path(a).name, Path(b).name))
        return real(a, b, **k)

    monkeypatch.setattr(os, "replace", watch)
    write_lerobot_v3(out, SPEC, _episodes(5.0), overwrite=True)
    assert _states(out) == 5.0
    assert not [s for s in seen if "out" in s], f"dataset moved with os.replace: {seen}"
