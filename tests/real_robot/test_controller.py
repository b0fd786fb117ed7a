"""The controller process (spawned, 200 Hz) with the kinematic sim driver: watchdog timing, wild actions,
e-stop, refused starts. Checked on the controller's own tick log."""
import time

import numpy as np
import pytest

from vlastack.real_robot.base import RobotError
from vlastack.real_robot.controller import ControlledRobot, ControllerConfig, DriverSpec, tick_jitter
from vlastack.real_robot.kinematics import PANDA, matrix_to_rotvec
from vlastack.real_robot.safety import SafetyLimits
from vlastack.types import ContractError

RATE = 200.0
BOX = {"workspace_lower": [0.25, -0.35, 0.08], "workspace_upper": [0.75, 0.35, 0.6]}


def _robot(mode="ee", q0=None, **cfg):
    limits = SafetyLimits.for_chain(PANDA, {**BOX, "max_step": 0.01})
    kw = {} if q0 is None else {"q0": list(q0)}
    config = ControllerConfig(rate_hz=RATE, action_mode=mode, **{"watchdog_s": 0.1, **cfg})
    return ControlledRobot(DriverSpec("vlastack.real_robot.sim:KinematicArmDriver", kw), PANDA, limits, config, fps=20)


def _pose(obs):
    s = obs["observation.state"].astype(float)
    return s[8:11], s[11:14]


def test_watchdog_holds_within_two_control_periods_of_a_stalled_policy():
    with _robot() as robot:
        p, rv = _pose(robot.get_observation())
        for k in range(20):  # 20 Hz, each target 0.3 s ahead: the arm is mid-motion when the policy stalls
            target = p + np.array([0.0, 0.004 * (k + 1), 0.0])
            robot.send_action(np.r_[target, rv, 1.0], t=time.monotonic() + 0.3)
            time.sleep(0.05)
        time.sleep(0.5)  # stalled
        st = robot.state()
        log = robot.log()
    assert st.status == "holding" and st.counters["watchdog"] == 1
    last, dt = st.last_arrival, 1 / RATE
    t, q = log["t"], log["q_cmd"]
    after = t > last
    held = t >= last + 0.1 + 2 * dt
    assert held.sum() > 10
    assert np.all(q[held] == q[held][0])  # no motion at all once held
    moving = after & (t < last + 0.1)
    assert np.abs(np.diff(q[moving], axis=0)).max() > 0  # it was moving after the last action
    assert st.counters["ticks"] > 200 and st.counters["accepted"] == 20


def test_wild_actions_never_leave_the_limits_and_repeated_faults_stop():
    limits = SafetyLimits.for_chain(PANDA, {**BOX, "max_step": 0.01})
    rng = np.random.default_rng(0)
    with _robot(max_faults=5) as robot:
        p, rv = _pose(robot.get_observation())
        wild = [np.r_[p + [0.5, 0, 0], rv, 1], np.r_[p - [0, 0, 2.0], rv, -1], np.r_[[1e30, -1e30, 1e30], rv, 9],
                np.r_[p, [7, -9, 1e6], 1], np.r_[rng.normal(size=3) * 3, rng.normal(size=3) * 4, 0.5]]
        for a in wild:
            robot.send_action(a.astype(np.float32))
            time.sleep(0.05)
        assert robot.status == "running"
        for a in ([np.nan] * 7, [np.inf] * 7, list(p) + [0, 0, 0, np.nan]):
            robot.send_action(np.array(a, np.float32))
        robot.send_action(np.r_[p, rv, 0], t=float("nan"))
        robot.send_action(np.r_[p, rv, 0], t=time.monotonic() + 1e6)
        time.sleep(0.1)
        st = robot.state()
        log = robot.log()
        with pytest.raises(ContractError, match=r"expected shape \(7,\)"):
            robot.send_action(np.zeros(8, np.float32))
        assert st.status == "stopped" and st.counters["invalid"] == 5
        assert robot.reset_faults() == "idle"
    q = log["q_cmd"]
    assert np.all(np.isfinite(q)) and np.all(q >= limits.lower) and np.all(q <= limits.upper)
    assert np.all(np.abs(np.diff(q, axis=0)) <= limits.step_cap(1 / RATE) + 1e-12)
    assert all(limits.in_box(PANDA.fk_pos(x)) for x in q[::5])
    assert st.counters["rate_limited"] > 0  # the jumps were cut to the per-tick step


def test_estop_freezes_within_a_tick_and_latches():
    with _robot("joint") as robot:
        q0 = robot.state().q
        target = q0 + np.array([0.3, 0, 0, 0, 0, 0, 0])
        robot.send_action(np.r_[target, 1.0].astype(np.float32), t=time.monotonic() + 1.0)
        time.sleep(0.2)
        t_stop = time.monotonic()
        robot.estop()
        time.sleep(0.2)
        robot.send_action(np.r_[target, 1.0].astype(np.float32), t=time.monotonic() + 0.5)
        time.sleep(0.1)
        st, log = robot.state(), robot.log()
        assert st.status == "estop" and st.counters["rejected"] == 1
        assert robot.clear_estop() == "idle"
    frozen = log["t"] > t_stop + 2 / RATE
    assert np.all(log["q_cmd"][frozen] == log["q_cmd"][frozen][0])
    assert 0 < log["q_cmd"][frozen][0][0] - q0[0] < 0.3


def test_start_outside_the_limits_is_refused():
    q = list(PANDA.home)
    q[3] = 0.5
    with pytest.raises(RobotError, match="outside the limits"):
        _robot(q0=q).connect()


def test_tick_jitter_is_reported():
    with _robot() as robot:
        time.sleep(0.3)
        log = robot.log()
    j = tick_jitter(log["t"], RATE)
    assert 0 <= j["p50_ms"] <= j["p99_ms"] <= j["max_ms"]
    assert len(log["t"]) > 30
