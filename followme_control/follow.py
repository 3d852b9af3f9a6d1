"""
Follow control core: hero estimates in, safe body-frame velocity commands out. No ROS.

Frames (REP 103): hero positions arrive in the camera optical frame (z forward, x right,
y down) of a camera pitched down by `camera_pitch_deg`; commands are in the body frame
(x forward, y left, z up, +yaw turns left). Times are float seconds on one clock (the node's
clock, simulated or not); staleness is always judged from the estimate's stamp.

State machine, by the age of the newest accepted hero estimate:

    DISABLED  the enable service said no: zero velocity at once
    IDLE      enabled, no hero seen since start or since the last enable
    FOLLOW    age <= fresh_timeout: the filtered estimate drives yaw and forward speed
    COAST     fresh_timeout < age <= target_timeout: the filter's prediction drives them
    HOVER     age > target_timeout (the deadman): decelerate to zero within the limits
    SEARCH    lost for search_delay more: yaw at search_yaw_rate toward the side the hero was
              last seen on, for at most search_timeout, then HOVER until the hero is back
"""

from dataclasses import dataclass, field, fields, replace
import enum
import math
from typing import NamedTuple

import numpy as np

FILTER_TYPES = ('kalman', 'ema')
AXES = ('forward', 'yaw', 'vertical')

# Initial spread of the hero's speed when the Kalman filter starts: a walking or jogging person.
_INITIAL_SPEED_STD = 2.0  # m/s


def _param(default, low=None, high=None, description='', choices=None):
    return field(default=default, metadata={
        'range': (low, high), 'description': description, 'choices': choices})


