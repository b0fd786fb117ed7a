"""The MuJoCo digital twin: its model agrees with the controller's kinematics; the physics process runs in
real time with timestamped camera frames; injected latency, dropped commands, frozen frames and the
hardware e-stop behave as configured; the drawer's success predicate."""
import time

import numpy as np
import pytest

from vlastack.real_robot.base import StaleFrameError
from vlastack.real_robot.controller import ControllerConfig
from vlastack.real_robot.kinematics import PANDA
from vlastack.real_robot.twin import TwinConfig, TwinRobot, build_mjcf, scene_layout
from vlastack.types import STATE, TIMESTAMP, image_key


def test_twin_model_matches_the_controller_kinematics():
    import mujoco

    m = mujoco.MjModel.from_xml_string(build_mjcf(TwinConfig()))
    d = mujoco.MjData(m)
    qadr = [m.jnt_qposadr[m.joint(n).id] for n in PANDA.joint_names]
    rng = np.random.default_rng(0)
    for q in [np.array(PANDA.home)] + [rng.uniform(PANDA.lower_array, PANDA.upper_array) for _ in range(5)]:
        d.qpos[qadr] = q
        mujoco.mj_forward(m, d)
        p, R = PANDA.fk(q)
        np.testing.assert_allclose(d.site("tcp").xpos, p, atol=1e-9)
        np.testing.assert_allclose(d.site("tcp").xmat.reshape(3, 3), R, atol=1e-5)
    assert m.njnt == PANDA.n + 3  # arm, two fingers, drawer


def test_scene_layout_varies_with_seed_and_bad_config_is_named():
    assert scene_layout(1) != scene_layout(2) and scene_layout(3) == scene_layout(3)
    with pytest.raises(ValueError, match="valid choices"):
        TwinConfig(cameras=("top",))
    with pytest.raises(ValueError, match="drop_prob"):
        TwinConfig(drop_prob=1.5)


def _joint_move(robot, dq0=0.25, lead=0.4):
    q = robot.state().q
    target = q.copy()
    target[0] += dq0
    t_send = time.monotonic()
    robot.send_action(np.r_[target, -1.0].astype(np.float32), t=t_send + lead)
    return q, target


def test_real_time_twin_with_latency_drops_estop_and_success():
    twin = TwinConfig(image_size=(32, 40), camera_fps=20, cmd_latency_s=0.12, drop_prob=0.3, seed=3)
    with TwinRobot(twin, ControllerConfig(rate_hz=200, action_mode="joint", watchdog_s=1.0), fps=10) as robot:
        obs = robot.get_observation()
        assert obs[image_key("front")].shape == (32, 40, 3) and obs[image_key("wrist")].dtype == np.uint8
        assert obs[image_key("front")].std() > 5  # a rendered scene, not a blank buffer
        assert obs[STATE].shape == (14,) and obs["task"] == "open the drawer"
        assert abs(obs[TIMESTAMP] - time.monotonic()) < 0.5
        # frames keep coming at about camera_fps, with increasing index and capture time
        f0 = robot.cameras[0].read()
        time.sleep(0.5)
        f1 = robot.cameras[0].read()
        assert 4 <= f1.index - f0.index <= 14 and f1.timestamp > f0.timestamp
        # commands reach the arm no sooner than the injected latency
        q0, target = _joint_move(robot)
        time.sleep(1.0)
        log = robot.log()
        ts = robot.task_state()
        moved_cmd = log["t"][np.argmax(np.abs(log["q_cmd"][:, 0] - q0[0]) > 1e-3)]
        moved_arm = log["t"][np.argmax(np.abs(log["q"][:, 0] - q0[0]) > 1e-3)]
        assert moved_arm - moved_cmd >= 0.11
        assert abs(robot.state().q[0] - target[0]) < 0.02  # it got there despite the drops
        frac = ts["dropped_commands"] / (ts["dropped_commands"] + ts["applied_commands"])
        assert 0.2 < frac < 0.4
        assert 0.6 < ts["rtf"] < 1.2  # real time (a loaded machine may lag a little)
        # the success predicate and the scene reset
        assert not robot.task_success()
        robot.twin_request("set_drawer", 0.1)
        time.sleep(0.1)
        assert robot.task_success() and robot.task_state()["drawer"] > 0.08
        robot.twin_request("reset_scene", 5)
        time.sleep(0.1)
        assert not robot.task_success()
        # the hardware e-stop: reported by the driver, latched by the controller
        robot.twin_estop()
        time.sleep(0.1)
        assert robot.status == "estop"
        assert any("e-stop" in msg for _, msg in robot.faults())
        robot.twin_request("release_estop")
        time.sleep(0.05)
        assert robot.clear_estop() == "idle"


def test_frozen_frames_are_detected():
    twin = TwinConfig(image_size=(16, 16), camera_fps=30, freeze_prob=1.0, freeze_s=0.4, cameras=("front",))
    with TwinRobot(twin, fps=10, max_frame_age_s=0.25) as robot:
        seen, stale = set(), 0
        t_end = time.monotonic() + 1.5
        while time.monotonic() < t_end:
            try:
                robot.get_observation()
            except StaleFrameError as e:
                assert "front" in str(e) and "frozen" in str(e)
                stale += 1
            seen.add(robot.cameras[0].read().index)
            time.sleep(0.02)
        assert len(seen) <= 6  # ~45 frames rendered, but each published frame freezes the camera 0.4 s
        assert stale > 0 and robot.frozen_reads > 0
        assert robot.task_state()["frozen_frames"] > 10


def test_a_simulation_process_whose_client_dies_exits_cleanly():
    """A ``vlastack deploy`` killed outright (SIGKILL, OOM) leaves its twin process a closed pipe: the twin ends
    its loop and exits without a traceback (it used to die on an EOFError from its request pipe)."""
    import multiprocessing as mp
    import os
    import subprocess
    import sys

    from vlastack.real_robot.simproc import serve_requests

    ours, theirs = mp.Pipe()
    theirs.close()
    assert serve_requests(ours, {}, "twin") is False  # the client's end closed: gone, no exception
    ours, theirs = mp.Pipe()
    theirs.send(("nosuch", ()))
    assert serve_requests(ours, {}, "twin") is True and "unknown twin request" in theirs.recv()[1]

    parent = ("import os, signal, time\n"
              "from vlastack.real_robot.twin import TwinConfig, TwinRobot\n"
              "robot = TwinRobot(TwinConfig(cameras=('front',), image_size=(16, 16)))\n"
              "robot.connect()\n"
              "print(robot._sim_proc.pid, flush=True)\n"
              "time.sleep(0.5)\n"
              "os.kill(os.getpid(), signal.SIGKILL)\n")
    proc = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        out, err = proc.communicate(timeout=120)  # stderr closes once the twin and the controller have exited
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    sim_pid = int(out.split()[0])
    assert proc.returncode == -9

    def alive(pid: int) -> bool:  # (a zombie waiting for its new parent to reap it has exited)
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] != "Z"
        except FileNotFoundError:
            return False

    deadline = time.monotonic() + 10
    while alive(sim_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(sim_pid), "the twin process outlived its client"
    assert "Traceback" not in err and "EOFError" not in err, err
