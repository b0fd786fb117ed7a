"""Training: ``vlastack train`` (Hydra) and the loop behind it.

    config.py        typed dataclasses of the Hydra config, checked at start
    builder.py       the policy's config (preset + dataset + overrides) and weights (scratch / init_from)
    data.py          stores -> train / val windows, merged stats, feature cache, the resumable step order
    optim.py         AdamW parameter groups, warmup + cosine schedule, EMA
    checkpoint.py    atomic step checkpoints, last / best pointers, pruning, training state
    distributed.py   torchrun process group, DDP / FSDP2 wrapping, collectives
    loop.py          the Trainer
    app.py           the Hydra entry point

Programmatic use: ``vlastack.train.loop.train(TrainAppConfig(...))`` returns the run's summary.
"""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    """``vlastack train`` entry point (see :mod:`vlastack.train.app`)."""
    from .app import main as _main

    return _main(argv)


__all__ = ["main"]