@dataclass(frozen=True)
class FollowParams:
    """Every tuning value of the follow controller; the node declares each as a parameter."""

    # Timer rate of the node; the controller also bounds one step's dt by two periods.
    rate_hz: float = _param(20.0, 1.0, 200.0, 'command rate (Hz): cmd_vel is published from a '
                                              'timer at this rate, never from a callback')
    # Geometry of the camera on the drone.
    camera_pitch_deg: float = _param(25.0, -90.0, 90.0,
                                     'camera (gimbal) pitch below the horizon (deg, + = down)')
    camera_offset_x: float = _param(0.0, -5.0, 5.0, 'camera position in the body frame, '
                                                    'forward (m)')
    camera_offset_y: float = _param(0.0, -5.0, 5.0, 'camera position in the body frame, left (m)')
    camera_offset_z: float = _param(0.0, -5.0, 5.0, 'camera position in the body frame, up (m)')
    # What to hold.
    follow_distance: float = _param(4.0, 0.5, 50.0,
                                    'desired horizontal distance to the hero (m)')
    desired_altitude: float = _param(
        0.0, 0.0, 500.0, 'altitude to hold from odom (m, odom frame z); 0 = no altitude hold '
                         '(vertical speed 0)')
    # Target filter.
    filter_type: str = _param('kalman', description='target filter: kalman (constant '
                                                    'velocity) or ema (exponential average)',
                              choices=FILTER_TYPES)
    ema_alpha: float = _param(0.5, 0.01, 1.0, 'ema filter: weight of a new estimate (1 = '
                                              'no smoothing)')
    kalman_process_noise: float = _param(
        1.0, 1e-4, 100.0, 'kalman filter: hero acceleration noise density (m^2/s^3); higher '
                          'follows turns faster, lower smooths more')
    kalman_measurement_noise: float = _param(
        0.3, 1e-3, 10.0, 'kalman filter: standard deviation of one position estimate (m)')
    # Gate: an estimate farther from the hero's last position than she can have walked is
    # something else the network took for her (a tree trunk, a stranger; docs/control.md).
    gate_radius: float = _param(
        2.0, 0.0, 100.0, 'a ranged estimate farther than this (m), plus gate_speed times the '
        'time since the last accepted one, from that last position (kept in step with the '
        'drone as it moves) is not the hero: rejected, counted as implausible_jump; 0 = no gate')
    gate_speed: float = _param(
        2.0, 0.0, 20.0, 'how fast the gate widens while the hero is not seen (m/s): about her '
                        'top speed, so she is taken back wherever she can have walked')
    ego_motion_compensation: bool = _param(
        True, description="move the filtered hero by the drone's own motion between estimates "
                          '(from odom when fresh, else the command sent), so a coasting '
                          'prediction does not drift')
    velocity_feedforward: float = _param(
        1.0, 0.0, 1.5,
        "share of the hero's own velocity (kalman filter with ego-motion compensation) added "
        'to the forward speed and yaw rate, so a walking hero is followed without lag; 0 = '
        'pure feedback. Applies while odom is fresh; see feedforward_without_odom')
    feedforward_without_odom: float = _param(
        0.5, 0.0, 1.0,
        'cap on velocity_feedforward while odom is missing or stale: ego-motion compensation '
        'then trusts the commands sent, and a gain near 1 would chase its own command (the '
        'forward speed grows by 1 / (1 - gain) when the drone does not fly it)')
    # Timeouts (s), all judged from the estimate's header stamp.
    fresh_timeout: float = _param(0.3, 0.01, 10.0, 'estimates younger than this are fresh '
                                                   '(FOLLOW); older ones coast (s)')
    target_timeout: float = _param(1.0, 0.05, 30.0,
                                   'deadman: newest estimate older than this -> decelerate to '
                                   'zero (s); estimates arriving older are rejected as stale')
    search_delay: float = _param(1.0, 0.0, 60.0, 'time after the deadman before searching (s)')
    search_timeout: float = _param(8.0, 0.0, 600.0,
                                   'longest search before hovering (s); 0 = never search')
    search_yaw_rate: float = _param(0.3, 0.0, 3.0, 'search yaw rate toward the side the hero '
                                                   'was last seen on (rad/s); 0 = never search')
    odom_timeout: float = _param(0.5, 0.01, 10.0,
                                 'altitude hold needs odom younger than this (s)')
    # Per-axis PID gains and limits (tuning notes in docs/control.md).
    # Forward speed from the horizontal distance error (distance - follow_distance).
    forward_kp: float = _param(
        0.6, 0.0, 20.0, 'forward: proportional gain (m/s per m of error)')
    forward_ki: float = _param(
        0.0, 0.0, 20.0, 'forward: integral gain (m/s per m*s of error)')
    forward_kd: float = _param(
        0.0, 0.0, 20.0, 'forward: derivative gain (m/s per m/s of error rate)')
    forward_integral_limit: float = _param(
        2.0, 0.0, 100.0, 'forward: anti-windup bound on the integral (m*s)')
    forward_dead_band: float = _param(
        0.3, 0.0, 10.0,
        'forward: errors within this count as zero (m); larger ones are reduced by it, so '
        'the command has no jump at the edge')
    forward_max_velocity: float = _param(
        3.0, 0.0, 20.0, 'forward: command limit, both directions (m/s)')
    forward_max_acceleration: float = _param(
        2.0, 0.01, 50.0,
        'forward: how fast the command may change, in every state but DISABLED (m/s per s)')
    # Yaw rate from the bearing to the hero (+ = hero on the left).
    yaw_kp: float = _param(
        1.2, 0.0, 20.0, 'yaw: proportional gain (rad/s per rad of error)')
    yaw_ki: float = _param(
        0.0, 0.0, 20.0, 'yaw: integral gain (rad/s per rad*s of error)')
    yaw_kd: float = _param(
        0.0, 0.0, 20.0, 'yaw: derivative gain (rad/s per rad/s of error rate)')
    yaw_integral_limit: float = _param(
        0.5, 0.0, 100.0, 'yaw: anti-windup bound on the integral (rad*s)')
    yaw_dead_band: float = _param(
        0.03, 0.0, 10.0,
        'yaw: errors within this count as zero (rad); larger ones are reduced by it, so '
        'the command has no jump at the edge')
    yaw_max_velocity: float = _param(
        1.0, 0.0, 20.0, 'yaw: command limit, both directions (rad/s)')
    yaw_max_acceleration: float = _param(
        2.0, 0.01, 50.0,
        'yaw: how fast the command may change, in every state but DISABLED (rad/s per s)')
    # Vertical speed from the altitude error (desired_altitude - odom z).
    vertical_kp: float = _param(
        0.8, 0.0, 20.0, 'vertical: proportional gain (m/s per m of error)')
    vertical_ki: float = _param(
        0.0, 0.0, 20.0, 'vertical: integral gain (m/s per m*s of error)')
    vertical_kd: float = _param(
        0.0, 0.0, 20.0, 'vertical: derivative gain (m/s per m/s of error rate)')
    vertical_integral_limit: float = _param(
        1.0, 0.0, 100.0, 'vertical: anti-windup bound on the integral (m*s)')
    vertical_dead_band: float = _param(
        0.1, 0.0, 10.0,
        'vertical: errors within this count as zero (m); larger ones are reduced by it, so '
        'the command has no jump at the edge')
    vertical_max_velocity: float = _param(
        1.0, 0.0, 20.0, 'vertical: command limit, both directions (m/s)')
    vertical_max_acceleration: float = _param(
        1.0, 0.01, 50.0,
        'vertical: how fast the command may change, in every state but DISABLED (m/s per s)')

    def validate(self):
        """Return a list of problems (empty when the set is usable)."""
        problems = []
        for spec in fields(self):
            value = getattr(self, spec.name)
            low, high = spec.metadata['range']
            choices = spec.metadata['choices']
            if isinstance(spec.default, bool):
                if not isinstance(value, bool):
                    problems.append(f'{spec.name} must be true or false, not {value!r}')
            elif isinstance(spec.default, str):
                if value not in choices:
                    problems.append(f"{spec.name} must be one of {', '.join(choices)}, "
                                    f'not {value!r}')
            elif (not isinstance(value, (int, float)) or isinstance(value, bool)
                  or not math.isfinite(value)):
                problems.append(f'{spec.name} must be a finite number, not {value!r}')
            elif not low <= value <= high:
                problems.append(f'{spec.name} = {value} is outside [{low}, {high}]')
        if not problems and self.fresh_timeout > self.target_timeout:
            problems.append(f'fresh_timeout ({self.fresh_timeout} s) must not exceed '
                            f'target_timeout ({self.target_timeout} s)')
        return problems

    def updated(self, **changes):
        """Return a copy with some values changed; raise ValueError naming every problem."""
        unknown = sorted(set(changes) - {spec.name for spec in fields(self)})
        if unknown:
            raise ValueError(f"unknown parameter(s): {', '.join(unknown)}")
        candidate = replace(self, **changes)
        problems = candidate.validate()
        if problems:
            raise ValueError('; '.join(problems))
        return candidate

    def axis(self, axis):
        return AxisTuning(*(getattr(self, f'{axis}_{knob}') for knob in AxisTuning._fields))


