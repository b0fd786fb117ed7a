"""``vlastack train``: the Hydra app over ``configs/train.yaml`` (groups policy/, dataset/, train/, experiment/).

Hydra composes the config from the overrides (``-m`` sweeps them: job n runs in ``run_dir/n``),
:func:`~vlastack.train.config.from_hydra` checks it against the typed dataclasses (a wrong key or
type stops here, before any data is read or the run directory is made), and
:func:`~vlastack.train.loop.train` runs it. The entry pattern is the one of every command
(:mod:`vlastack.hydra_app`): ``--help``, ``--cfg job``, ``--info``, ``.hydra/`` and ``train.log`` in run_dir.
"""

from __future__ import annotations

from typing import Any

from vlastack import hydra_app
from vlastack.datasets.store import StoreError
from vlastack.types import ContractError

from .config import TrainConfigError, from_hydra


def command_job(cfg: Any) -> int:
    """Validate one composed config and train it; returns the exit code (2 on a bad store or data)."""
    from .loop import train

    app = from_hydra(cfg)
    if hydra_app.in_multirun():
        app.run_dir = str(hydra_app.runtime_output_dir())
    train(app)
    return 0


COMMAND = hydra_app.Command("train", run=command_job, check=from_hydra,
                            errors=(TrainConfigError, StoreError, ContractError))


def main(argv: list[str] | None = None) -> int:
    """``vlastack train [Hydra flags and overrides]``; returns the exit code (the worst of a multirun's jobs)."""
    return hydra_app.run(COMMAND, argv)
