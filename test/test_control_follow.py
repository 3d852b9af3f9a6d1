"""The follow law on numbers: frames, signs, limits, dead band, filter, every timeout. No ROS."""

import math

from followme_control.follow import (apply_dead_band, body_to_optical, Command,
                                     FollowController, FollowParams, KalmanTarget,
                                     optical_to_body, Pid, State)
import pytest

DT = 0.05  # one step at the default 20 Hz


def see(controller, t, forward, left, up=-5.0, stamp=None, bearing_only=False):
    """Give the controller a hero at a body-frame position, stamped `stamp` (default t)."""
    x, y, z = body_to_optical(forward, left, up, controller.params.camera_pitch_deg)
    if bearing_only:
        norm = math.sqrt(x * x + y * y + z * z)
        x, y, z = x / norm, y / norm, z / norm
    return controller.add_target(t if stamp is None else stamp, x, y, z, t, bearing_only)


def run(controller, start, duration, hero=None):
    """Step at DT from `start` for `duration` s, seeing `hero` (forward, left) every step."""
    steps = []
    t = start
    for _ in range(round(duration / DT)):
        t = round(t + DT, 9)
        if hero is not None:
            assert see(controller, t, *hero) is None
        steps.append((t,) + controller.update(t))
    return steps


def params(**changes):
    """
    Defaults, but without ego-motion compensation unless asked.

    Most tests feed the hero at fixed body-frame positions: a world in which the drone does not
    move, whatever it is told. Ego-motion compensation would then (rightly) conclude that the
    hero moves along with the drone. The closed-loop test uses the real defaults.
    """
    return FollowParams().updated(**{'ego_motion_compensation': False, **changes})


# Frames ---------------------------------------------------------------------------------------

def test_optical_to_body_level_camera_follows_rep103():
    # Level camera: optical z forward, x right, y down -> body x forward, y left, z up.
    assert optical_to_body(1.0, 2.0, 5.0, 0.0) == pytest.approx((5.0, -1.0, -2.0))


def test_optical_to_body_pitched_down_camera():
    # Straight down: what is ahead on the optical axis is below the drone.
    assert optical_to_body(0.0, 0.0, 3.0, 90.0) == pytest.approx((0.0, 0.0, -3.0), abs=1e-12)
    forward, left, up = optical_to_body(*body_to_optical(8.0, -2.0, -5.0, 25.0), 25.0)
    assert (forward, left, up) == pytest.approx((8.0, -2.0, -5.0))
    # On the optical axis of a camera pitched 25 deg down, the point is ahead and below.
    forward, _, up = optical_to_body(0.0, 0.0, 10.0, 25.0)
    assert forward == pytest.approx(10 * math.cos(math.radians(25)))
    assert up == pytest.approx(-10 * math.sin(math.radians(25)))


def test_camera_offset_is_added_in_the_body_frame():
    assert optical_to_body(0.0, 0.0, 5.0, 0.0, (0.2, -0.1, 0.3)) == pytest.approx(
        (5.2, -0.1, 0.3))


# Signs of every axis --------------------------------------------------------------------------

@pytest.mark.parametrize('left, sign', [(3.0, 1.0), (-3.0, -1.0)])
def test_yaw_turns_toward_the_hero(left, sign):
    controller = FollowController(params())
    _, _, _ = run(controller, 0.0, 0.5, hero=(8.0, left))[-1]
    assert math.copysign(1.0, controller.command.yaw_rate) == sign
    assert controller.command.yaw_rate != 0.0


@pytest.mark.parametrize('forward, sign', [(9.0, 1.0), (2.0, -1.0)])
def test_forward_closes_in_or_backs_off(forward, sign):
    controller = FollowController(params())
    run(controller, 0.0, 0.5, hero=(forward, 0.0))
    assert controller.command.forward * sign > 0.0
    assert controller.state == State.FOLLOW


@pytest.mark.parametrize('altitude, sign', [(8.0, 1.0), (12.0, -1.0)])
def test_vertical_holds_the_desired_altitude_from_odom(altitude, sign):
    controller = FollowController(params(desired_altitude=10.0))
    t = 0.0
    for _ in range(10):
        t += DT
        assert controller.add_odometry(t, altitude, 0.0, 0.0, 0.0, t) is None
        controller.update(t)
    assert controller.command.up * sign > 0.0


