"""Safety inside the controller core: property tests that no action sequence, however wild, makes the
commanded motion leave the limits; watchdog, stale drops, faults, e-stop, start checks (pure, tick by tick)."""
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from vlastack.real_robot.controller import ControllerConfig, ControllerCore
from vlastack.real_robot.kinematics import PANDA, UR5E, matrix_to_rotvec, rotvec_to_matrix
from vlastack.real_robot.safety import SafetyError, SafetyFilter, SafetyLimits

BOX = {"workspace_lower": [0.25, -0.35, 0.08], "workspace_upper": [0.75, 0.35, 0.6]}
RATE = 200.0
DT = 1 / RATE


def _limits(chain=PANDA, **kw):
    return SafetyLimits.for_chain(chain, {**BOX, "max_step": 0.01, **kw})


def _check_command(limits, chain, q_prev, q, g_prev, g):
    """Every invariant the filter promises, on one tick's command."""
    assert np.all(np.isfinite(q)) and np.isfinite(g)
    assert np.all(q >= limits.lower - 1e-12) and np.all(q <= limits.upper + 1e-12)
    assert np.all(np.abs(q - q_prev) <= limits.step_cap(DT) + 1e-12)
    assert limits.in_box(chain.fk_pos(q))
    assert -1 <= g <= 1 and abs(g - g_prev) <= limits.gripper_step + 1e-12


wild_float = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.floats(-1e6, 1e6),
    st.sampled_from([0.0, np.pi, -np.pi, 1e308, -1e308, 5e-324]),
    st.floats(-3.5, 3.5),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(wild_float, min_size=8, max_size=8), min_size=1, max_size=40))
def test_filter_never_leaves_limits(targets):
    limits = _limits()
    f = SafetyFilter(limits, PANDA, DT)
    q, g = np.array(PANDA.home), -1.0
    for t in targets:
        r = f.apply(q, g, np.array(t[:7]), t[7])
        _check_command(limits, PANDA, q, r.q, g, r.gripper)
        q, g = r.q, r.gripper


def _plausible_ee(draw):
    """An in-reach TCP pose with a gripper value: the policy's usual output, jumping around."""
    p = [draw(st.floats(-0.2, 1.0)), draw(st.floats(-0.6, 0.6)), draw(st.floats(-0.2, 0.9))]
    r = [draw(st.floats(-4, 4)) for _ in range(3)]
    return p + r + [draw(st.floats(-3, 3))]


@st.composite
def action_streams(draw, dim):
    """(arrival offset, target offset, action) triples: wild values, wild times, bursts and gaps."""
    n = draw(st.integers(1, 25))
    out = []
    for _ in range(n):
        kind = draw(st.sampled_from(["wild", "wild", "plausible", "plausible", "nan_time"]))
        if kind == "wild":
            a = draw(st.lists(wild_float, min_size=dim, max_size=dim))
        elif kind == "plausible" and dim == 7:
            a = _plausible_ee(draw)
        else:
            a = [draw(st.floats(-4, 4)) for _ in range(dim)]
        lead = draw(st.one_of(st.floats(-0.2, 0.5), st.sampled_from([float("nan"), float("inf"), 1e9, 0.0])))
        gap = draw(st.integers(0, 15))  # ticks until the next action arrives
        out.append((gap, lead, a))
    return out


def _run_core(mode, stream, chain=PANDA):
    limits = _limits(chain)
    cfg = ControllerConfig(rate_hz=RATE, action_mode=mode, watchdog_s=0.1, max_faults=1000)
    now = 100.0
    core = ControllerCore(cfg, limits, chain, np.array(chain.home), -1.0, now)
    for gap, lead, a in stream:
        core.submit(now, now + lead, a)
        for _ in range(gap + 1):
            q_prev, g_prev = core.q_cmd.copy(), core.g_cmd
            now += DT
            cmd = core.tick(now)
            _check_command(limits, chain, q_prev, cmd.q, g_prev, cmd.gripper)
    return core


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(action_streams(7))
@example([(0, 0.5, [0.0, 0.0, 0.0, 0.0, 1e308, 1.49e308, 0.0])])  # finite rotation vector, overflowing angle
def test_no_ee_action_stream_leaves_the_limits(stream):
    _run_core("ee", stream)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(action_streams(8))
def test_no_joint_action_stream_leaves_the_limits(stream):
    _run_core("joint", stream)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(action_streams(7))
