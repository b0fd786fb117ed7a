"""``vlastack view STORE episode=N``: one stored episode as a Rerun recording or an mp4 with curves.

Two outputs, the same content (every camera, ``observation.state`` and ``action`` per dimension
over time, the instruction, and success):

- a Rerun recording (``.rrd``; needs the ``viz`` extra, ``pip install "vlastack[viz]"``), opened
  with ``rerun FILE.rrd``. Entities: ``cameras/<camera>`` (images), ``state/<name>`` and
  ``action/<name>`` (scalar series, one per dimension, named from the store's feature names),
  ``success`` (``next.success`` as 0/1 when the store has it), ``instruction`` and ``episode``
  (static text). Timelines: ``frame`` (the frame index) and ``time`` (seconds, from the fps).
- an mp4 (PyAV) in which each frame shows the cameras side by side, captioned with the
  instruction, the step and the outcome, beside the state and action curves with a cursor at
  the current frame.

``format=auto`` (the default) writes the recording when rerun-sdk is importable, else the mp4.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vlastack.types import ACTION, STATE, SUCCESS, image_key

FORMATS = ("auto", "rrd", "mp4")
#: curve panel width in pixels (the height follows the captioned camera frames)
PANEL_WIDTH = 480
_CURSOR_RGB = (220, 40, 40)


class ViewError(ValueError):
    """Bad input to ``vlastack view`` (unknown episode, camera, format, option)."""


@dataclass
class EpisodeView:
    """One episode, ready to show: images per camera (T, H, W, 3), curves (T, D) and their names."""

    store: str
    episode: int
    fps: float
    instruction: str
    success: bool
    images: dict[str, np.ndarray]
    state: np.ndarray | None = None
    state_names: tuple[str, ...] = ()
    action: np.ndarray | None = None
    action_names: tuple[str, ...] = ()
    step_success: np.ndarray | None = None  # (T,) bool, the store's next.success
    meta: dict = field(default_factory=dict)

    @property
    def length(self) -> int:
        """Frames in the episode."""
        for a in (*self.images.values(), self.state, self.action):
            if a is not None:
                return int(len(a))
        return 0


def _names(spec, key: str, dim: int) -> tuple[str, ...]:
    names = tuple(spec.features[key].names or ())
    return names if len(names) == dim else tuple(f"{key.rsplit('.', 1)[-1]}_{i}" for i in range(dim))


def load_episode(store_path: str | os.PathLike, episode: int, cameras: Sequence[str] | None = None) -> EpisodeView:
    """Read episode ``episode`` of the store at ``store_path`` (``cameras`` None: every camera)."""
    from vlastack.datasets.store import StoreError, TrajectoryStore

    try:
        store = TrajectoryStore.open(store_path, mode="r", verify="none")
    except StoreError as e:
        raise ViewError(str(e)) from e
    with store:
        spec, n = store.spec, store.num_episodes
        if n == 0:
            raise ViewError(f"{store_path}: the store has no episodes")
        if not isinstance(episode, (int, np.integer)) or not 0 <= int(episode) < n:
            raise ViewError(f"episode: {episode!r} out of range; the store has episodes 0..{n - 1}")
        episode = int(episode)
        valid = list(spec.cameras)
        cams = valid if cameras is None else list(cameras)
        bad = [c for c in cams if c not in valid]
        if bad:
            raise ViewError(f"cameras: unknown {bad}; this store's cameras: {valid}")
        keys = [image_key(c) for c in cams] + [k for k in (STATE, ACTION, SUCCESS) if k in spec.features]
        frames = store.episode(episode, keys)
        meta = store.episodes[episode]
        ep = EpisodeView(store=str(store_path), episode=episode, fps=store.fps,
                         instruction=str(meta.get("instruction", "")), success=bool(meta.get("success", False)),
                         images={c: np.asarray(frames[image_key(c)]) for c in cams},
                         meta={k: v for k, v in meta.items() if k != "instruction"})
        if STATE in frames:
            ep.state = np.asarray(frames[STATE], np.float64).reshape(len(frames[STATE]), -1)  # (T, D_s)
            ep.state_names = _names(spec, STATE, ep.state.shape[1])
        if ACTION in frames:  # absent for video-only episodes
            ep.action = np.asarray(frames[ACTION], np.float64).reshape(len(frames[ACTION]), -1)  # (T, D_a)
            ep.action_names = _names(spec, ACTION, ep.action.shape[1])
        if SUCCESS in frames:
            ep.step_success = np.asarray(frames[SUCCESS]).reshape(-1).astype(bool)  # (T,)
    if ep.length == 0:
        raise ViewError(f"{store_path}: episode {episode} has no frames")
    return ep


def _successes(ep: EpisodeView) -> list[bool]:
    """Per-frame success: the store's ``next.success``, else the episode's outcome on its last frame."""
    if ep.step_success is not None:
        return [bool(s) for s in ep.step_success]
    return [False] * (ep.length - 1) + [ep.success]


# ------------------------------------------------------------------------------------ mp4


def _curves_panel(ep: EpisodeView, height: int, width: int = PANEL_WIDTH):
    """The state and action curves drawn once: (uint8 (height, width, 3), x pixel per frame (T,),
    [(y0, y1)] pixel rows of each plot's axes)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    groups = [(name, a, names) for name, a, names in (("observation.state", ep.state, ep.state_names),
                                                       ("action", ep.action, ep.action_names)) if a is not None]
    dpi = 100
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi, facecolor=(20 / 255,) * 3)
    canvas = FigureCanvasAgg(fig)  # no pyplot, no GUI backend
    t = np.arange(ep.length)
    axes = fig.subplots(max(1, len(groups)), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (title, a, names) in zip(axes, groups):
        for j in range(a.shape[1]):
            ax.plot(t, a[:, j], lw=1.0, label=names[j])
        ax.set_title(f"{title} ({a.shape[1]})", fontsize=8, color="white", loc="left")
        if a.shape[1] <= 10:
            ax.legend(fontsize=5, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, labelcolor="white")
    if not groups:
        axes[0].text(0.5, 0.5, "no state or action in this store", ha="center", va="center", color="white")
    for ax in axes:
        ax.set_facecolor((0.12, 0.12, 0.12))
        ax.tick_params(labelsize=6, colors="white")
        ax.set_xlim(0, max(1, ep.length - 1))
    axes[-1].set_xlabel("frame", fontsize=7, color="white")
    fig.subplots_adjust(left=0.1, right=0.78, top=0.93, bottom=0.1, hspace=0.35)
    canvas.draw()
    img = np.asarray(canvas.buffer_rgba())[..., :3].copy()  # (height, width, 3)
    h = img.shape[0]
    xs = np.rint(axes[0].transData.transform(np.stack([t, np.zeros_like(t)], 1).astype(float))[:, 0]).astype(int)
    rows = []
    for ax in axes:
        box = ax.get_window_extent()  # display coordinates: origin at the bottom left
        rows.append((int(h - box.y1), int(h - box.y0)))
    return img, np.clip(xs, 0, img.shape[1] - 1), rows


class EpisodeFrames(Sequence):
    """The mp4's frames, made on demand (an episode's worth of big frames would not fit in memory):
    captioned cameras side by side, then the curves with a cursor at the frame.

    ``frames[i]`` is uint8 (H, W, 3) with even H and W; ``len(frames)`` the episode length."""

    def __init__(self, ep: EpisodeView):
        """Draw the curves once for ``ep``."""
        from vlastack.rollout.video import caption_frames

        self._caption = caption_frames
        self.ep = ep
        if ep.images:
            self._cams = [ep.images[c] for c in ep.images]  # K x (T, H, W, 3)
        else:
            self._cams = [np.zeros((ep.length, 128, 128, 3), np.uint8)]
        self._done = np.maximum.accumulate(np.asarray(_successes(ep), bool))  # (T,) success so far
        h = self._captioned(0).shape[0]
        self._panel, self._xs, self._rows = _curves_panel(ep, h)

    def _captioned(self, i: int) -> np.ndarray:
        cams = np.concatenate([c[i] for c in self._cams], axis=1)  # (H, W * K, 3)
        return self._caption([cams], self.ep.instruction, [bool(self._done[i])])[0]

    def __len__(self) -> int:
        return self.ep.length

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if not -len(self) <= i < len(self):
            raise IndexError(f"frame {i} out of range for {len(self)} frames")
        i %= len(self)
        p = self._panel.copy()
        for y0, y1 in self._rows:
            p[y0:y1, max(0, self._xs[i] - 1):self._xs[i] + 1] = _CURSOR_RGB
        frame = np.concatenate([self._captioned(i), p], axis=1)  # (H', W' + PANEL_WIDTH, 3)
        return frame[: frame.shape[0] // 2 * 2, : frame.shape[1] // 2 * 2]


def episode_frames(ep: EpisodeView) -> EpisodeFrames:
    """The mp4's frames of ``ep`` (see :class:`EpisodeFrames`)."""
    return EpisodeFrames(ep)


def write_episode_mp4(ep: EpisodeView, path: str | os.PathLike) -> Path:
    """Write the episode as an mp4 (cameras beside the curves; see :func:`episode_frames`)."""
    from vlastack.rollout.video import write_mp4

    return write_mp4(path, episode_frames(ep), ep.fps)


# ------------------------------------------------------------------------------------ rerun


def _entity_part(name: str) -> str:
    """A name usable as one entity-path part."""
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", str(name)) or "_"


def write_episode_rrd(ep: EpisodeView, path: str | os.PathLike) -> Path:
    """Write the episode as a Rerun recording (``.rrd``; see the module docstring for its entities)."""
    try:
        import rerun as rr
        import rerun.blueprint as rrb
    except ImportError as e:
        raise ViewError("format=rrd needs rerun-sdk: pip install 'vlastack[viz]' (or use format=mp4)") from e
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    rec = rr.RecordingStream("vlastack_view", recording_id=f"{Path(ep.store).name}-episode-{ep.episode}")
    views = [rrb.Spatial2DView(origin=f"cameras/{_entity_part(c)}", name=c) for c in ep.images]
    curves = [rrb.TimeSeriesView(origin=g, name=g) for g, a in (("state", ep.state), ("action", ep.action))
              if a is not None]
    blueprint = rrb.Blueprint(rrb.Horizontal(
        rrb.Vertical(*views) if views else rrb.TextDocumentView(origin="episode"),
        rrb.Vertical(*curves, rrb.TextDocumentView(origin="instruction", name="instruction"))))
    rec.save(str(tmp), default_blueprint=blueprint)
    summary = {"store": ep.store, "episode": ep.episode, "length": ep.length, "fps": ep.fps, "success": ep.success,
               "instruction": ep.instruction, **{k: v for k, v in ep.meta.items() if isinstance(v, (str, int, float, bool))}}
    rec.log("instruction", rr.TextDocument(ep.instruction or "(no instruction)"), static=True)
    rec.log("episode", rr.TextDocument(json.dumps(summary, indent=2), media_type="text/markdown"), static=True)
    frames = np.arange(ep.length)
    index = [rr.TimeColumn("frame", sequence=frames), rr.TimeColumn("time", duration=frames / ep.fps)]
    for group, a, names in (("state", ep.state, ep.state_names), ("action", ep.action, ep.action_names)):
        if a is None:
            continue
        for j, name in enumerate(names):
            entity = f"{group}/{_entity_part(name)}"
            rec.log(entity, rr.SeriesLines(names=name), static=True)
            rec.send_columns(entity, indexes=index, columns=rr.Scalars.columns(scalars=a[:, j]))
    rec.send_columns("success", indexes=index,
                     columns=rr.Scalars.columns(scalars=np.asarray(_successes(ep), np.float64)))
    for i in range(ep.length):
        rec.set_time("frame", sequence=i)
        rec.set_time("time", duration=i / ep.fps)
        for cam, imgs in ep.images.items():
            rec.log(f"cameras/{_entity_part(cam)}", rr.Image(imgs[i]))
    rec.flush()
    rec.disconnect()
    os.replace(tmp, path)
    return path


# ------------------------------------------------------------------------------------ entry points


def _rerun_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("rerun") is not None


def view(store: str | os.PathLike, episode: int = 0, out: str | os.PathLike | None = None, format: str = "auto",
         cameras: Sequence[str] | None = None) -> Path:
    """Write episode ``episode`` of ``store`` as ``format`` ("rrd", "mp4" or "auto") to ``out``
    (default: ``<store name>_episode<N>.<rrd|mp4>`` in the current directory); returns the path."""
    if format not in FORMATS:
        raise ViewError(f"format: unknown {format!r}; valid choices: {list(FORMATS)}")
    if out is not None and format == "auto" and Path(out).suffix in (".rrd", ".mp4"):
        format = Path(out).suffix[1:]
    if format == "auto":
        format = "rrd" if _rerun_available() else "mp4"
    if out is not None and Path(out).suffix not in ("", f".{format}"):
        raise ViewError(f"out: {str(out)!r} does not end in .{format} (format={format})")
    ep = load_episode(store, episode, cameras)
    if out is None:
        out = Path(f"{Path(str(store).rstrip('/')).stem}_episode{ep.episode}.{format}")
    out = Path(out).with_suffix(f".{format}")
    return write_episode_rrd(ep, out) if format == "rrd" else write_episode_mp4(ep, out)


_USAGE = """usage: vlastack view STORE [episode=N] [out=PATH] [format=auto|rrd|mp4] [cameras=left,wrist]

Writes one episode of a trajectory store (cameras, state and action curves, instruction, success)
as a Rerun recording (.rrd, open it with `rerun FILE.rrd`; needs `pip install "vlastack[viz]"`) or,
without Rerun or with format=mp4, as an mp4 with the curves drawn beside the frames.

  episode   episode index (default 0)
  out       output file (default: <store name>_episode<N>.<rrd|mp4> here)
  format    auto (rrd when rerun-sdk is installed, else mp4), rrd or mp4
  cameras   comma-separated subset of the store's cameras (default: all)
"""


_OPTIONS = ("episode", "out", "format", "cameras")


def _parse(argv: list[str]) -> dict:
    """``STORE key=value ...`` -> keyword arguments of :func:`view`."""
    opts: dict = {}
    store = None
    for a in argv:
        if "=" not in a:
            if store is not None:
                raise ViewError(f"unexpected argument {a!r}; options are key=value ({', '.join(_OPTIONS)})")
            store = a
            continue
        k, v = a.split("=", 1)
        k = k.lstrip("-")
        if k not in _OPTIONS:
            raise ViewError(f"unknown option {k!r}; valid options: {', '.join(_OPTIONS)}")
        opts[k] = v
    if store is None:
        raise ViewError("missing STORE (the trajectory store to view)")
    if "episode" in opts:
        try:
            opts["episode"] = int(opts["episode"])
        except ValueError:
            raise ViewError(f"episode: expected an integer, got {opts['episode']!r}") from None
    if "cameras" in opts:  # "left,wrist" or Hydra-style "[left,wrist]"
        opts["cameras"] = [c.strip() for c in opts["cameras"].strip("[]").split(",") if c.strip()] or None
    return {"store": store, **opts}


def main(argv: list[str] | None = None) -> int:
    """``vlastack view`` entry point; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or any(a in ("-h", "--help", "help") for a in argv):
        print(_USAGE)
        return 0 if argv else 2
    try:
        opts = _parse(argv)
        path = view(**opts)
    except ViewError as e:
        print(f"vlastack view: {e}", file=sys.stderr)
        return 2
    hint = f" (open it with: rerun {path})" if path.suffix == ".rrd" else ""
    print(f"wrote {path}{hint}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