def test_no_altitude_hold_without_a_desired_altitude_or_odom():
    held = FollowController(params(desired_altitude=0.0))
    no_odom = FollowController(params(desired_altitude=10.0))
    t = 0.0
    for _ in range(10):
        t += DT
        held.add_odometry(t, 3.0, 0.0, 0.0, 0.0, t)
        held.update(t)
        no_odom.update(t)
    assert held.command.up == 0.0
    assert no_odom.command.up == 0.0


def test_lateral_speed_is_always_zero():
    controller = FollowController(params())
    steps = run(controller, 0.0, 1.0, hero=(6.0, 4.0))
    assert all(command.left == 0.0 for _, command, _ in steps)


# Limits ---------------------------------------------------------------------------------------

def test_saturation_at_the_velocity_limits():
    controller = FollowController(params(forward_max_velocity=1.5, yaw_max_velocity=0.4))
    steps = run(controller, 0.0, 5.0, hero=(40.0, 30.0))
    assert max(abs(c.forward) for _, c, _ in steps) == pytest.approx(1.5)
    assert max(abs(c.yaw_rate) for _, c, _ in steps) == pytest.approx(0.4)
    assert all(abs(c.forward) <= 1.5 + 1e-12 and abs(c.yaw_rate) <= 0.4 + 1e-12
               for _, c, _ in steps)


def test_acceleration_limits_bound_every_change_and_the_deadman_stop():
    p = params(forward_max_acceleration=1.0, yaw_max_acceleration=0.5)
    controller = FollowController(p)
    steps = run(controller, 0.0, 3.0, hero=(30.0, 20.0))
    steps += run(controller, steps[-1][0], 6.0)  # the hero is gone: decelerate to zero
    previous = Command()
    for _, command, _ in steps:
        assert abs(command.forward - previous.forward) <= 1.0 * DT + 1e-9
        assert abs(command.yaw_rate - previous.yaw_rate) <= 0.5 * DT + 1e-9
        previous = command
    assert steps[-1][1].forward == 0.0
    # Still moving right after the deadman: it slowed down, it did not stop dead.
    deadman = next(i for i, (_, _, state) in enumerate(steps) if state == State.HOVER)
    assert steps[deadman][1].forward > 0.5


def test_pid_integral_is_clamped():
    pid = Pid()
    tuning = params(forward_ki=1.0, forward_integral_limit=0.5,
                    forward_dead_band=0.0).axis('forward')
    for _ in range(100):
        pid.step(2.0, DT, tuning)
    assert pid.integral == pytest.approx(0.5)
    assert pid.step(2.0, DT, tuning) == pytest.approx(tuning.kp * 2.0 + 0.5)


# Dead band ------------------------------------------------------------------------------------

def test_dead_band_is_continuous():
    assert apply_dead_band(0.2, 0.3) == 0.0
    assert apply_dead_band(-0.3, 0.3) == 0.0
    assert apply_dead_band(0.5, 0.3) == pytest.approx(0.2)
    assert apply_dead_band(-0.5, 0.3) == pytest.approx(-0.2)


def test_no_forward_command_inside_the_dead_band():
    controller = FollowController(params(follow_distance=4.0, forward_dead_band=0.3,
                                         velocity_feedforward=0.0))
    steps = run(controller, 0.0, 2.0, hero=(4.2, 0.0))
    assert all(c.forward == 0.0 for _, c, _ in steps)
    controller = FollowController(params(follow_distance=4.0, forward_dead_band=0.3,
                                         velocity_feedforward=0.0))
    run(controller, 0.0, 2.0, hero=(4.6, 0.0))
    assert controller.command.forward == pytest.approx(0.6 * 0.3, rel=0.05)


def test_no_yaw_command_inside_the_yaw_dead_band():
    controller = FollowController(params(yaw_dead_band=0.05))
    steps = run(controller, 0.0, 2.0, hero=(5.0, 5.0 * math.tan(0.04)))
    assert all(c.yaw_rate == 0.0 for _, c, _ in steps)


