"""
One simulated run: world, drone and log advanced together in simulated time. No ROS.

The sim node, the perfect-perception reference and the benchmark all drive this class:
`set_command()` whenever a command arrives, `advance(t)` to move time on, `capture()` for a
camera frame at the current time.
"""

from dataclasses import dataclass, field, replace
import math

from followme_sim import drone as drone_model
from followme_sim.metrics import FlightLog
from followme_sim.scenario import Scenario
from followme_sim.world import CameraModel, hero_position, in_view, World, world_to_optical
import numpy as np


@dataclass(frozen=True)
class SimSettings:
    camera_rate: float = 10.0        # camera frames per simulated second (Hz)
    physics_dt: float = 0.02         # drone integration step (s)
    command_timeout: float = 0.5     # no valid command for this long -> hover (s)
    drone_radius: float = 0.35       # for collisions (m)
    min_hero_pixels: int = 20        # fewer true hero pixels = the hero is hidden
    camera: CameraModel = CameraModel()
    limits: drone_model.DroneLimits = field(default_factory=drone_model.DroneLimits)


@dataclass
class Capture:
    """A camera frame and the truth at its time."""

    t: float
    index: int
    frame: object                # world.Frame
    hero_optical: np.ndarray     # the hero's chest centre in the camera optical frame (m)
    hero_heading: float          # the hero's walking direction in the world (rad)
    in_view: bool
    hero_pixels: int


class Simulation:
    def __init__(self, scenario: Scenario, settings: SimSettings = SimSettings()):
        self.scenario = scenario
        self.settings = settings
        self.world = World(scenario, settings.camera)
        x, y, z, yaw = scenario.drone_start
        self.drone = drone_model.Drone(x, y, z, yaw, settings.limits)
        self.time = 0.0
        self.frames_captured = 0
        self.log = FlightLog()
        self._command = drone_model.HOVER
        self._command_time = -math.inf
        self._touching = None

    @property
    def finished(self):
        return self.time >= self.scenario.duration - 1e-9

    def next_frame_time(self):
        return self.frames_captured / self.settings.camera_rate

    def set_command(self, values):
        """Take a raw (forward, left, up, yaw_rate) command; return the sanitize verdict."""
        command, verdict = drone_model.sanitize(values, self.settings.limits)
        self.log.commands[verdict] += 1
        if command is not None:
            self._command, self._command_time = command, self.time
        return verdict

    def set_camera(self, camera: CameraModel):
        self.settings = replace(self.settings, camera=camera)
        self.world.set_camera(camera)

    def advance(self, until):
        """Step the drone and the people to time `until` (s)."""
        dt_max = self.settings.physics_dt
        while self.time < until - 1e-9:
            dt = min(dt_max, until - self.time)
            command = self._command
            if self.time - self._command_time > self.settings.command_timeout:
                command = drone_model.HOVER
            self.drone.step(command, dt)
            self.time += dt
            self._record_step(command)

    def capture(self, rgb=True, depth=True) -> Capture:
        """Render the camera at the current time and log the truth for this frame."""
        t = self.time
        self.world.set_time(t)
        self.world.set_drone(self.drone.position, self.drone.yaw)
        frame = self.world.render(rgb=rgb, depth=depth)
        hero_world, heading = hero_position(self.scenario, t)
        camera = self.settings.camera
        optical = world_to_optical(hero_world, self.drone.position, self.drone.yaw, camera)
        pixels = int(np.count_nonzero(frame.classes == 2))
        visible = in_view(optical, camera)
        self.log.frames.append([t, visible, pixels, None])
        self.frames_captured += 1
        return Capture(t, self.frames_captured - 1, frame, optical, heading,
                       visible, pixels)

    def mark_seen(self, frame_index, seen):
        """Record whether the loop found the hero in frame `frame_index`."""
        if 0 <= frame_index < len(self.log.frames):
            self.log.frames[frame_index][3] = bool(seen)

    def close(self):
        self.world.close()

    def _record_step(self, command):
        t = self.time
        hx, hy, heading, _, _ = self.scenario.hero.path.state(t)
        d = self.drone
        touching = self.world.collision(d.position, self.settings.drone_radius, t)
        if touching and touching != self._touching:
            self.log.collisions.append((t, touching))
        self._touching = touching
        self.log.steps.append([t, *d.position, d.yaw, *d.acceleration, heading, hx, hy,
                               command.forward, command.left, command.up, command.yaw_rate,
                               1.0 if touching else 0.0])
