"""Render docs/kitchen_groups.png: the task groups' shared scenes across layouts and styles.

    .venv/bin/python scripts/kitchen_group_grid.py                 # docs/kitchen_groups.png
    .venv/bin/python scripts/kitchen_group_grid.py --size 192 --camera right --out groups.png

One row per task group, one column per layout; column j shows layout j with style j (the last
column is the held-out layout with the held-out style). Each tile is the ``--camera`` view at
reset, so it shows the start state every task of the group shares for that seed. The PNG is
palette-quantised to stay small.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")


def start_frame(group: str, layout: int, style: int, camera: str, size: int):
    """The ``camera`` image (uint8 (size, size, 3)) of ``group``'s shared scene at reset, with
    the episode forced to (``layout``, ``style``), and the episode's metadata."""
    import vlastack.envs.kitchen.groups as groups_mod
    from vlastack.envs.kitchen import TASK_GROUPS, make_kitchen_env
    from vlastack.envs.kitchen.groups import LAYOUTS, STYLES
    from vlastack.types import image_key

    env = make_kitchen_env(TASK_GROUPS[group][0], cameras=(camera,), image_size=size, scene="group", group=group,
                           split="all")
    forced = (LAYOUTS[layout], STYLES[style])
    real = groups_mod.draw_variation
    # draw as usual (the rest of the episode keeps its seed's draws), then show the forced pair
    groups_mod.draw_variation = lambda rng, split: (real(rng, split), forced)[1]
    try:
        obs, _ = env.reset(seed=layout)
        return obs[image_key(camera)], dict(env.scene.episode_meta)
    finally:
        groups_mod.draw_variation = real
        env.close()


def main() -> int:
    """Render the grid and write the PNG."""
    from PIL import Image, ImageDraw

    from vlastack.envs.kitchen import TASK_GROUPS
    from vlastack.envs.kitchen.groups import LAYOUTS, STYLES

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=160)
    p.add_argument("--camera", default="left", choices=("left", "right", "wrist"))
    p.add_argument("--out", default="docs/kitchen_groups.png")
    p.add_argument("--max-mb", type=float, default=0.6)
    a = p.parse_args()
    n = min(len(LAYOUTS), len(STYLES))
    label_h = 28
    grid = Image.new("RGB", (n * a.size, len(TASK_GROUPS) * (a.size + label_h)), "white")
    draw = ImageDraw.Draw(grid)
    for r, group in enumerate(TASK_GROUPS):
        for c in range(n):
            li, si = (c, c) if c < n - 1 else (len(LAYOUTS) - 1, len(STYLES) - 1)
            frame, meta = start_frame(group, li, si, a.camera, a.size)
            x, y = c * a.size, r * (a.size + label_h)
            grid.paste(Image.fromarray(frame), (x, y))
            draw.text((x + 3, y + a.size + 1), f"{group}", fill="black")
            draw.text((x + 3, y + a.size + 13), f"{meta['layout']} / {meta['style']}", fill=(60, 60, 60))
            print(f"  {group} layout {meta['layout']} style {meta['style']}", flush=True)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.png")
    grid.quantize(256).save(tmp, optimize=True)
    os.replace(tmp, out)
    mb = out.stat().st_size / 2**20
    print(f"wrote {out} ({mb:.2f} MB)")
    return 0 if mb <= a.max_mb else (print(f"too large: over {a.max_mb} MB", file=sys.stderr) or 1)


if __name__ == "__main__":
    sys.exit(main())