# The filter over an occlusion -----------------------------------------------------------------

def test_kalman_filter_rides_through_an_occlusion():
    """A hero crossing at 1 m/s, hidden for 0.6 s: the prediction stays close, the EMA lags."""
    def crossing(t):
        return 6.0, -3.0 + 1.0 * t
    errors = {}
    for kind in ('kalman', 'ema'):
        controller = FollowController(params(filter_type=kind, ego_motion_compensation=False,
                                             forward_max_velocity=0.0, yaw_max_velocity=0.0))
        t = 0.0
        for _ in range(60):  # 3 s of estimates
            t = round(t + DT, 9)
            see(controller, t, *crossing(t))
            controller.update(t)
        states = []
        for _ in range(12):  # 0.6 s hidden (target_timeout is 1 s)
            t = round(t + DT, 9)
            states.append(controller.update(t)[1])
        assert states[0] == State.FOLLOW and states[-1] == State.COAST
        assert State.HOVER not in states
        predicted = controller.filter.position
        errors[kind] = math.dist(predicted, crossing(t))
        # The hero comes back: the same track goes on, no reset.
        t = round(t + DT, 9)
        see(controller, t, *crossing(t))
        assert controller.update(t)[1] == State.FOLLOW
    assert errors['kalman'] < 0.15
    assert errors['ema'] > 0.4


def test_ego_motion_compensation_moves_the_coasting_prediction():
    """The drone flies 1 m/s toward a still hero: during an occlusion the range keeps shrinking."""
    controller = FollowController(params(filter_type='ema', forward_max_acceleration=50.0))
    controller.command = Command(forward=1.0)
    see(controller, 0.0, 8.0, 0.0)
    controller.update(0.0)
    controller.command = Command(forward=1.0)
    controller.filter.predict(0.5, controller.command)
    assert controller.filter.position[0] == pytest.approx(7.5)
    turning = KalmanTarget(params())
    turning.update(5.0, 0.0)
    turning.predict(0.5, Command(yaw_rate=math.pi / 2))  # a 45 degree left turn
    assert turning.position[1] < -3.0  # the hero that was ahead is now on the right


def test_measured_own_motion_from_odom_replaces_the_command():
    """
    A drone that does not fly its commands, a still hero 6 m ahead.

    With fresh odom (speed 0) the filter sees a still hero and the command is pure feedback.
    Without odom, ego-motion compensation trusts the command, and the filter concludes the
    hero moves with the drone. At a feedforward of 1 that pushes the command to its limit;
    capped at feedforward_without_odom (0.5) the command settles at twice the feedback.
    """
    with_odom, without_odom = FollowController(FollowParams()), FollowController(FollowParams())
    uncapped = FollowController(FollowParams(feedforward_without_odom=1.0))
    t = 0.0
    for _ in range(200):
        t = round(t + DT, 9)
        for controller in (with_odom, without_odom, uncapped):
            see(controller, t, 6.0, 0.0)
        with_odom.add_odometry(t, 5.0, 0.0, 0.0, 0.0, t)
        for controller in (with_odom, without_odom, uncapped):
            controller.update(t)
    p = FollowParams()
    expected = p.forward_kp * (6.0 - p.follow_distance - p.forward_dead_band)
    assert with_odom.command.forward == pytest.approx(expected, rel=0.05)
    assert without_odom.command.forward == pytest.approx(2 * expected, rel=0.1)
    assert uncapped.command.forward == pytest.approx(p.forward_max_velocity)


