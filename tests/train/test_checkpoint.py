"""Checkpoint files: safe loading of the training state, and a kill at every point of the save sequence."""
from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from vlastack.train import checkpoint as ck


class _Killed(BaseException):
    """The injected kill: a BaseException, so no ``except Exception`` in the code under test catches it."""


def _write_policy(tag: str, tick):
    def write(d: Path) -> None:
        tick()
        (d / "config.json").write_text(f'{{"tag": "{tag}"}}')
        tick()
        (d / "model.safetensors").write_bytes(tag.encode() * 64)
    return write


def _state(step: int, tag: str) -> dict:
    return {"step": step, "tag": tag, "model": {"w": torch.full((3,), float(step))}, "rng": ck.rng_state()}


class _KillAt:
    """Counts filesystem operations of the save sequence and raises :class:`_Killed` at the k-th."""

    PATCHED = [(os, "replace"), (os, "rename"), (os, "symlink"), (os, "unlink"), (os, "rmdir"), (os, "mkdir"),
               (torch, "save"), (ck.fsutil, "_exchange")]

    def __init__(self, monkeypatch, k: int | None):
        self.k, self.n = k, 0
        for mod, name in self.PATCHED:
            monkeypatch.setattr(mod, name, self._wrap(getattr(mod, name)))

    def tick(self) -> None:
        self.n += 1
        if self.n == self.k:
            raise _Killed(f"kill at operation {self.n}")

    def _wrap(self, real):
        def f(*args, **kwargs):
            self.tick()
            return real(*args, **kwargs)
        return f


def _save(root: Path, step: int, tag: str, tick, keep_last: int = 3, is_best: bool = False) -> Path:
    return ck.save_checkpoint(root, step, _write_policy(tag, tick), _state(step, tag), keep_last, is_best)


def _next_start(root: Path) -> tuple[int, str] | None:
    """What the next training process resumes from: (step, tag) of a complete checkpoint, or None."""
    ck.clean_temporaries(root)
    d = ck.resume_dir(root, log=lambda msg: None)
    if d is None:
        return None
    st = ck.load_state(d)
    assert (d / "config.json").read_text() == f'{{"tag": "{st["tag"]}"}}', f"{d}: policy and state disagree"
    assert (d / "model.safetensors").read_bytes() == st["tag"].encode() * 64
    return int(st["step"]), st["tag"]


SCENARIOS = {
    # name: (saves before the killed one as (step, tag), the killed save (step, tag), keep_last);
    # after a kill, resume must find the last complete save before it, or the killed save itself
    "first save": ([], (2, "new"), 3),
    "next step": ([(2, "old")], (4, "new"), 3),
    "same step again": ([(2, "old")], (2, "new"), 3),
    "same step, older steps pruned": ([(2, "a"), (4, "old")], (4, "new"), 1),
    "next step, older steps pruned": ([(2, "a"), (4, "old")], (6, "new"), 1),
}


@pytest.mark.parametrize("exchange", [True, False], ids=["rename-exchange", "two-renames"])
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_kill_at_every_point_of_the_save_sequence_keeps_a_complete_checkpoint(tmp_path, monkeypatch, capsys,
                                                                            scenario, exchange):
    before, (step, tag), keep = SCENARIOS[scenario]
    if not exchange:  # a filesystem without RENAME_EXCHANGE: the fallback's two renames must be safe too
        monkeypatch.setattr(ck.fsutil, "_exchange", lambda a, b: False)
    elif not ck.fsutil._exchange_supported(tmp_path):
        pytest.skip("this filesystem has no RENAME_EXCHANGE")
    # count the operations of an uninterrupted save
    probe = tmp_path / "probe"
    for s, t in before:
        _save(probe, s, t, lambda: None, keep)
    with monkeypatch.context() as m:
        counter = _KillAt(m, None)
        _save(probe, step, tag, counter.tick, keep)
    total = counter.n
    assert total >= 6
    old = (before[-1][0], before[-1][1]) if before else None
    outcomes = {}
    for k in range(1, total + 1):
        root = tmp_path / f"k{k}" / "checkpoints"
        for s, t in before:
            _save(root, s, t, lambda: None, keep)
        with monkeypatch.context() as m:
            killer = _KillAt(m, k)
            with pytest.raises(_Killed):
                _save(root, step, tag, killer.tick, keep)
        got = _next_start(root)
        outcomes[k] = got
        assert got in {old, (step, tag)}, f"kill at operation {k}/{total}: resume found {got}"
        # the run goes on: the next save succeeds and is what the following start resumes from
        _save(root, step, "again", lambda: None, keep)
        assert _next_start(root) == (step, "again"), f"kill at operation {k}/{total}"
        assert not [p.name for p in root.iterdir() if p.name.startswith(".")]
    print(f"{scenario} ({'exchange' if exchange else 'two renames'}): killed at each of {total} operations, "
          f"resume found {sorted(set(map(str, outcomes.values())))}")


def test_missing_last_falls_back_to_the_newest_complete_step(tmp_path, capsys):
    root = tmp_path / "checkpoints"
    for s in (2, 4, 6):
        _save(root, s, f"s{s}", lambda: None)
    (root / "step_0000006" / ck.STATE_FILE).unlink()  # an incomplete newest step is skipped
    os.unlink(root / "last")
    msgs = []
    d = ck.resume_dir(root, log=msgs.append)
    assert d == root / "step_0000004"
    assert msgs and "warning" in msgs[0] and "last" in msgs[0] and "step_0000004" in msgs[0]
    ck.set_pointer(root, "last", "step_0000099")  # dangling
    assert ck.resume_dir(root, log=msgs.append) == root / "step_0000004" and len(msgs) == 2
    shutil.rmtree(root / "step_0000004")
    shutil.rmtree(root / "step_0000002")
    assert ck.resume_dir(root, log=msgs.append) is None


def test_rng_state_round_trips_through_a_weights_only_load(tmp_path):
    random.seed(3)
    np.random.seed(3)
    torch.manual_seed(3)
    torch.save({"rng": ck.rng_state()}, tmp_path / "s.pt")
    want = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    ck.set_rng_state(torch.load(tmp_path / "s.pt", weights_only=True)["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == want


class _Evil:
    """Unpickling this runs ``Path.touch`` on the marker: what a crafted training_state.pt could do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_crafted_training_state_is_refused_without_running_its_code(tmp_path):
    d = tmp_path / "step_0000002"
    d.mkdir()
    marker = tmp_path / "code-ran"
    torch.save({"step": 2, "model": {}, "payload": _Evil(marker)}, d / ck.STATE_FILE)
    with pytest.raises(ValueError, match=rf"{ck.STATE_FILE}: refused"):
        ck.load_state(d)
    assert not marker.exists(), "loading the training state ran code from the file"