def test_no_action_stream_leaves_the_limits_on_a_ur5e(stream):
    q0 = np.array([0.0, -1.2, 1.6, -1.9, -1.57, 0.0])
    p0 = UR5E.fk_pos(q0)
    ur_box = {"workspace_lower": list(p0 - [0.3, 0.3, 0.2]), "workspace_upper": list(p0 + [0.3, 0.3, 0.2])}
    limits = SafetyLimits.for_chain(UR5E, {**ur_box, "max_step": 0.01})
    cfg = ControllerConfig(rate_hz=RATE, action_mode="ee", watchdog_s=0.1, max_faults=1000)
    now = 0.0
    core = ControllerCore(cfg, limits, UR5E, q0, 0.0, now)
    for gap, lead, a in stream:
        core.submit(now, now + lead, a)
        for _ in range(gap + 1):
            q_prev, g_prev = core.q_cmd.copy(), core.g_cmd
            now += DT
            cmd = core.tick(now)
            _check_command(limits, UR5E, q_prev, cmd.q, g_prev, cmd.gripper)


# ------------------------------------------------------------------ behaviour, tick by tick


def _core(mode="joint", **cfg):
    limits = SafetyLimits.for_chain(PANDA, {**BOX, "max_step": 0.05, "v_scale": 1.0})
    c = ControllerConfig(rate_hz=RATE, action_mode=mode, **{"watchdog_s": 0.1, **cfg})
    return ControllerCore(c, limits, PANDA, np.array(PANDA.home), -1.0, 0.0)


def test_interpolates_to_targets_at_their_times():
    core = _core()
    q0 = core.q_cmd.copy()
    goal = q0 + np.array([0.05, 0, 0, 0, 0, 0, 0])
    assert core.submit(0.0, 0.1, list(goal) + [1.0]) == "accepted"
    for k in range(1, 11):
        core.tick(k * DT)
    np.testing.assert_allclose(core.q_cmd, q0 + (goal - q0) * 0.5, atol=1e-9)  # half way at t = 0.05
    for k in range(11, 21):
        core.tick(k * DT)
    np.testing.assert_allclose(core.q_cmd, goal, atol=1e-9)
    assert core.status == "running"


def test_past_actions_are_dropped_and_new_targets_replace_later_waypoints():
    core = _core()
    q0 = core.q_cmd.copy()
    assert core.submit(1.0, 0.99, list(q0 + 0.1) + [0]) == "stale"
    assert core.counters["stale"] == 1 and core.status == "idle"
    far, near = q0.copy(), q0.copy()
    far[0] += 0.05
    near[0] -= 0.05
    core.submit(1.0, 1.2, list(far) + [0])
    core.submit(1.0, 1.1, list(near) + [0])  # supersedes the waypoint at 1.2
    assert [round(t, 3) for t, _, _ in core.traj] == [1.0, 1.1]
    now = 1.0
    while now < 1.15:
        now += DT
        core.tick(now)
    np.testing.assert_allclose(core.q_cmd, near, atol=1e-9)


def test_watchdog_holds_within_two_control_periods():
    core = _core(watchdog_s=0.07)
    now, q = 0.0, core.q_cmd.copy()
    trace = []
    for k in range(20):  # a steady 20 Hz stream, each target 200 ms ahead, moving joint 0
        q = q.copy()
        q[0] += 0.02
        core.submit(now, now + 0.2, list(q) + [0])
        for _ in range(10 if k < 19 else 60):  # after the 20th action the policy stalls
            now += DT
            trace.append((now, core.tick(now).q.copy()))
    last = core.last_arrival
    after = [(t, q) for t, q in trace if t > last]
    deadline = last + 0.07 + 2 * DT
    held = [q for t, q in after if t >= deadline]
    assert held and all(np.array_equal(held[0], h) for h in held)
    assert not np.array_equal(after[0][1], held[0])  # it was still moving when the policy stalled
    assert core.status == "holding" and core.counters["watchdog"] == 1


def test_repeated_faults_stop_until_reset():
    core = _core(max_faults=3)
    for k in range(3):
        assert core.submit(0.0, 0.1, [np.nan] * 8) == "invalid"
    assert core.status == "stopped"
    assert core.submit(0.0, 0.1, list(core.q_cmd) + [0]) == "rejected"
    q = core.q_cmd.copy()
    assert np.array_equal(core.tick(0.01).q, q)
    core.reset(0.02, q, 0.0)
    assert core.status == "idle" and core.submit(0.02, 0.1, list(q) + [0]) == "accepted"


def test_estop_freezes_at_once_and_latches():
    core = _core()
    q = core.q_cmd.copy()
    q[1] += 0.05
    core.submit(0.0, 0.1, list(q) + [1])
    core.tick(DT)
    core.estop(DT)
    frozen = core.q_cmd.copy()
    for k in range(2, 30):
        assert np.array_equal(core.tick(k * DT).q, frozen)
    assert core.submit(0.2, 0.3, list(q) + [1]) == "rejected"
    assert core.status == "estop"