def test_closed_loop_follows_a_walking_hero():
    """A kinematic drone with odometry and a hero walking a circle: distance, bearing close."""
    controller = FollowController(FollowParams())
    drone_x = drone_y = yaw = 0.0
    t = 0.0
    distances, bearings = [], []
    command = controller.command
    for step in range(800):  # 40 s
        t = round(t + DT, 9)
        controller.add_odometry(t, 5.0, command.forward, 0.0, command.yaw_rate, t)
        hero_x, hero_y = 8 + 6 * math.sin(0.15 * t), 6 - 6 * math.cos(0.15 * t)
        dx, dy = hero_x - drone_x, hero_y - drone_y
        forward = math.cos(yaw) * dx + math.sin(yaw) * dy
        left = -math.sin(yaw) * dx + math.cos(yaw) * dy
        if step % 3 == 0:  # a 6.7 Hz camera
            assert see(controller, t, forward, left) is None
        command, _ = controller.update(t)
        yaw += command.yaw_rate * DT
        drone_x += command.forward * math.cos(yaw) * DT
        drone_y += command.forward * math.sin(yaw) * DT
        if step >= 400:
            distances.append(math.hypot(hero_x - drone_x, hero_y - drone_y))
            bearings.append(abs(math.atan2(left, forward)))
    assert 3.3 < min(distances) and max(distances) < 4.7
    assert max(bearings) < 0.15


# Timeouts and the state machine ---------------------------------------------------------------

def test_every_timeout_in_order():
    # Thresholds between steps, so float rounding cannot move a transition by a step.
    p = params(fresh_timeout=0.33, target_timeout=1.02, search_delay=0.5, search_timeout=2.0,
               search_yaw_rate=0.3)
    controller = FollowController(p)
    assert controller.update(0.0)[1] == State.IDLE
    steps = run(controller, 0.0, 1.0, hero=(6.0, -2.0))  # last seen on the right
    last_seen = steps[-1][0]
    steps = run(controller, last_seen, 6.0)
    first = {}
    for t, command, state in steps:
        first.setdefault(state, (round(t - last_seen, 6), command))
    assert list(first) == [State.FOLLOW, State.COAST, State.HOVER, State.SEARCH]
    assert first[State.COAST][0] == pytest.approx(0.35)
    assert first[State.HOVER][0] == pytest.approx(1.05)
    assert first[State.SEARCH][0] == pytest.approx(1.55)
    search = [(t, c) for t, c, s in steps if s == State.SEARCH]
    assert search[-1][0] - search[0][0] == pytest.approx(1.95)
    assert min(c.yaw_rate for _, c in search) == pytest.approx(-0.3)  # toward the right
    assert all(c.forward == 0.0 for _, c in search[10:])
    after = [c for t, c, s in steps if t > search[-1][0]]
    assert {s for t, _, s in steps if t > search[-1][0]} == {State.HOVER}
    assert after[-1].is_zero()


def test_search_turns_left_when_the_hero_left_on_the_left():
    controller = FollowController(params(search_delay=0.0))
    run(controller, 0.0, 1.0, hero=(6.0, 2.0))
    steps = run(controller, 1.0, 2.0)
    assert max(c.yaw_rate for _, c, s in steps if s == State.SEARCH) == pytest.approx(0.3)


def test_no_search_when_its_rate_is_zero():
    controller = FollowController(params(search_yaw_rate=0.0, search_delay=0.0))
    run(controller, 0.0, 1.0, hero=(6.0, 2.0))
    states = {s for _, _, s in run(controller, 1.0, 5.0)}
    assert states == {State.FOLLOW, State.COAST, State.HOVER}


def test_odom_timeout_ends_the_altitude_hold():
    controller = FollowController(params(desired_altitude=10.0, odom_timeout=0.5))
    controller.add_odometry(0.0, 8.0, 0.0, 0.0, 0.0, 0.0)
    assert controller.update(0.0)[0].up == 0.0  # no dt yet
    assert controller.update(DT)[0].up > 0.0
    steps = run(controller, DT, 3.0)
    assert steps[-1][1].up == 0.0


def test_a_hero_seen_again_after_the_deadman_starts_a_new_track():
    controller = FollowController(params())
    run(controller, 0.0, 1.0, hero=(6.0, 2.0))
    run(controller, 1.0, 3.0)
    assert not controller.filter.initialized
    run(controller, 4.0, 0.1, hero=(6.0, -2.0))
    assert controller.state == State.FOLLOW
    assert controller.filter.position == pytest.approx(
        optical_to_body(*body_to_optical(6.0, -2.0, -5.0, 25.0), 25.0)[:2])


