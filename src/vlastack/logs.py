"""Known-harmless third-party log messages, dropped from the moment ``vlastack`` is imported.

robosuite greets every process with a screen of warnings that do not apply to vlastack (no
private macro file, no ``robosuite_models``, no mink IK for the GR1 humanoid) and repeats
controller-config chatter on every env build (the Panda has no ``torso``, ``head``, ``base``,
``legs`` or ``left`` arm to configure); PyOpenGL notes at INFO that its optional accelerator is
missing. :func:`install` puts a filter on each of those loggers that drops exactly those
messages, matched by their opening words; any other message still shows. The filter sits on the
logger itself, so it works whether the library is imported before or after vlastack, and Python's
``logging.config`` (Hydra's job logging) keeps it.
"""

from __future__ import annotations

import logging

#: logger name -> the opening words of its messages that never matter to vlastack (robosuite 1.5.2, PyOpenGL 3.1)
KNOWN_HARMLESS: dict[str, tuple[str, ...]] = {
    "robosuite_logs": (
        "No private macro file found",
        "It is recommended to use a private macro file",
        "To setup, run: python",  # the private-macro hint's last line
        "Could not import robosuite_models",
        "Could not load the mink-based whole-body IK",
        "Loading controller configuration from",
        'The config has defined for the controller "',  # parts the Panda does not have
    ),
    "OpenGL.acceleratesupport": ("No OpenGL_accelerate module loaded",),
}


class KnownHarmless(logging.Filter):
    """Drops log records whose message starts with one of ``prefixes``."""

    def __init__(self, prefixes: tuple[str, ...]):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        """False (drop) for a known-harmless message, True for everything else."""
        return not str(record.msg).startswith(self.prefixes)


def install() -> None:
    """Put a :class:`KnownHarmless` filter on each logger of :data:`KNOWN_HARMLESS` (once; later calls do nothing)."""
    for name, prefixes in KNOWN_HARMLESS.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, KnownHarmless) for f in logger.filters):
            logger.addFilter(KnownHarmless(prefixes))
