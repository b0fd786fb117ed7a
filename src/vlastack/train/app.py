"""``vlastack train``: the Hydra app over ``configs/train.yaml`` (groups policy/, dataset/, train/, experiment/).

Hydra composes the config from the overrides (``-m`` sweeps them: job n runs in ``run_dir/n``),
:func:`~vlastack.train.config.from_hydra` checks it against the typed dataclasses (a wrong key or
type stops here, before any data is read), and :func:`~vlastack.train.loop.train` runs it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from .config import TrainConfigError, from_hydra

USAGE = """usage: vlastack train [Hydra overrides...]

  vlastack train policy=dust policy.preset=small dataset.path=data/demos.zarr run_dir=runs/dust
  vlastack train experiment=quickstart dataset.path=data/demos.zarr run_dir=runs/qs
  vlastack train policy=dita dataset=multi "dataset.paths=[a.zarr,b.zarr]" run_dir=runs/mt
  vlastack train policy=dust dataset=video dataset.path=videos.zarr run_dir=runs/pre   (action-free)
  vlastack train experiment=dita_fewshot train.init_from=runs/mt dataset.path=new.zarr run_dir=runs/ft
  vlastack train -m policy=dust,dust_no_wm dataset.path=... run_dir=runs/sweep
  torchrun --nproc-per-node=2 -m vlastack.cli train train=gpu train.strategy=fsdp ...

Groups (configs/): policy={dust,dust_mmdit_joint,dust_dit_decoupled,dust_dit_joint,dust_no_wm,dita}
dataset={store,multi,video,fewshot} train={default,cpu,gpu,debug}
experiment={quickstart,dust_video_pretrain,dust_finetune,multitask,dita_fewshot,learning}
Hydra flags: --cfg job (print the composed config), -m (multirun), --help.
"""


def run_job(cfg: Any) -> tuple[int, dict | None]:
    """Validate one composed config and train it; returns (exit code, summary). Config, store and data
    contract errors print one clear line and give exit code 2."""
    from vlastack.datasets.store import StoreError
    from vlastack.types import ContractError

    from .loop import train

    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get() if HydraConfig.initialized() else None
    except ImportError:  # pragma: no cover
        hc = None
    try:
        app = from_hydra(cfg)
        if hc is not None and hc.mode == RunMode.MULTIRUN:
            app.run_dir = str(hc.runtime.output_dir)
        return 0, train(app)
    except (TrainConfigError, StoreError, ContractError) as e:
        print(f"vlastack train: {e}", file=sys.stderr)
        return 2, None


def main(argv: list[str] | None = None) -> int:
    """``vlastack train [overrides]``; returns the exit code (the worst of a multirun's jobs)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "help") for a in argv):
        print(USAGE)
        return 0
    import hydra
    from hydra.core.global_hydra import GlobalHydra

    from vlastack.rollout.common import ConfigsNotFound, configs_dir

    try:
        cdir = configs_dir("train.yaml")
    except ConfigsNotFound as e:
        print(f"vlastack train: {e}", file=sys.stderr)
        return 2
    codes: list[int] = []

    def task(cfg) -> None:
        rc, _ = run_job(cfg)
        codes.append(rc)

    task.__module__ = "vlastack.train"
    app = hydra.main(config_path=str(Path(cdir)), config_name="train", version_base="1.3")(task)
    saved = sys.argv
    sys.argv = ["vlastack-train", *argv]
    GlobalHydra.instance().clear()
    try:
        app()
    except SystemExit as e:  # Hydra reports override / composition errors and exits
        code = e.code if isinstance(e.code, int) else 1
        return code or (max(codes) if codes else 0)
    finally:
        sys.argv = saved
        GlobalHydra.instance().clear()
    return max(codes) if codes else 1