class AxisTuning(NamedTuple):
    """One axis' knobs, read from FollowParams at each step so runtime changes apply at once."""

    kp: float
    ki: float
    kd: float
    integral_limit: float
    dead_band: float
    max_velocity: float
    max_acceleration: float


class State(str, enum.Enum):
    DISABLED = 'DISABLED'
    IDLE = 'IDLE'
    FOLLOW = 'FOLLOW'
    COAST = 'COAST'
    SEARCH = 'SEARCH'
    HOVER = 'HOVER'


@dataclass(frozen=True)
class Command:
    """Body-frame velocity command: m/s forward, left, up and rad/s yaw (+ left)."""

    forward: float = 0.0
    left: float = 0.0
    up: float = 0.0
    yaw_rate: float = 0.0

    def is_zero(self):
        return not (self.forward or self.left or self.up or self.yaw_rate)


ZERO = Command()


def optical_to_body(x, y, z, pitch_deg, offset=(0.0, 0.0, 0.0)):
    """Convert a point from the pitched camera's optical frame to the body frame (f, l, u)."""
    pitch = math.radians(pitch_deg)
    cos_p, sin_p = math.cos(pitch), math.sin(pitch)
    forward = z * cos_p - y * sin_p
    left = -x
    up = -y * cos_p - z * sin_p
    return forward + offset[0], left + offset[1], up + offset[2]