def test_tracking_error_holds_at_the_measured_joints_and_a_persistent_one_stops():
    """Before the fix a tracking error counted a fault and the core kept running toward the target."""
    core = _core(max_faults=10, tracking_fault_s=0.05, watchdog_s=2.0)
    tol, cap = core.limits.tracking_tol, core.limits.step_cap(DT)
    stuck = core.q_cmd.copy()
    goal = stuck + np.array([1.0, 0, 0, 0, 0, 0, 0])
    assert core.submit(0.0, 1.0, list(goal) + [0]) == "accepted"
    t, errs = 0.0, []
    while core.status == "running" and t < 1.0:  # the arm does not move while the command ramps away
        t += DT
        cmd = core.tick(t, q_measured=stuck)
        errs.append(np.abs(cmd.q - stuck).max())
    assert core.status == "holding" and core.counters["tracking"] == 1
    assert max(errs) <= tol + cap.max() + 1e-9  # it held the tick the error passed the tolerance
    np.testing.assert_array_equal(cmd.q, stuck)  # held where the arm is, not where it was told to go
    assert core.submit(t, t + 0.5, list(goal) + [0]) == "rejected"  # no actions during the hold
    for _ in range(int(0.05 / DT) + 1):
        t += DT
        np.testing.assert_array_equal(core.tick(t, q_measured=stuck).q, stuck)
    assert core.submit(t, t + 0.5, list(goal) + [0]) == "accepted"  # resumes from the measured state
    np.testing.assert_array_equal(core.traj[0][1], stuck)
    # an arm that keeps going away from the hold (pushed, a brake slipping) stops the controller
    pushed = stuck + np.array([0, 0, 0, 0, 0, 0, 0.6])
    core.tick(t + DT, q_measured=pushed)
    assert core.status == "holding" and core.counters["tracking"] == 2
    core.tick(t + 2 * DT, q_measured=pushed + np.array([0, 0, 0, 0, 0, 0, 0.6]))
    assert core.status == "stopped" and "persists" in core.fault_log[-1][1]
    core.reset(t + 3 * DT, pushed, -1.0)
    assert core.status == "idle" and np.array_equal(core.q_cmd, pushed)
    assert core.tick(t + 4 * DT, driver_fault="protective stop", driver_estop=True).status == "estop"


def test_a_stale_arm_state_holds_and_refuses_actions():
    core = _core(max_faults=10, read_timeout_s=0.05)
    q0 = core.q_cmd.copy()
    core.submit(0.0, 0.5, list(q0 + 0.2) + [0])
    core.tick(DT, q_measured=q0)
    moving = core.q_cmd.copy()
    cmd = core.tick(2 * DT, q_measured=q0, state_age=0.06)  # the driver's read has blocked for 60 ms
    assert cmd.status == "holding" and core.counters["driver_faults"] == 1
    np.testing.assert_array_equal(cmd.q, moving)
    assert core.submit(3 * DT, 0.5, list(q0 + 0.2) + [0]) == "rejected"
    core.tick(3 * DT, q_measured=q0, state_age=0.07)
    assert core.counters["driver_faults"] == 1  # one fault per blocked stretch
    core.tick(4 * DT, q_measured=moving, state_age=0.0)
    assert core.submit(5 * DT, 0.5, list(q0 + 0.2) + [0]) == "accepted"


def test_start_outside_the_limits_is_refused():
    limits = SafetyLimits.for_chain(PANDA, BOX)
    q = np.array(PANDA.home)
    q[3] = 0.5  # beyond joint 4's upper limit
    with pytest.raises(SafetyError, match="outside the limits"):
        ControllerCore(ControllerConfig(), limits, PANDA, q, 0.0, 0.0)
    tight = SafetyLimits.for_chain(PANDA, {"workspace_lower": [0.6, -0.1, 0.5], "workspace_upper": [0.7, 0.1, 0.6]})
    with pytest.raises(SafetyError, match="outside the workspace box"):
        ControllerCore(ControllerConfig(), tight, PANDA, np.array(PANDA.home), 0.0, 0.0)


def test_bad_limits_are_named():
    with pytest.raises(SafetyError, match="workspace_lower"):
        SafetyLimits.for_chain(PANDA, {"workspace_lower": [0, 0, 1], "workspace_upper": [1, 1, 0]})
    with pytest.raises(SafetyError, match="unknown keys"):
        SafetyLimits.for_chain(PANDA, {"speed": 1})
    with pytest.raises(ValueError, match="two control periods"):
        ControllerConfig(rate_hz=100, watchdog_s=0.01)


def test_ee_targets_reach_the_pose():
    core = _core("ee", watchdog_s=1.0)
    p, R = PANDA.fk(core.q_cmd)
    goal = p + np.array([0.03, -0.02, 0.02])
    core.submit(0.0, 0.2, list(goal) + list(matrix_to_rotvec(R)) + [1.0])
    now = 0.0
    while now < 0.3:
        now += DT
        core.tick(now)
    p2, R2 = PANDA.fk(core.q_cmd)
    np.testing.assert_allclose(p2, goal, atol=2e-3)
    np.testing.assert_allclose(R2, rotvec_to_matrix(matrix_to_rotvec(R)), atol=1e-2)
    assert core.g_cmd == pytest.approx(1.0)