def test_a_far_jump_is_not_the_hero_and_is_counted():
    """A trunk 20 m away marked as the hero: rejected, the track coasts on her last position."""
    controller = FollowController(params())
    run(controller, 0.0, 1.0, hero=(6.0, 0.0))
    assert see(controller, 1.05, 20.0, 5.0) is None  # judged when the step applies it
    controller.update(1.05)
    assert controller.rejected == {'implausible_jump': 1}
    assert math.dist(controller.filter.position, (6.0, 0.0)) < 0.2
    assert controller.state == State.FOLLOW  # the last accepted estimate is still fresh


def test_the_gate_widens_while_the_hero_is_not_seen():
    """Lost for 3 s, she may be 2 + 2 * 3 = 8 m from where she was: taken back at 5 m."""
    controller = FollowController(params())
    run(controller, 0.0, 1.0, hero=(6.0, 0.0))
    run(controller, 1.0, 3.0)
    assert controller.state in (State.HOVER, State.SEARCH)
    run(controller, 4.0, 0.1, hero=(10.0, 3.0))
    assert controller.state == State.FOLLOW and not controller.rejected
    # The same jump half a second after the last sighting is too far.
    soon = FollowController(params())
    run(soon, 0.0, 1.0, hero=(6.0, 0.0))
    run(soon, 1.0, 0.5)
    see(soon, 1.55, 10.0, 3.0)
    soon.update(1.55)
    assert soon.rejected == {'implausible_jump': 1}


def test_no_gate_at_radius_zero():
    controller = FollowController(params(gate_radius=0.0))
    run(controller, 0.0, 1.0, hero=(6.0, 0.0))
    run(controller, 1.0, 0.1, hero=(20.0, 5.0))
    assert not controller.rejected


def test_the_gate_moves_with_the_drone():
    """Odom says the drone flew 2 m toward a still hero in 1 s: she is 2 m nearer, not gone."""
    controller = FollowController(FollowParams(gate_radius=0.5, gate_speed=0.0))
    see(controller, 0.0, 6.0, 0.0)
    controller.add_odometry(0.0, 5.0, 2.0, 0.0, 0.0, 0.0)
    controller.update(0.0)
    t = 0.0
    for _ in range(20):
        t = round(t + DT, 9)
        controller.add_odometry(t, 5.0, 2.0, 0.0, 0.0, t)
        controller.update(t)
    see(controller, t + DT, 4.0, 0.0)
    controller.add_odometry(t + DT, 5.0, 2.0, 0.0, 0.0, t + DT)
    controller.update(t + DT)
    assert not controller.rejected


# Bad input ------------------------------------------------------------------------------------

@pytest.mark.parametrize('value', [math.nan, math.inf, -math.inf])
def test_non_finite_estimates_are_rejected_and_counted(value):
    controller = FollowController(params())
    run(controller, 0.0, 0.5, hero=(6.0, 1.0))
    for i in range(3):
        t = 0.5 + (i + 1) * DT
        assert controller.add_target(t, value, 0.5, 5.0, t) == 'non_finite'
        assert controller.add_target(t, 0.1, 0.5, value, t) == 'non_finite'
        command, _ = controller.update(t)
        assert all(map(math.isfinite, (command.forward, command.left, command.up,
                                       command.yaw_rate)))
    assert controller.add_target(value, 0.1, 0.5, 5.0, 1.0) == 'non_finite'
    assert controller.rejected['non_finite'] == 7
    assert controller.add_odometry(1.0, 5.0, value, 0.0, 0.0, 1.0) == 'odom_non_finite'


def test_stale_future_out_of_order_and_behind_estimates_are_rejected():
    controller = FollowController(params(target_timeout=1.0))
    assert see(controller, 10.0, 6.0, 0.0, stamp=8.5) == 'stale'
    assert see(controller, 10.0, 6.0, 0.0, stamp=11.5) == 'future_stamp'
    assert see(controller, 10.0, 6.0, 0.0, stamp=9.9) is None
    assert see(controller, 10.0, 6.0, 0.0, stamp=9.8) == 'out_of_order'
    assert controller.add_target(10.0, 0.0, 0.0, -1.0, 10.0) == 'behind_camera'
    assert controller.rejected == {'stale': 1, 'future_stamp': 1, 'out_of_order': 1,
                                   'behind_camera': 1}
    # Only stale estimates: the controller never leaves IDLE.
    stale = FollowController(params())
    for i in range(20):
        t = 10.0 + i * DT
        see(stale, t, 6.0, 0.0, stamp=t - 2.0)
        assert stale.update(t) == (Command(), State.IDLE)