def body_to_optical(forward, left, up, pitch_deg):
    """Convert a body-frame offset from the camera to the optical frame (no offset)."""
    pitch = math.radians(pitch_deg)
    cos_p, sin_p = math.cos(pitch), math.sin(pitch)
    return -left, -forward * sin_p - up * cos_p, forward * cos_p - up * sin_p


def apply_dead_band(error, band):
    """Zero inside the band; outside it, the error less the band (continuous at the edge)."""
    return math.copysign(max(abs(error) - band, 0.0), error)


def clamp(value, limit):
    return min(max(value, -limit), limit)


def slew(previous, target, max_rate, dt):
    """Move from previous toward target by at most max_rate * dt."""
    step = max_rate * dt
    return previous + min(max(target - previous, -step), step)


def _rotation(angle):
    cos_a, sin_a = math.cos(angle), math.sin(angle)
    return np.array([[cos_a, -sin_a], [sin_a, cos_a]])


def _ego_motion(command, dt):
    """How the drone's own motion over dt moves a fixed point in its body frame."""
    translation = -dt * np.array([command.forward, command.left])
    return translation, _rotation(-command.yaw_rate * dt)


def _still_point(point, command, dt):
    """Move a fixed point's body-frame position by the drone's own motion over dt."""
    translation, rotation = _ego_motion(command, dt)
    return rotation @ (point + translation)


class KalmanTarget:
    """
    Constant-velocity Kalman filter of the hero's horizontal position in the body frame.

    State [forward, left, v_forward, v_left]. With ego-motion compensation the velocity is the
    hero's own (over ground, in body axes); without it, the velocity relative to the drone.
    """

    def __init__(self, params):
        self.params = params
        self.reset()

    def reset(self):
        self.x = None
        self.cov = None

    @property
    def initialized(self):
        return self.x is not None

    @property
    def position(self):
        return float(self.x[0]), float(self.x[1])

    @property
    def velocity(self):
        return float(self.x[2]), float(self.x[3])

    def predict(self, dt, command=None):
        if self.x is None or dt <= 0.0:
            return
        q = self.params.kalman_process_noise
        transition = np.eye(4)
        transition[0, 2] = transition[1, 3] = dt
        noise = np.zeros((4, 4))
        for pos, vel in ((0, 2), (1, 3)):
            noise[pos, pos] = q * dt ** 3 / 3.0
            noise[pos, vel] = noise[vel, pos] = q * dt ** 2 / 2.0
            noise[vel, vel] = q * dt
        self.x = transition @ self.x
        self.cov = transition @ self.cov @ transition.T + noise
        if command is not None:
            translation, rotation = _ego_motion(command, dt)
            self.x[:2] += translation
            turn = np.zeros((4, 4))
            turn[:2, :2] = turn[2:, 2:] = rotation
            self.x = turn @ self.x
            self.cov = turn @ self.cov @ turn.T

    def update(self, forward, left):
        sigma2 = self.params.kalman_measurement_noise ** 2
        measured = np.array([forward, left])
        if self.x is None:
            self.x = np.array([forward, left, 0.0, 0.0])
            self.cov = np.diag([sigma2, sigma2, _INITIAL_SPEED_STD ** 2, _INITIAL_SPEED_STD ** 2])
            return
        observe = np.zeros((2, 4))
        observe[0, 0] = observe[1, 1] = 1.0
        innovation = measured - observe @ self.x
        innovation_cov = observe @ self.cov @ observe.T + sigma2 * np.eye(2)
        gain = self.cov @ observe.T @ np.linalg.inv(innovation_cov)
        self.x = self.x + gain @ innovation
        self.cov = (np.eye(4) - gain @ observe) @ self.cov


