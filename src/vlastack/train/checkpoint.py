"""Run checkpoints: atomic step directories, a ``last`` and a ``best`` pointer, pruning, resume.

    run_dir/checkpoints/
        step_0001000/            a loadable policy (EMA weights): config.json + model.safetensors
            training_state.pt    model, optimizer, schedule, EMA, RNG states, step, data position
        step_0002000/
        last -> step_0002000     symlink (or a one-line text file where symlinks are unavailable)
        best -> step_0001000     lowest validation loss so far

A directory is written under ``.tmp-step_XXXXXXX-<pid>/`` and renamed into place only when
complete (``training_state.pt`` is its last file); a re-save of an existing step is one atomic
exchange of the two directories (:func:`vlastack.fsutil.swap_in`). The pointers are replaced with
one ``os.replace``; pruning renames a directory out of ``step_*`` before deleting it. A process
killed at any moment leaves a complete checkpoint for resume: at the next start leftovers are
removed, except that a complete copy whose ``step_*`` is missing (the two-rename fallback killed
halfway) is moved back, and when ``last`` is missing or dangling :func:`resume_dir` falls back to
the newest complete ``step_*`` with a warning. ``training_state.pt`` holds only tensors, numbers,
strings and containers and is read with ``torch.load(weights_only=True)``: a crafted file cannot
run code. ``VLASTACK_TRAIN_FAULT=kill_during_save:<n>`` SIGKILLs the process in the middle of its
n-th save (tests).
"""

from __future__ import annotations

import os
import pickle
import re
import shutil
import signal
from pathlib import Path
from typing import Any, Callable

import torch

from vlastack import fsutil

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


def is_complete(d: Path) -> bool:
    """Whether directory ``d`` holds a whole checkpoint (its training state is written last)."""
    return (d / STATE_FILE).is_file() and (d / "config.json").is_file()


def _is_temporary(name: str) -> bool:
    return name.startswith((".tmp-", ".trash-")) or (name.startswith(".") and ".tmp" in name)


def clean_temporaries(ckpt_root: Path) -> list[str]:
    """Remove what an interrupted save left behind; returns the removed names.

    A complete temporary copy of a step whose ``step_*`` directory is missing (a save killed
    between the two renames of the fallback path) is moved back into place instead, the newest
    save first, so the only complete copy of a step is never deleted.
    """
    removed = []
    if not ckpt_root.is_dir():
        return removed
    leftovers = sorted((p for p in ckpt_root.iterdir() if _is_temporary(p.name)),
                       key=lambda p: (not p.name.startswith(".tmp-"), p.name))  # new copies (.tmp-) first
    for p in leftovers:
        m = re.match(r"^\.(?:tmp|trash)-(step_\d{7,})-\d+$", p.name)
        if m and p.is_dir() and not p.is_symlink() and is_complete(p) and not (ckpt_root / m.group(1)).exists():
            os.replace(p, ckpt_root / m.group(1))
            continue
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)
        removed.append(p.name)
    return removed


def step_dirs(ckpt_root: Path) -> list[tuple[int, Path]]:
    """Complete step directories, oldest first."""
    out = []
    if ckpt_root.is_dir():
        for p in ckpt_root.iterdir():
            m = STEP_RE.match(p.name)
            if m and p.is_dir() and not p.is_symlink() and is_complete(p):
                out.append((int(m.group(1)), p))
    return sorted(out)


def resume_dir(ckpt_root: Path, log: Callable[[str], None] = print) -> Path | None:
    """The checkpoint to resume from: ``last``, or when that is missing, dangling or incomplete, the
    newest complete ``step_*`` (saying so through ``log``); None when there is none."""
    last = read_pointer(ckpt_root, "last")
    if last is not None and is_complete(last):
        return last
    dirs = step_dirs(ckpt_root)
    if not dirs:
        return None
    newest = dirs[-1][1]
    log(f"train: warning: {ckpt_root / 'last'} is missing or does not point to a complete checkpoint; "
        f"resuming from the newest complete one, {newest.name}")
    return newest


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
    os.replace(tmp / (STATE_FILE + ".part"), tmp / STATE_FILE)  # the directory is complete from here on
    final = ckpt_root / name
    # a re-save of the same step (e.g. after a resume) is one atomic exchange where the system allows
    old = fsutil.swap_in(tmp, final, trash=ckpt_root / f".trash-{name}-{os.getpid()}")
    set_pointer(ckpt_root, "last", name)
    if is_best:
        set_pointer(ckpt_root, "best", name)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    prune(ckpt_root, keep_last)
    return final


def prune(ckpt_root: Path, keep_last: int) -> list[Path]:
    """Delete step directories beyond the newest ``keep_last``, never the ones ``last``/``best`` point to.

    Each is renamed out of ``step_*`` first, so a kill mid-delete never leaves a half ``step_*``."""
    keep = {p.resolve() for p in (read_pointer(ckpt_root, "last"), read_pointer(ckpt_root, "best")) if p}
    dirs = step_dirs(ckpt_root)
    removed = []
    for _, p in dirs[:max(len(dirs) - keep_last, 0)]:
        if p.resolve() not in keep:
            trash = ckpt_root / f".trash-pruned-{p.name}-{os.getpid()}"
            os.replace(p, trash)
            shutil.rmtree(trash, ignore_errors=True)
            removed.append(p)
    return removed


def load_state(ckpt_dir: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The training state of a checkpoint directory, read with ``weights_only=True`` (no code runs)."""
    f = Path(ckpt_dir) / STATE_FILE
    if not f.is_file():
        raise FileNotFoundError(f"{ckpt_dir} has no {STATE_FILE}; not a resumable training checkpoint")
    try:
        return torch.load(f, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise ValueError(f"{f}: refused to load: it holds more than tensors, numbers, strings and containers, so "
                         f"reading it could run code ({first.strip()}). If an older vlastack wrote it, start a "
                         "new run_dir or resume=never; otherwise do not trust it") from None


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch (CPU and CUDA) generator states, as tensors and plain numbers/tuples."""
    import random

    import numpy as np

    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    out = {"python": random.getstate(),
           "numpy": (str(kind), torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)),
           "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(d: dict[str, Any]) -> None:
    """Restore :func:`rng_state`."""
    import random

    import numpy as np

    random.setstate(d["python"])
    kind, keys, pos, has_gauss, gauss = d["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.int64).astype(np.uint32), int(pos), int(has_gauss),
                         float(gauss)))
    torch.set_rng_state(d["torch"])
    if "cuda" in d and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(d["cuda"])
