"""Shared test set-up: one torch thread (timings swing 10x otherwise), offscreen GL."""
import os

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    import torch

    torch.set_num_threads(1)
    yield


def _sigint_default() -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture
def ctrl_c_popen_kwargs() -> dict:
    """Popen keywords for a child that must see Ctrl-C as a terminal user's process does.

    A shell without job control starts background commands with SIGINT ignored, and Python keeps
    an inherited SIG_IGN (no KeyboardInterrupt), so a test run launched that way (some CI runners)
    would otherwise measure an unkillable child instead of the command's Ctrl-C handling.
    """
    return {"preexec_fn": _sigint_default}