class EmaTarget:
    """
    Exponential moving average of the hero's horizontal position in the body frame.

    Between estimates it holds the position (moved by the drone's own motion when ego-motion
    compensation is on): no velocity, so it coasts less far than the Kalman filter.
    """

    def __init__(self, params):
        self.params = params
        self.reset()

    def reset(self):
        self.x = None

    @property
    def initialized(self):
        return self.x is not None

    @property
    def position(self):
        return float(self.x[0]), float(self.x[1])

    @property
    def velocity(self):
        return 0.0, 0.0

    def predict(self, dt, command=None):
        if self.x is None or dt <= 0.0 or command is None:
            return
        self.x = _still_point(self.x, command, dt)

    def update(self, forward, left):
        measured = np.array([forward, left])
        if self.x is None:
            self.x = measured
        else:
            alpha = self.params.ema_alpha
            self.x = alpha * measured + (1.0 - alpha) * self.x


def make_filter(params):
    return KalmanTarget(params) if params.filter_type == 'kalman' else EmaTarget(params)


class Pid:
    """PID on an error, with the dead band and a clamped integral (anti-windup)."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.integral = 0.0
        self.previous_error = None

    def step(self, error, dt, tuning):
        error = apply_dead_band(error, tuning.dead_band)
        derivative = 0.0
        if dt > 0.0:
            self.integral = clamp(self.integral + error * dt, tuning.integral_limit)
            if self.previous_error is not None:
                derivative = (error - self.previous_error) / dt
        self.previous_error = error
        return tuning.kp * error + tuning.ki * self.integral + tuning.kd * derivative


@dataclass
class _Estimate:
    stamp: float
    forward: float
    left: float
    bearing_only: bool


class FollowController:
    """
    The follow law, its filter, limits, state machine and counters of rejected input.

    Feed it with add_target() / add_odometry() as they arrive and call update(now) at a
    fixed rate; update() is the only place commands come from. Not thread-safe: the node
    holds a lock around every call.
    """

    def __init__(self, params=None):
        self.params = params or FollowParams()
        problems = self.params.validate()
        if problems:
            raise ValueError('; '.join(problems))
        self.rejected = {}
        self.enabled = True
        self.filter = make_filter(self.params)
        self.pids = {axis: Pid() for axis in AXES}
        self.command = ZERO
        self.state = State.IDLE
        self._reset_target()
        self._last_now = None
        self._odometry = None  # the newest Odometry: (stamp, altitude, Command of own motion)
        self.non_finite_outputs = 0

    # Inputs ---------------------------------------------------------------------------------

    def set_params(self, params):
        """Apply a validated parameter set; a new filter type starts a fresh filter."""
        filter_changed = params.filter_type != self.params.filter_type
        self.params = params
        if filter_changed:
            self.filter = make_filter(params)
        else:
            self.filter.params = params

    def enable(self, enabled):
        """Disabled: zero at once. Enabled again: forget the old hero and wait for a new one."""
        if enabled and not self.enabled:
            self._reset_target()
        self.enabled = bool(enabled)

    def add_target(self, stamp, x, y, z, now, bearing_only=False):
        """
        Queue a hero position (camera optical frame, m) stamped `stamp`.

        Returns None when accepted, else the reason it was rejected (also counted).
        bearing_only: the range is unreliable, so the estimate turns the drone but does not
        move it forward or back.
        """
        if not all(map(math.isfinite, (stamp, x, y, z))):
            return self._reject('non_finite')
        if z <= 0.0:
            return self._reject('behind_camera')
        reason = self._check_stamp(stamp, now, self.params.target_timeout, self._newest_stamp())
        if reason:
            return self._reject(reason)
        p = self.params
        # A bearing-only position is a direction (a unit vector), so no camera offset.
        offset = (0.0, 0.0, 0.0) if bearing_only else (
            p.camera_offset_x, p.camera_offset_y, p.camera_offset_z)
        forward, left, _ = optical_to_body(x, y, z, p.camera_pitch_deg, offset)
        if forward <= 0.0:
            return self._reject('behind_drone')
        self._pending = _Estimate(stamp, forward, left, bool(bearing_only))
        return None

    def add_odometry(self, stamp, altitude, forward, left, yaw_rate, now):
        """
        Record the drone's altitude (m) and body-frame velocity (m/s, rad/s) from odometry.

        Fresh odometry holds the altitude and, being measured, replaces the command as the
        drone's own motion in ego-motion compensation. Returns None or the rejection reason.
        """
        if not all(map(math.isfinite, (stamp, altitude, forward, left, yaw_rate))):
            return self._reject('odom_non_finite')
        newest = self._odometry[0] if self._odometry else None
        reason = self._check_stamp(stamp, now, self.params.odom_timeout, newest)
        if reason:
            return self._reject('odom_' + reason)
        self._odometry = (stamp, altitude, Command(forward=forward, left=left,
                                                   yaw_rate=yaw_rate))
        return None

    # The control step -----------------------------------------------------------------------

    def update(self, now):
        """One control step at time `now` (s). Returns (Command, State)."""
        p = self.params
        dt = 0.0
        if self._last_now is not None:
            dt = now - self._last_now
            if dt < 0.0:  # the clock went back (a simulator restarted): start over
                self._reset_target()
                self._odometry = None
                self.command = ZERO
                dt = 0.0
        self._last_now = now
        dt = min(dt, 2.0 / p.rate_hz)

        if not self.enabled:
            self.state = State.DISABLED
            self.command = ZERO
            for pid in self.pids.values():
                pid.reset()
            return self.command, self.state

        own_motion = None
        if p.ego_motion_compensation:
            own_motion = self._odometry[2] if self._odometry_fresh(now) else self.command
        self.filter.predict(dt, own_motion)
        if self._anchor is not None and own_motion is not None and dt > 0.0:
            self._anchor = _still_point(self._anchor, own_motion, dt)
        self._apply_pending()
        self.state = self._next_state(now)
        target = self._target_command(now, dt)
        self.command = self._limit(target, dt)
        return self.command, self.state

    def status(self, now):
        """Return a snapshot for diagnostics."""
        p = self.params
        last_seen = self._last_stamp
        return {
            'state': self.state.value,
            'enabled': self.enabled,
            'target_age': None if last_seen is None else now - last_seen,
            'target': self.filter.position if self.filter.initialized else None,
            'range_valid': self._range_valid,
            'altitude_hold': p.desired_altitude > 0.0 and self._odometry_fresh(now),
            'odometry_fresh': self._odometry_fresh(now),
            'command': self.command,
            'rejected': dict(self.rejected),
            'non_finite_outputs': self.non_finite_outputs,
        }

    # Internals ------------------------------------------------------------------------------

    def _reject(self, reason):
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        return reason

    @staticmethod
    def _check_stamp(stamp, now, timeout, newest):
        if now - stamp > timeout:
            return 'stale'
        if stamp - now > timeout:
            return 'future_stamp'
        if newest is not None and stamp < newest:
            return 'out_of_order'
        return None

    def _newest_stamp(self):
        if self._pending is not None:
            return self._pending.stamp
        return self._last_stamp

    def _reset_target(self):
        self.filter.reset()
        for pid in self.pids.values():
            pid.reset()
        self._pending = None
        self._last_stamp = None
        self._range_valid = False      # the newest estimate had a range (not bearing-only)
        self._filter_ranged = False    # the filter has seen at least one ranged estimate
        self._last_bearing = 0.0
        # The last accepted ranged position and its stamp: the gate's centre. It outlives the
        # deadman, so a hero lost for a moment is not traded for whatever is seen next.
        self._anchor = None
        self._anchor_stamp = None

    def _implausible(self, estimate):
        p = self.params
        if p.gate_radius <= 0.0 or self._anchor is None or estimate.bearing_only:
            return False
        allowed = p.gate_radius + p.gate_speed * max(0.0, estimate.stamp - self._anchor_stamp)
        jump = math.hypot(estimate.forward - self._anchor[0], estimate.left - self._anchor[1])
        return jump > allowed

    def _apply_pending(self):
        estimate, self._pending = self._pending, None
        if estimate is None:
            return
        if self._implausible(estimate):
            self._reject('implausible_jump')
            return
        if not estimate.bearing_only:
            self._anchor = np.array([estimate.forward, estimate.left])
            self._anchor_stamp = estimate.stamp
        if self._last_stamp is None or estimate.stamp - self._last_stamp > \
                self.params.target_timeout:
            # A hero seen again after the deadman is a new track: no old velocity, no windup.
            self.filter.reset()
            for axis in ('forward', 'yaw'):
                self.pids[axis].reset()
        elif not estimate.bearing_only and not self._filter_ranged:
            # The first real range after bearing-only estimates: the filter's range was a
            # placeholder (a unit vector), so start from the measured position instead.
            self.filter.reset()
        forward, left = estimate.forward, estimate.left
        if estimate.bearing_only and self.filter.initialized:
            # Keep the filter's range, take the new bearing.
            distance = math.hypot(*self.filter.position)
            bearing = math.atan2(left, forward)
            forward, left = distance * math.cos(bearing), distance * math.sin(bearing)
        if not self.filter.initialized:
            self._filter_ranged = False
        self.filter.update(forward, left)
        self._filter_ranged = self._filter_ranged or not estimate.bearing_only
        self._last_stamp = estimate.stamp
        self._range_valid = not estimate.bearing_only

    def _next_state(self, now):
        p = self.params
        if self._last_stamp is None:
            return State.IDLE
        age = now - self._last_stamp
        if age <= p.fresh_timeout:
            return State.FOLLOW
        if age <= p.target_timeout:
            return State.COAST
        lost_for = age - p.target_timeout
        self.filter.reset()
        if (p.search_yaw_rate > 0.0 and p.search_timeout > 0.0
                and p.search_delay <= lost_for < p.search_delay + p.search_timeout):
            return State.SEARCH
        return State.HOVER

    def _target_command(self, now, dt):
        p = self.params
        forward = yaw_rate = 0.0
        if self.state in (State.FOLLOW, State.COAST) and self.filter.initialized:
            target_forward, target_left = self.filter.position
            bearing = math.atan2(target_left, target_forward)
            self._last_bearing = bearing
            yaw_rate = self.pids['yaw'].step(bearing, dt, p.axis('yaw'))
            if self._range_valid:
                distance = math.hypot(target_forward, target_left)
                forward = self.pids['forward'].step(distance - p.follow_distance, dt,
                                                    p.axis('forward'))
                if p.ego_motion_compensation and p.velocity_feedforward > 0.0:
                    # The hero's own motion as range rate and bearing rate.
                    hero_forward, hero_left = self.filter.velocity
                    gain = p.velocity_feedforward
                    if not self._odometry_fresh(now):
                        gain = min(gain, p.feedforward_without_odom)
                    forward += gain * (hero_forward * target_forward
                                       + hero_left * target_left) / distance
                    yaw_rate += gain * (target_forward * hero_left
                                        - target_left * hero_forward) / distance ** 2
                # Turn toward a hero off to the side before closing in on it.
                forward *= max(0.0, math.cos(bearing))
            else:
                self.pids['forward'].reset()
        else:
            self.pids['forward'].reset()
            self.pids['yaw'].reset()
            if self.state == State.SEARCH:
                yaw_rate = math.copysign(p.search_yaw_rate, self._last_bearing)
        up = 0.0
        if p.desired_altitude > 0.0 and self._odometry_fresh(now):
            up = self.pids['vertical'].step(p.desired_altitude - self._odometry[1], dt,
                                            p.axis('vertical'))
        else:
            self.pids['vertical'].reset()
        return Command(forward=forward, left=0.0, up=up, yaw_rate=yaw_rate)

    def _odometry_fresh(self, now):
        return (self._odometry is not None
                and now - self._odometry[0] <= self.params.odom_timeout)

    def _limit(self, target, dt):
        """Saturate each axis, then bound its change by the acceleration limit."""
        p = self.params
        values = []
        for axis, previous, wanted in (('forward', self.command.forward, target.forward),
                                       ('yaw', self.command.yaw_rate, target.yaw_rate),
                                       ('vertical', self.command.up, target.up)):
            tuning = p.axis(axis)
            wanted = clamp(wanted, tuning.max_velocity)
            value = slew(previous, wanted, tuning.max_acceleration, dt)
            if not math.isfinite(value):  # should never happen; never let it out if it does
                self.non_finite_outputs += 1
                value = 0.0
            values.append(value)
        forward, yaw_rate, up = values
        return Command(forward=forward, left=0.0, up=up, yaw_rate=yaw_rate)
