"""
The perfect-perception reference: our follow controller fed with the true hero. No ROS.

It runs the same scenario and seed as the closed loop, with the control node's own core
(followme_control.follow.FollowController) at its own rate, but every frame in which the
hero is visible in the true mask hands it her true position, with no latency. What is left
of the follow error is the controller's and the drone's; the closed loop's figures divided
by these show what perception costs.
"""

from dataclasses import fields

from followme_control.follow import FollowController, FollowParams
from followme_sim.metrics import compute
from followme_sim.simulation import Simulation
import yaml


def follow_params_from_file(path):
    """
    Read the control_node section of a ROS parameter file into FollowParams.

    The reference then flies with the same tuning as the control node of the closed loop.
    """
    with open(path) as stream:
        document = yaml.safe_load(stream) or {}
    values = {}
    for key, section in document.items():
        if str(key).split('/')[-1] == 'control_node' and isinstance(section, dict):
            values.update(section.get('ros__parameters') or {})
    known = {spec.name for spec in fields(FollowParams)}
    return FollowParams().updated(**{k: v for k, v in values.items() if k in known})


def run(scenario, settings, params: FollowParams, follow_distance, progress=None):
    """
    Fly `scenario` with perfect perception; return (metrics, log).

    follow_distance: the distance the metrics score against (m).
    progress: optional callable(sim_seconds_done) for a progress bar.
    """
    sim = Simulation(scenario, settings)
    controller = FollowController(params)
    control_period = 1.0 / params.rate_hz
    next_control = 0.0
    try:
        while True:
            frame_time = sim.next_frame_time()
            if frame_time > scenario.duration + 1e-9:
                break
            while next_control <= frame_time + 1e-9:
                sim.advance(next_control)
                command, _ = controller.update(next_control)
                sim.set_command((command.forward, command.left, command.up, command.yaw_rate))
                next_control += control_period
            sim.advance(frame_time)
            # The reference needs only the true mask: no colour or depth render.
            capture = sim.capture(rgb=False, depth=False)
            # The odometry sim_node publishes with each frame (the feedforward needs it).
            forward, left, _ = sim.drone.body_velocity()
            controller.add_odometry(capture.t, float(sim.drone.position[2]), forward, left,
                                    sim.drone.yaw_rate, now=capture.t)
            visible = capture.hero_pixels >= settings.min_hero_pixels
            if visible:
                x, y, z = capture.hero_optical
                controller.add_target(capture.t, x, y, z, now=capture.t)
            sim.mark_seen(capture.index, visible)
            if progress is not None:
                progress(capture.t)
        metrics = compute(sim.log, follow_distance, settings.min_hero_pixels)
        return metrics, sim.log
    finally:
        sim.close()
