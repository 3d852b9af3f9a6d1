"""
The drone: an autopilot in velocity mode, and the guard on what commands it. No ROS.

The autopilot follows a body-frame velocity command (x forward, y left, z up, +yaw left, REP
103) with a first-order response of time constant `tau`, its acceleration bounded, like a
multirotor's velocity controller. Attitude is not modelled: the gimbal keeps the camera
level in roll and at a fixed pitch.
"""

from dataclasses import dataclass
import math

from followme_control.follow import Command
import numpy as np


@dataclass(frozen=True)
class DroneLimits:
    max_speed: float = 5.0          # horizontal command limit (m/s)
    max_climb: float = 2.0          # vertical command limit (m/s)
    max_yaw_rate: float = 1.5       # yaw rate command limit (rad/s)
    max_accel: float = 4.0          # horizontal acceleration limit (m/s^2)
    max_climb_accel: float = 2.0    # vertical acceleration limit (m/s^2)
    max_yaw_accel: float = 4.0      # yaw acceleration limit (rad/s^2)
    tau: float = 0.35               # velocity response time constant (s)
    yaw_tau: float = 0.2            # yaw rate response time constant (s)
    reject_above: float = 1000.0    # |value| beyond this is garbage, not a fast command


HOVER = Command()


def sanitize(values, limits: DroneLimits):
    """
    Check a raw command (forward, left, up, yaw_rate).

    Returns (Command or None, verdict) with verdict 'ok', 'clamped' (beyond the limits:
    scaled back onto them, direction kept) or 'rejected' (NaN, inf or absurdly large: the
    caller keeps the previous command, which times out to a hover).
    """
    values = [float(v) for v in values]
    if not all(math.isfinite(v) and abs(v) <= limits.reject_above for v in values):
        return None, 'rejected'
    forward, left, up, yaw_rate = values
    verdict = 'ok'
    speed = math.hypot(forward, left)
    if speed > limits.max_speed:
        forward, left = forward * limits.max_speed / speed, left * limits.max_speed / speed
        verdict = 'clamped'
    if abs(up) > limits.max_climb:
        up, verdict = math.copysign(limits.max_climb, up), 'clamped'
    if abs(yaw_rate) > limits.max_yaw_rate:
        yaw_rate, verdict = math.copysign(limits.max_yaw_rate, yaw_rate), 'clamped'
    return Command(forward, left, up, yaw_rate), verdict


class Drone:
    """Position, yaw and their rates in the world frame, stepped with a command."""

    def __init__(self, x, y, z, yaw, limits: DroneLimits = DroneLimits()):
        self.limits = limits
        self.position = np.array([x, y, z], dtype=float)
        self.yaw = float(yaw)
        self.velocity = np.zeros(3)      # world frame (m/s)
        self.yaw_rate = 0.0
        self.acceleration = np.zeros(3)  # of the last step, for jerk

    def step(self, command: Command, dt):
        """Advance dt seconds toward the commanded velocity (the command is assumed sane)."""
        lim = self.limits
        c, s = math.cos(self.yaw), math.sin(self.yaw)
        target = np.array([c * command.forward - s * command.left,
                           s * command.forward + c * command.left, command.up])
        # First order: accelerate by the error over tau, bounded (and never past the target).
        accel = (target - self.velocity) / max(lim.tau, dt)
        horizontal = math.hypot(accel[0], accel[1])
        if horizontal > lim.max_accel:
            accel[:2] *= lim.max_accel / horizontal
        accel[2] = float(np.clip(accel[2], -lim.max_climb_accel, lim.max_climb_accel))
        yaw_accel = float(np.clip((command.yaw_rate - self.yaw_rate) / max(lim.yaw_tau, dt),
                                  -lim.max_yaw_accel, lim.max_yaw_accel))
        previous = self.velocity.copy()
        self.velocity = self.velocity + accel * dt
        self.position = self.position + 0.5 * (previous + self.velocity) * dt
        self.acceleration = accel
        yaw_rate = self.yaw_rate + yaw_accel * dt
        self.yaw = _wrap(self.yaw + 0.5 * (self.yaw_rate + yaw_rate) * dt)
        self.yaw_rate = yaw_rate

    def body_velocity(self):
        """(forward, left, up) velocity in the body frame."""
        c, s = math.cos(self.yaw), math.sin(self.yaw)
        vx, vy, vz = self.velocity
        return c * vx + s * vy, -s * vx + c * vy, vz


def _wrap(angle):
    return (angle + math.pi) % (2 * math.pi) - math.pi
