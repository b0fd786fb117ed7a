"""`make quickstart`: the main job on the embedded default, as deep as this install goes.

Stages, each skipped with a clear line when its part has not landed yet:

1. collect scripted-expert demos for the default kitchen task (cached: reruns resume);
2. summarise the store (``vlastack inspect``);
3. train DUST ``small`` for a fixed budget (``vlastack train``);
4. evaluate in simulation and write ``runs/quickstart/report.md`` (``vlastack eval``).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from pathlib import Path

from vlastack import cli

RUN_DIR = Path(os.environ.get("VLASTACK_QUICKSTART_DIR", "runs/quickstart"))
TASK = os.environ.get("VLASTACK_QUICKSTART_TASK", "OpenDrawer")
EPISODES = int(os.environ.get("VLASTACK_QUICKSTART_EPISODES", "50"))


def _have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _stage(title: str, module: str, argv: list[str], report: list[str]) -> bool:
    """Run one ``vlastack`` subcommand if its module exists; record what happened."""
    if not _have(module):
        line = f"- {title}: not available yet ({module} has not landed); stopping here."
        print(line)
        report.append(line)
        return False
    print(f"\n== {title}: vlastack {' '.join(argv)}")
    t0 = time.perf_counter()
    rc = cli.main(argv)
    dt = time.perf_counter() - t0
    report.append(f"- {title}: `vlastack {' '.join(argv)}` -> exit {rc} in {dt:.0f} s")
    if rc:
        raise SystemExit(f"quickstart: {title} failed with exit code {rc}")
    return True


def main() -> int:
    """Run every stage that exists, then write the report."""
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    store = RUN_DIR / "demos.zarr"
    report = [f"# vlastack quickstart ({TASK})", ""]
    stages = [
        ("collect demos", "vlastack.rollout.collect",
         ["collect", "env=kitchen", f"task={TASK}", f"episodes={EPISODES}", f"out={store}"]),
        ("inspect store", "vlastack.datasets.convert", ["inspect", str(store)]),
        ("train DUST small", "vlastack.train",
         ["train", "policy=dust", "policy.preset=small", f"dataset.path={store}", f"run_dir={RUN_DIR / 'train'}"]),
        ("evaluate", "vlastack.rollout.evaluate",
         ["eval", f"checkpoint={RUN_DIR / 'train' / 'checkpoints' / 'last'}", "env=kitchen", f"tasks=[{TASK}]",
          f"out={RUN_DIR / 'eval'}"]),
    ]
    for title, module, argv in stages:
        if not _stage(title, module, argv, report):
            break
    (RUN_DIR / "report.md").write_text("\n".join(report) + "\n")
    print(f"\nreport: {RUN_DIR / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
