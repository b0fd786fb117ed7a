"""The ``vlastack`` command: one entry point, one subcommand per job.

``collect``, ``train``, ``eval``, ``serve`` and ``deploy`` are Hydra apps over the
configs shipped in the package (``vlastack/configs``), all through one entry
(:mod:`vlastack.hydra_app`): their remaining arguments are Hydra overrides and flags
(``--help``, ``--cfg job``, ``--info``, ``-m``, ``--config-dir``). ``inspect``,
``convert``, ``push`` and ``view`` take plain arguments. Each subcommand's module is imported only when
it runs, so ``vlastack inspect`` never pays for torch or MuJoCo start-up.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys

# OpenMP threads that spin while waiting make multi-threaded torch 10-30x slower on a machine
# whose cores are busy with other work (measured: a 2-thread DUST chunk 6.8 s spinning vs 0.21 s
# passive). Read once, when torch loads OpenMP, so it is set before any subcommand imports torch;
# an explicit OMP_WAIT_POLICY in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# subcommand -> (module, function, one-line help); the function takes argv (list[str]).
COMMANDS: dict[str, tuple[str, str, str]] = {
    "inspect": ("vlastack.datasets.convert", "inspect_main", "summarise a trajectory store"),
    "convert": ("vlastack.datasets.convert", "convert_main", "convert LeRobot / robomimic / Zarr datasets"),
    "view": ("vlastack.view", "main", "one stored episode as a Rerun recording (.rrd) or an mp4 with curves"),
    "collect": ("vlastack.rollout.collect", "main", "generate demos with scripted experts (Hydra)"),
    "train": ("vlastack.train", "main", "train a policy (Hydra)"),
    "eval": ("vlastack.rollout.evaluate", "main", "evaluate a policy in simulation (Hydra)"),
    "serve": ("vlastack.rollout.server", "main", "serve a policy over the openpi websocket protocol (Hydra)"),
    "deploy": ("vlastack.rollout.deploy", "main", "run a policy on a robot or its digital twin (Hydra)"),
    "push": ("vlastack.policies.checkpoint", "push_main", "upload a checkpoint to the Hugging Face Hub"),
    "export": ("vlastack.rollout.export_cli", "main", "export a policy's chunk computation to ONNX / OpenVINO"),
}


def available() -> dict[str, tuple[str, str, str]]:
    """The subcommands whose modules are present in this install."""
    return {name: c for name, c in COMMANDS.items() if importlib.util.find_spec(c[0]) is not None}


def _usage() -> str:
    lines = ["usage: vlastack <command> [args...]", "", "commands:"]
    lines += [f"  {name:<9} {c[2]}" for name, c in available().items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``vlastack <command> ...``; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    cmds = available()
    if name not in cmds:
        print(f"vlastack: unknown command {name!r}; choose one of: {', '.join(cmds)}", file=sys.stderr)
        return 2
    module, func, _ = cmds[name]
    result = getattr(importlib.import_module(module), func)(rest)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