def test_bearing_only_estimates_drive_yaw_only():
    controller = FollowController(params())
    steps = run(controller, 0.0, 0.0)
    t = 0.0
    for _ in range(20):
        t = round(t + DT, 9)
        assert see(controller, t, 9.0, 3.0, bearing_only=True) is None
        steps.append((t,) + controller.update(t))
    assert all(c.forward == 0.0 for _, c, _ in steps)
    assert controller.command.yaw_rate > 0.0
    # A ranged estimate replaces the unit-vector placeholder at once.
    see(controller, t + DT, 9.0, 3.0)
    controller.update(t + DT)
    assert math.hypot(*controller.filter.position) == pytest.approx(math.hypot(9.0, 3.0))
    # Back to bearing-only: the filter keeps its range, forward speed goes back to zero.
    run(controller, t + DT, 1.0, hero=(9.0, 3.0))
    t += 1.0 + DT
    for _ in range(60):
        t = round(t + DT, 9)
        see(controller, t, 9.0, 3.0, bearing_only=True)
        controller.update(t)
    assert math.hypot(*controller.filter.position) == pytest.approx(math.hypot(9.0, 3.0),
                                                                    rel=0.05)
    assert controller.command.forward == 0.0


# Enable, clock, parameters --------------------------------------------------------------------

def test_disable_zeroes_at_once_and_enable_waits_for_a_new_hero():
    controller = FollowController(params())
    run(controller, 0.0, 2.0, hero=(10.0, 3.0))
    assert not controller.command.is_zero()
    controller.enable(False)
    assert controller.update(2.05) == (Command(), State.DISABLED)
    see(controller, 2.1, 10.0, 3.0)
    assert controller.update(2.1) == (Command(), State.DISABLED)
    controller.enable(True)
    assert controller.update(2.15)[1] == State.IDLE
    see(controller, 2.2, 10.0, 3.0)
    assert controller.update(2.2)[1] == State.FOLLOW


def test_a_clock_that_jumps_back_starts_over():
    controller = FollowController(params())
    run(controller, 100.0, 1.0, hero=(10.0, 3.0))
    command, state = controller.update(5.0)
    assert (command, state) == (Command(), State.IDLE)


def test_parameter_validation_names_the_problem():
    with pytest.raises(ValueError, match='follow_distance = 0.1 is outside'):
        params(follow_distance=0.1)
    with pytest.raises(ValueError, match='filter_type must be one of kalman, ema'):
        params(filter_type='particle')
    with pytest.raises(ValueError, match='must not exceed target_timeout'):
        params(fresh_timeout=2.0, target_timeout=1.0)
    with pytest.raises(ValueError, match='finite number'):
        params(yaw_kp=math.nan)
    with pytest.raises(ValueError, match='true or false'):
        params(ego_motion_compensation=1)
    with pytest.raises(ValueError, match='unknown parameter'):
        params(follow_distanse=4.0)
    with pytest.raises(ValueError):
        FollowController(FollowParams(rate_hz=0.0))


def test_gains_changed_at_run_time_apply_at_once():
    controller = FollowController(params(velocity_feedforward=0.0, forward_max_acceleration=50.0))
    run(controller, 0.0, 1.0, hero=(6.0, 0.0))
    before = controller.command.forward
    controller.set_params(controller.params.updated(forward_kp=1.2))
    run(controller, 1.0, 0.1, hero=(6.0, 0.0))
    assert controller.command.forward == pytest.approx(2 * before)
    controller.set_params(controller.params.updated(filter_type='ema'))
    assert not controller.filter.initialized
    run(controller, 1.1, 0.1, hero=(6.0, 0.0))
    assert controller.state == State.FOLLOW
