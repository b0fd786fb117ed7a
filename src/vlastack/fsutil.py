"""Filesystem steps that must not lose data when the process dies between them.

``swap_in(new, dst)`` puts a finished directory in place of an existing one. On Linux it is one
``renameat2(RENAME_EXCHANGE)``: at every instant ``dst`` is either the old or the new complete
directory. Where the filesystem or platform lacks it, it falls back to two renames (old ->
``trash``, new -> ``dst``); a crash between them leaves ``dst`` missing, the old copy at ``trash``
and the new one at ``new``, and the caller's recovery must put one of them back.
"""
from __future__ import annotations

import ctypes
import errno
import os
import sys
from pathlib import Path

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_UNSUPPORTED = {errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV}


def _renameat2():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    except OSError:
        return None


_RENAMEAT2 = _renameat2()


def _exchange(a: Path, b: Path) -> bool:
    """Atomically exchange paths ``a`` and ``b`` (both exist); False where the system cannot."""
    if _RENAMEAT2 is None:
        return False
    if _RENAMEAT2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in _UNSUPPORTED:
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def _exchange_supported(directory: Path) -> bool:
    """Whether ``directory``'s filesystem exchanges two entries atomically (creates and removes probes)."""
    a, b = Path(directory) / f".xchg-a-{os.getpid()}", Path(directory) / f".xchg-b-{os.getpid()}"
    a.mkdir(parents=True, exist_ok=True)
    b.mkdir(exist_ok=True)
    try:
        return _exchange(a, b)
    finally:
        a.rmdir()
        b.rmdir()


def swap_in(new: Path, dst: Path, trash: Path) -> Path | None:
    """Put directory ``new`` at ``dst``; returns where the old ``dst`` now is (the caller deletes it).

    ``dst`` absent: one rename, returns None. ``dst`` present: one atomic exchange (the old
    directory ends at ``new``), or, where exchange is unsupported, two renames through ``trash``.
    """
    if not os.path.lexists(dst):
        os.replace(new, dst)
        return None
    if _exchange(new, dst):
        return new
    os.replace(dst, trash)
    os.replace(new, dst)
    return trash
