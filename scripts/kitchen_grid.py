"""Render docs/kitchen_tasks.png: one frame of every kitchen task, labelled, in a grid.

    .venv/bin/python scripts/kitchen_grid.py                       # docs/kitchen_tasks.png
    .venv/bin/python scripts/kitchen_grid.py --size 256 --camera left --seed 0 --out grid.png

Each tile is the ``--camera`` view of the task's scripted expert part-way through a seeded
episode (at ``--at`` of the episode's length, so the arm is at work on the fixture or the
object), with the task name and the episode's instruction written under it. Task i (in suite
order) uses seed ``--seed + i``, so the tiles show different objects, colours and layouts. The PNG is
palette-quantised (256 colours) to stay small; the script says the file's size and fails if it
is over ``--max-mb``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")


def expert_frame(task: str, camera: str, size: int, seed: int, at: float):
    """(frame, instruction, success): the ``camera`` image (uint8 (size, size, 3)) of ``task``'s
    expert at fraction ``at`` of a seeded episode's length."""
    from vlastack.envs.kitchen import make_expert, make_kitchen_env
    from vlastack.types import image_key

    env = make_kitchen_env(task, cameras=(camera,), image_size=size)
    try:
        expert = make_expert(env)
        obs, info = env.reset(seed=seed)
        expert.reset()
        frames = [obs[image_key(camera)]]
        for _ in range(env.horizon):
            obs, _, term, trunc, info = env.step(expert.act(env))
            frames.append(obs[image_key(camera)])
            if term or trunc:
                break
        idx = min(int(round(at * (len(frames) - 1))), len(frames) - 1)
        return frames[idx], env.instruction, bool(info["success"])
    finally:
        env.close()


def _font(size: int):
    from PIL import ImageFont

    for path in ("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf", "DejaVuSans-Bold.ttf"):
        try:
            return ImageFont.truetype(path, size)
        except OSError:
            continue
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _wrap(draw, text: str, font, width: float, lines: int) -> list[str]:
    """Split ``text`` into at most ``lines`` lines that fit ``width`` pixels (the last one
    shortened with an ellipsis if needed)."""
    out, words = [], text.split()
    while words and len(out) < lines:
        line = words.pop(0)
        while words and draw.textlength(line + " " + words[0], font=font) <= width:
            line += " " + words.pop(0)
        out.append(line)
    if words:
        last = out[-1]
        while last and draw.textlength(last + "...", font=font) > width:
            last = last[:-1]
        out[-1] = last + "..."
    return out


def compose(tiles: list[tuple[str, str, object]], cols: int, size: int):
    """A PIL image: ``tiles`` (name, instruction, uint8 (size, size, 3)) in rows of ``cols``,
    each with its name (bold) and instruction (up to two lines) underneath."""
    from PIL import Image, ImageDraw

    name_px, text_px = max(10, size // 14), max(8, size // 20)
    name_font, text_font = _font(name_px), _font(text_px)
    label_h = name_px + 2 * (text_px + 3) + 10
    rows = (len(tiles) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * size, rows * (size + label_h)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (name, instruction, img) in enumerate(tiles):
        x, y = (i % cols) * size, (i // cols) * (size + label_h)
        sheet.paste(Image.fromarray(img), (x, y))
        draw.text((x + 4, y + size + 2), name, fill="black", font=name_font)
        for j, line in enumerate(_wrap(draw, f'"{instruction}"', text_font, size - 8, 2)):
            draw.text((x + 4, y + size + 5 + name_px + j * (text_px + 3)), line, fill=(70, 70, 70), font=text_font)
    return sheet


def main() -> None:
    """Render every task's frame and write the grid."""
    from vlastack.envs.kitchen import DEFAULT_CAMERAS, list_tasks

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="docs/kitchen_tasks.png")
    p.add_argument("--camera", default="left", choices=DEFAULT_CAMERAS)
    p.add_argument("--size", type=int, default=256, help="tile side in pixels")
    p.add_argument("--seed", type=int, default=0, help="seed of the first task's episode (task i: seed + i)")
    p.add_argument("--at", type=float, default=0.6, help="fraction of the episode at which to take the frame")
    p.add_argument("--cols", type=int, default=6)
    p.add_argument("--tasks", nargs="*", default=None, help="task names (default: all)")
    p.add_argument("--max-mb", type=float, default=1.5, help="fail if the PNG is larger")
    a = p.parse_args()
    if not 0.0 <= a.at <= 1.0:
        p.error(f"--at must be in [0, 1], got {a.at}")
    import logging

    import robosuite  # noqa: F401  (sets its logger's level on import; quieten it after)

    logging.getLogger("robosuite_logs").setLevel(logging.ERROR)
    tasks = a.tasks or list_tasks()
    tiles = []
    for i, task in enumerate(tasks):
        img, instruction, success = expert_frame(task, a.camera, a.size, a.seed + i, a.at)
        tiles.append((task, instruction, img))
        print(f"  {task:<24} expert {'succeeded' if success else 'FAILED'}  \"{instruction}\"", flush=True)
    sheet = compose(tiles, a.cols, a.size).quantize(colors=256, dither=0)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    sheet.save(tmp, format="PNG", optimize=True)
    os.replace(tmp, out)
    mb = out.stat().st_size / 2**20
    print(f"wrote {out}: {sheet.width}x{sheet.height}, {mb:.2f} MB")
    if mb > a.max_mb:
        sys.exit(f"{out} is {mb:.2f} MB, over --max-mb {a.max_mb}: use a smaller --size")


if __name__ == "__main__":
    main()
