"""Run checkpoints: atomic step directories, a ``last`` and a ``best`` pointer, pruning, resume.

    run_dir/checkpoints/
        step_0001000/            a loadable policy (EMA weights): config.json + model.safetensors
            training_state.pt    model, optimizer, schedule, EMA, RNG states, step, data position
        step_0002000/
        last -> step_0002000     symlink (or a one-line text file where symlinks are unavailable)
        best -> step_0001000     lowest validation loss so far

A directory is written under ``.tmp-step_XXXXXXX-<pid>/`` and renamed into place only when
complete; the pointers are replaced with one ``os.replace``. A process killed at any moment
leaves ``last`` on the previous complete checkpoint; leftover temporary directories are removed
at the next start. ``VLASTACK_TRAIN_FAULT=kill_during_save:<n>`` SIGKILLs the process in the
middle of its n-th save (tests).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
from pathlib import Path
from typing import Any, Callable

import torch

STATE_FILE = "training_state.pt"
STEP_RE = re.compile(r"^step_(\d{7,})$")
FAULT_ENV = "VLASTACK_TRAIN_FAULT"
_saves = 0


def step_dir_name(step: int) -> str:
    """``step_0001000`` for step 1000."""
    return f"step_{int(step):07d}"


def _fault(where: str) -> None:
    """The fault-injection hook: kill this process hard at save number n (``kill_during_save:<n>``)."""
    spec = os.environ.get(FAULT_ENV, "")
    if not spec.startswith(where + ":"):
        return
    if _saves == int(spec.split(":", 1)[1]):
        os.kill(os.getpid(), signal.SIGKILL)


def set_pointer(ckpt_root: Path, name: str, target: str) -> None:
    """Point ``ckpt_root/name`` at ``target`` (a sibling directory name) atomically."""
    tmp = ckpt_root / f".{name}.tmp{os.getpid()}"
    if os.path.lexists(tmp):
        os.unlink(tmp)
    try:
        os.symlink(target, tmp)
    except (OSError, NotImplementedError):
        tmp.write_text(target + "\n")
    os.replace(tmp, ckpt_root / name)


def read_pointer(ckpt_root: Path, name: str) -> Path | None:
    """The directory ``ckpt_root/name`` points to, or None when absent or dangling."""
    p = ckpt_root / name
    if os.path.islink(p):
        target = os.readlink(p)
    elif p.is_file():
        target = p.read_text().strip()
    else:
        return None
    d = Path(target) if os.path.isabs(target) else ckpt_root / target
    return d if (d / STATE_FILE).is_file() or (d / "config.json").is_file() else None


def clean_temporaries(ckpt_root: Path) -> list[str]:
    """Remove what an interrupted save left behind; returns the removed names."""
    removed = []
    if not ckpt_root.is_dir():
        return removed
    for p in ckpt_root.iterdir():
        if p.name.startswith(".tmp-") or (p.name.startswith(".") and ".tmp" in p.name) or p.name.startswith(".trash-"):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)
            removed.append(p.name)
    return removed


def step_dirs(ckpt_root: Path) -> list[tuple[int, Path]]:
    """Complete step directories, oldest first."""
    out = []
    if ckpt_root.is_dir():
        for p in ckpt_root.iterdir():
            m = STEP_RE.match(p.name)
            if m and p.is_dir() and not p.is_symlink() and (p / STATE_FILE).is_file():
                out.append((int(m.group(1)), p))
    return sorted(out)


def save_checkpoint(ckpt_root: Path, step: int, write_policy: Callable[[Path], None], state: dict[str, Any],
                    keep_last: int, is_best: bool) -> Path:
    """Write step ``step`` atomically, move ``last`` (and ``best``), prune old steps; returns the directory.

    ``write_policy(dir)`` writes the loadable policy (config.json + model.safetensors) into ``dir``.
    """
    global _saves
    _saves += 1
    ckpt_root.mkdir(parents=True, exist_ok=True)
    name = step_dir_name(step)
    tmp = ckpt_root / f".tmp-{name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    write_policy(tmp)
    _fault("kill_during_save")
    torch.save(state, tmp / (STATE_FILE + ".part"))
    os.replace(tmp / (STATE_FILE + ".part"), tmp / STATE_FILE)
    final = ckpt_root / name
    if final.exists():  # the same step saved again (e.g. after a resume): swap it out
        trash = ckpt_root / f".trash-{name}-{os.getpid()}"
        os.replace(final, trash)
        os.replace(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, final)
    set_pointer(ckpt_root, "last", name)
    if is_best:
        set_pointer(ckpt_root, "best", name)
    prune(ckpt_root, keep_last)
    return final


def prune(ckpt_root: Path, keep_last: int) -> list[Path]:
    """Delete step directories beyond the newest ``keep_last``, never the ones ``last``/``best`` point to."""
    keep = {p.resolve() for p in (read_pointer(ckpt_root, "last"), read_pointer(ckpt_root, "best")) if p}
    dirs = step_dirs(ckpt_root)
    removed = []
    for _, p in dirs[:max(len(dirs) - keep_last, 0)]:
        if p.resolve() not in keep:
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def load_state(ckpt_dir: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The training state of a checkpoint directory."""
    f = Path(ckpt_dir) / STATE_FILE
    if not f.is_file():
        raise FileNotFoundError(f"{ckpt_dir} has no {STATE_FILE}; not a resumable training checkpoint")
    return torch.load(f, map_location=map_location, weights_only=False)


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch (CPU and CUDA) generator states."""
    import random

    import numpy as np

    out = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(d: dict[str, Any]) -> None:
    """Restore :func:`rng_state`."""
    import random

    import numpy as np

    random.setstate(d["python"])
    np.random.set_state(d["numpy"])
    torch.set_rng_state(d["torch"])
    if "cuda" in d and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(d["cuda"])
