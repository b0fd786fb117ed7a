"""``vlastack inspect`` and ``vlastack convert``: look inside a store, move data between formats.

Formats (detected from the source path, :func:`detect_format`):

- ``store``: our Zarr trajectory store (a directory holding ``zarr.json``, a ``.zip``, or a URL);
- ``lerobot``: a LeRobotDataset directory (``meta/info.json``; codebase v3.0, v2.1 or v2.0);
- ``robomimic``: a robomimic-processed or raw robosuite hdf5 file.

Destinations: a trajectory store (default; a ``.zarr`` directory, a ``.zip`` or a URL) or, with
``--to lerobot``, a LeRobotDataset v3.0 directory. Any source goes to either destination
(LeRobot v2.1 -> v3.0 upgrades included).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from vlastack.datasets.lerobot import (ConversionError, LeRobotReader, episodes_into_store, is_lerobot_dir,
                                       write_lerobot_v3)
from vlastack.datasets.robomimic import RobomimicMapping, RobomimicReader, is_robomimic_file
from vlastack.types import DatasetSpec

FORMATS = ("store", "lerobot", "robomimic")
DESTINATIONS = ("auto", "store", "lerobot")


# ----------------------------------------------------------------------------- detection and sources

def _is_store(path: str) -> bool:
    if "://" in path and not path.startswith("file://"):
        return True  # a URL: only a store can live there
    p = Path(path[len("file://"):] if path.startswith("file://") else path)
    if p.is_dir():
        return (p / "zarr.json").is_file()
    if p.is_file() and p.suffix.lower() == ".zip":
        import zipfile

        try:
            with zipfile.ZipFile(p) as z:
                return "zarr.json" in z.namelist()
        except zipfile.BadZipFile:
            return False
    return False


def detect_format(src: str | os.PathLike) -> str:
    """``"store"``, ``"lerobot"`` or ``"robomimic"`` for ``src``; raises ConversionError otherwise."""
    s = os.fspath(src)
    if is_lerobot_dir(s):
        return "lerobot"
    if _is_store(s):
        return "store"
    if is_robomimic_file(s):
        return "robomimic"
    if not Path(s).exists():
        raise ConversionError(f"{s}: no such file or directory")
    raise ConversionError(f"{s}: not a recognised dataset; expected one of {FORMATS} "
                          "(a store directory with zarr.json or a .zip, a LeRobot directory with meta/info.json, "
                          "or a robomimic / robosuite .hdf5)")


class Source:
    """An opened dataset to convert: ``spec``, ``num_episodes``, ``num_frames`` and ``episodes()``."""

    def __init__(self, fmt: str, spec: DatasetSpec, num_episodes: int, num_frames: int,
                 episodes: Callable[[], Iterator[tuple[dict, str, dict]]], close: Callable[[], None], label: str):
        self.format, self.spec, self.num_episodes, self.num_frames = fmt, spec, num_episodes, num_frames
        self.episodes, self.close, self.label = episodes, close, label


def open_source(src: str | os.PathLike, fmt: str | None = None, *, mapping: RobomimicMapping | None = None,
                filter_key: str | None = None, task: str | None = None) -> Source:
    """Open ``src`` (format detected unless given) for reading episodes as (frames, task, meta)."""
    s = os.fspath(src)
    fmt = fmt or detect_format(s)
    if fmt == "lerobot":
        r = LeRobotReader(s)

        def eps():
            for frames, t, meta in r:
                meta.setdefault("source", f"lerobot {r.version} {r.root.name} episode {meta['episode_index']}")
                yield frames, task or t, meta
        return Source(fmt, r.spec, r.num_episodes, r.num_frames, eps, r.close, f"LeRobot {r.version}")
    if fmt == "robomimic":
        r = RobomimicReader(s, mapping=mapping, filter_key=filter_key, task=task)

        def eps():
            for frames, t, meta in r:
                meta["source"] = f"{r.layout} {r.path.name} {meta['demo']}"
                yield frames, t, meta
        return Source(fmt, r.spec, r.num_episodes, r.num_frames, eps, r.close, f"{r.layout} hdf5 ({r.env_name})")
    if fmt == "store":
        from vlastack.datasets.store import TrajectoryStore

        st = TrajectoryStore.open(s, mode="r")

        def eps():
            for i, doc in enumerate(st.episodes):
                meta = dict(doc.get("meta") or {})
                meta.update(success=doc.get("success", True), source=doc.get("source", ""),
                            has_action=doc.get("has_action", True))
                yield st.episode(i), task or doc["instruction"], meta
        return Source(fmt, st.spec, st.num_episodes, st.num_frames, eps, st.close, "trajectory store")
    raise ConversionError(f"format {fmt!r} unknown; choose one of {FORMATS}")


def convert(src: str | os.PathLike, dst: str | os.PathLike, *, to: str = "auto", overwrite: bool = False,
            progress: Callable[[int, int], None] | None = None, vcodec: str = "auto", crf: int | None = None,
            mapping: RobomimicMapping | None = None, filter_key: str | None = None, task: str | None = None,
            source: Source | None = None) -> str:
    """Convert ``src`` into ``dst``; ``to`` is ``store``, ``lerobot`` or ``auto`` (= store). Returns the format written."""
    if to not in DESTINATIONS:
        raise ConversionError(f"destination {to!r} unknown; choose one of {DESTINATIONS}")
    to = "store" if to == "auto" else to
    if os.path.abspath(os.fspath(src)) == os.path.abspath(os.fspath(dst)):
        raise ConversionError(f"{dst}: source and destination are the same path")
    s = source or open_source(src, mapping=mapping, filter_key=filter_key, task=task)
    try:
        if to == "lerobot":
            write_lerobot_v3(dst, s.spec, s.episodes(), s.num_episodes, vcodec=vcodec, crf=crf, overwrite=overwrite,
                             progress=progress)
        else:
            episodes_into_store(dst, s.spec, s.episodes(), s.num_episodes, overwrite=overwrite, progress=progress)
    finally:
        if source is None:
            s.close()
    return to


# ----------------------------------------------------------------------------- output helpers

def _console():
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 160)


def _err(msg: str) -> int:
    from rich.console import Console

    Console(stderr=True, width=None if sys.stderr.isatty() else 160).print(f"[bold red]error:[/] {msg}",
                                                                           highlight=False, markup=True)
    return 2


def size_on_disk(path: str) -> int | None:
    """Bytes a local store occupies (a directory's files or a zip's size); None for URLs."""
    if "://" in path and not path.startswith("file://"):
        return None
    p = Path(path[len("file://"):] if path.startswith("file://") else path)
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def human_bytes(n: int | None) -> str:
    """1536 -> '1.5 KiB'."""
    if n is None:
        return "n/a (remote)"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _fmt_values(v: Any, limit: int = 6) -> str:
    a = np.asarray(v, dtype=np.float64).reshape(-1)
    body = ", ".join(f"{x:.4g}" for x in a[:limit])
    return f"[{body}{', ...' if a.size > limit else ''}]" if a.size > 1 else body


# ----------------------------------------------------------------------------- inspect

def inspect_main(argv: list[str] | None = None) -> int:
    """``vlastack inspect STORE``: summary, keys, tasks, statistics (and episodes with ``--episodes``)."""
    from rich.table import Table

    from vlastack.datasets.store import StoreError, TrajectoryStore

    ap = argparse.ArgumentParser(prog="vlastack inspect", description="Summarise a trajectory store.")
    ap.add_argument("store", help="store path (directory, .zip) or URL")
    ap.add_argument("--episodes", type=int, default=0, metavar="N", help="also list the first N episodes")
    ap.add_argument("--no-stats", action="store_true", help="skip the statistics table")
    ap.add_argument("--verify", choices=("none", "fast", "full"), default="fast",
                    help="checks when opening (full decodes every image chunk)")
    args = ap.parse_args(argv)
    try:
        store = TrajectoryStore.open(args.store, mode="r", verify=args.verify)
    except StoreError as e:
        return _err(str(e))
    con = _console()
    with store:
        spec, eps = store.spec, store.episodes
        summary = Table(title=f"trajectory store {args.store}", show_header=False, title_justify="left")
        summary.add_column("field", style="bold")
        summary.add_column("value", overflow="fold")
        attrs = store.attrs
        n_success = sum(bool(e["success"]) for e in eps)
        n_action = sum(bool(e["has_action"]) for e in eps)
        lengths = np.diff(np.concatenate([[0], store.episode_ends])) if eps else np.zeros(0)
        summary.add_row("schema version", str(attrs.get("schema_version")))
        summary.add_row("episodes", str(store.num_episodes))
        summary.add_row("frames", str(store.num_frames))
        if len(lengths):
            summary.add_row("episode length", f"min {lengths.min()}, mean {lengths.mean():.1f}, max {lengths.max()}")
        summary.add_row("fps", f"{store.fps:g}")
        summary.add_row("duration", f"{store.num_frames / store.fps:.1f} s")
        summary.add_row("tasks", str(len(store.tasks)))
        summary.add_row("successful", f"{n_success} / {len(eps)}")
        summary.add_row("with actions", f"{n_action} / {len(eps)}")
        summary.add_row("size on disk", human_bytes(size_on_disk(store.path)))
        a = spec.action_space
        summary.add_row("action space", f"{a.frame} frame, {a.mode}, rotation {a.rotation}, layout "
                        + ", ".join(f"{n}[{s}:{e}]" for n, s, e in a.layout) + f", gripper {a.gripper}")
        feats = store.list_features() if hasattr(store, "list_features") else {}
        if feats:
            summary.add_row("feature cache", "; ".join(f"{enc}: {', '.join(keys)}" for enc, keys in feats.items()))
        con.print(summary)

        keys = Table(title="keys", title_justify="left")
        for col in ("key", "kind", "shape", "dtype", "names / units"):
            keys.add_column(col, overflow="fold")
        for k, f in spec.features.items():
            names = ", ".join(f.names[:6]) + (", ..." if f.names and len(f.names) > 6 else "") if f.names else ""
            keys.add_row(k, f.kind, "(" + ", ".join(map(str, f.shape)) + ")", f.dtype,
                         " / ".join(x for x in (names, f.units or "") if x))
        con.print(keys)

        tasks = Table(title="tasks", title_justify="left")
        for col in ("instruction", "episodes", "frames", "success"):
            tasks.add_column(col, overflow="fold")
        by_task: dict[str, list[dict]] = {}
        for e in eps:
            by_task.setdefault(e["instruction"], []).append(e)
        for t, group in by_task.items():
            ok = sum(bool(e["success"]) for e in group)
            tasks.add_row(t, str(len(group)), str(sum(int(e["length"]) for e in group)),
                          f"{ok}/{len(group)} ({100 * ok / len(group):.0f}%)")
        con.print(tasks)

        if args.episodes > 0:
            table = Table(title=f"episodes (first {min(args.episodes, len(eps))})", title_justify="left")
            for col in ("#", "length", "instruction", "success", "actions", "source"):
                table.add_column(col, overflow="fold")
            for i, e in enumerate(eps[: args.episodes]):
                table.add_row(str(i), str(e["length"]), e["instruction"], str(e["success"]),
                              str(e["has_action"]), e.get("source", ""))
            con.print(table)

        if not args.no_stats and store.num_frames:
            stats, note = store.stats, "saved"
            if stats is None:
                stats, note = store.compute_stats(), "computed now (none saved)"
            table = Table(title=f"statistics ({note}; images per channel in [0, 1])", title_justify="left")
            table.add_column("key", no_wrap=True)
            for col in ("mean", "std", "min", "max", "q01", "q99"):
                table.add_column(col, overflow="fold")
            for k in spec.features:
                if k in stats:
                    table.add_row(k, *(_fmt_values(stats[k][n], 3) for n in ("mean", "std", "min", "max", "q01", "q99")))
            con.print(table)
    return 0


# ----------------------------------------------------------------------------- convert

def convert_main(argv: list[str] | None = None) -> int:
    """``vlastack convert SRC DST``: any of store / LeRobot / robomimic into a store or LeRobot v3.0."""
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    from vlastack.datasets.store import StoreError

    ap = argparse.ArgumentParser(
        prog="vlastack convert",
        description="Convert a dataset. Sources (detected): trajectory store, LeRobotDataset v3.0/v2.1/v2.0 "
                    "directory, robomimic / robosuite hdf5. Destination: a store (.zarr directory, .zip or URL; "
                    "default) or, with --to lerobot, a LeRobotDataset v3.0 directory.")
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--to", choices=DESTINATIONS, default="auto", help="destination format (auto = store)")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing destination")
    ap.add_argument("--vcodec", default="auto", help="LeRobot output: auto (AV1, else H.264), libsvtav1, libx264, ...")
    ap.add_argument("--crf", type=int, default=None, help="LeRobot output: video quality (lower is better)")
    ap.add_argument("--task", default=None, help="instruction for every episode (overrides the source's)")
    ap.add_argument("--filter-key", default=None, help="robomimic: only demos listed under mask/<KEY>")
    ap.add_argument("--mapping", default=None,
                    help="robomimic key mapping, e.g. 'state=robot0_eef_pos+robot0_gripper_qpos,"
                         "image:agentview_image=front,extra=object'")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    try:
        mapping = RobomimicMapping.parse(args.mapping) if args.mapping else None
        src = open_source(args.src, mapping=mapping, filter_key=args.filter_key, task=args.task)
    except (ConversionError, StoreError, ValueError) as e:
        return _err(str(e))
    to = "store" if args.to == "auto" else args.to
    t0 = time.perf_counter()
    try:
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("episodes"), TimeElapsedColumn(), TimeRemainingColumn(),
                      disable=args.quiet, transient=False) as bar:
            job = bar.add_task(f"{src.label} -> {to}", total=src.num_episodes)
            convert(args.src, args.dst, to=to, overwrite=args.overwrite, vcodec=args.vcodec, crf=args.crf,
                    progress=lambda done, total: bar.update(job, completed=done), source=src)
    except (ConversionError, StoreError, ValueError) as e:
        return _err(str(e))
    finally:
        src.close()
    dt = time.perf_counter() - t0
    size = size_on_disk(os.fspath(args.dst))
    _console().print(f"wrote {src.num_episodes} episodes, {src.num_frames} frames ({src.label} -> {to}) to "
                     f"{args.dst} in {dt:.1f} s, {human_bytes(size)}", highlight=False)
    return 0
