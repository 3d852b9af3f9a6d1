"""
sim_node: the embedded MuJoCo simulator as a ROS 2 node (a thin shell over Simulation).

Publishes, stamped in simulated time: /clock, image (rgb8), depth (32FC1 m), camera_info,
odom (nav_msgs/Odometry), true_hero_pose (PoseStamped, camera optical frame), true_mask
(mono8 class ids) and /diagnostics. Subscribes cmd_vel (Twist, body frame), and, to keep in
step with the loop and to score it, hero_detection (the perception summary) and mask.

A scenario is a finite job: the launch-free runner waits on `done`, shows `progress()` and
calls `write_outputs(folder)` (video, plot, summary JSON, with the perfect-perception
reference next to our loop).
"""

from collections import Counter
from dataclasses import replace
import math
from pathlib import Path
import sys
import threading
import time

from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from followme_common import node_cli, paths
from followme_common.image_msgs import fill_image, image_to_array, ImageConversionError
from followme_common.memory import keep_large_buffers
from followme_common.node_params import float_param as _float, int_param as _int
from followme_perception.detection import HeroDetection
from followme_sim import drone as drone_model
from followme_sim import metrics, reference, report, scenario as scenarios
from followme_sim.lockstep import Lockstep
from followme_sim.simulation import SimSettings, Simulation
from followme_sim.world import CameraModel, yaw_matrix
from geometry_msgs.msg import PoseStamped, Twist
from nav_msgs.msg import Odometry
import numpy as np
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
import rclpy
from rclpy.clock import Clock, ClockType
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from rosgraph_msgs.msg import Clock as ClockMsg
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Float64MultiArray

RELIABILITY = {'reliable': ReliabilityPolicy.RELIABLE,
               'best_effort': ReliabilityPolicy.BEST_EFFORT}
# Changing these needs a new world: they are read once at start-up.
READ_ONLY = ('scenario', 'seed', 'image_width', 'image_height', 'camera_rate',
             'real_time_factor', 'camera_qos_reliability', 'camera_qos_depth', 'output_folder',
             'diagnostics_period')


def _text(description):
    return ParameterDescriptor(description=description)


PARAMETERS = {
    'scenario': ('city_walk', _text(
        f"shipped scenario name ({', '.join(scenarios.available())}) or a .yaml path")),
    'seed': (0, _int('seed for the scenario (crowd, scenery, colours, sky, light)', 0,
                     2**31 - 1)),
    'camera_rate': (10.0, _float('camera frames per simulated second (Hz)', 5.0, 30.0)),
    'image_width': (256, _int('image width (px)', 32, 1024)),
    'image_height': (256, _int('image height (px)', 32, 1024)),
    'hfov_deg': (53.0, _float('horizontal field of view (deg)', 20.0, 120.0)),
    'camera_pitch_deg': (25.0, _float('gimbal pitch below the horizon (deg, + = down)',
                                      -10.0, 90.0)),
    'follow_distance': (4.0, _float(
        'desired horizontal follow distance, for scoring and the reference run (m); keep it '
        "equal to control_node's follow_distance", 0.5, 50.0)),
    'lockstep': (True, _text(
        'after each frame, wait (wall clock) for the perception summary of that frame on '
        'hero_detection before simulating on, so a slow machine slows the simulation instead '
        'of dropping frames')),
    'lockstep_timeout': (1.0, _float(
        "longest wait for a frame's hero_detection or a tick's cmd_vel (wall s); after a "
        'timeout the simulator stops waiting for that input until it arrives again',
        0.01, 30.0)),
    'lockstep_control_rate': (20.0, _float(
        "control_node's rate_hz: in lockstep, the simulator also waits at each of the "
        "controller's ticks in simulated time for one cmd_vel, so commands take effect at the "
        'same simulated time on every run (0 = do not wait for commands)', 0.0, 1000.0)),
    'real_time_factor': (0.0, _float(
        'simulated seconds per wall second at most; 0 = as fast as the loop allows',
        0.0, 100.0)),
    'command_timeout': (0.5, _float('no valid cmd_vel for this long (sim s) -> hover',
                                    0.05, 10.0)),
    'max_speed': (5.0, _float('horizontal speed limit; faster commands are clamped (m/s)',
                              0.1, 30.0)),
    'max_climb': (2.0, _float('vertical speed limit (m/s)', 0.1, 10.0)),
    'max_yaw_rate': (1.5, _float('yaw rate limit (rad/s)', 0.1, 10.0)),
    'max_accel': (4.0, _float('horizontal acceleration limit (m/s^2)', 0.1, 50.0)),
    'response_time': (0.35, _float('velocity response time constant (s)', 0.01, 5.0)),
    'camera_qos_reliability': ('reliable', _text(
        'camera publishers: reliable (also serves best_effort subscribers) or best_effort')),
    'camera_qos_depth': (5, _int('camera publishers: history depth', 1, 100)),
    'camera_frame_id': ('camera_optical', _text('frame of image, depth and true_hero_pose')),
    'run_reference': (True, _text(
        'write_outputs also flies the perfect-perception reference and reports ratios')),
    'control_params_file': ('', _text(
        "parameter file whose control_node section tunes the reference's controller "
        "('' = the package's config/followme.yaml)")),
    'video_max_frames': (600, _int('frames kept for the overlay video (every n-th frame)',
                                   10, 100000)),
    'output_folder': ('', _text(
        'where the console script sim_node writes video, plot and summary when the scenario '
        "ends ('' = nowhere; followme-run passes its own --output)")),
    'diagnostics_period': (1.0, _float('seconds (wall) between /diagnostics reports',
                                       0.1, 60.0)),
}


def to_stamp(t):
    nanoseconds = int(round(t * 1e9))
    return Time(sec=nanoseconds // 1_000_000_000, nanosec=nanoseconds % 1_000_000_000)


class SimNode(Node):
    """Runs one scenario in simulated time and scores the loop that flies it."""

    def __init__(self, **kwargs):
        super().__init__('sim_node', **kwargs)
        keep_large_buffers()  # rendered frames and their messages (followme_common/memory.py)
        self.add_on_set_parameters_callback(self._check_parameters)
        for name, (default, descriptor) in PARAMETERS.items():
            self.declare_parameter(name, default, descriptor)
        self.add_post_set_parameters_callback(self._apply_parameters)
        p = self._param
        try:
            self.scenario = scenarios.load(p('scenario'), p('seed'))
        except scenarios.ScenarioError as err:
            raise SystemExit(f'sim_node: {err}') from err
        camera = CameraModel(p('image_width'), p('image_height'), p('hfov_deg'),
                             p('camera_pitch_deg'))
        self.settings = SimSettings(camera_rate=p('camera_rate'), camera=camera,
                                    command_timeout=p('command_timeout'),
                                    limits=self._limits())
        self.sim = Simulation(self.scenario, self.settings)
        self.done = threading.Event()
        self._counts = Counter()
        self.lockstep = Lockstep(p('lockstep'), p('lockstep_timeout'),
                                 p('lockstep_control_rate'))
        self._wall_start = self._wall_end = None  # the loop's run, wall clock
        self._video = []             # (frame index, rgb, true classes) every `_video_stride`
        self._video_stride = max(1, math.ceil(
            self.scenario.duration * self.settings.camera_rate / p('video_max_frames')))
        self._loop_masks = {}        # frame index -> perception mask, for the video
        self._lock = threading.Lock()

        camera_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=p('camera_qos_depth'),
                                reliability=RELIABILITY[p('camera_qos_reliability')])
        self._pub_clock = self.create_publisher(ClockMsg, '/clock', 10)
        self._pub_image = self.create_publisher(Image, 'image', camera_qos)
        self._pub_depth = self.create_publisher(Image, 'depth', camera_qos)
        self._pub_info = self.create_publisher(CameraInfo, 'camera_info', camera_qos)
        self._pub_mask = self.create_publisher(Image, 'true_mask', camera_qos)
        self._pub_odom = self.create_publisher(Odometry, 'odom', 10)
        self._pub_hero = self.create_publisher(PoseStamped, 'true_hero_pose', 10)
        self._pub_diag = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        self.create_subscription(Twist, 'cmd_vel', self._on_cmd_vel, 10)
        self.create_subscription(Float64MultiArray, 'hero_detection', self._on_detection, 10)
        self.create_subscription(Image, 'mask', self._on_mask, 5)

        # Wall-clock timers: with use_sim_time, a sim-time timer would wait for our own clock.
        wall = Clock(clock_type=ClockType.STEADY_TIME)
        # The simulation advances in executor callbacks: at once when an input the lockstep
        # waits for arrives (a guard condition the cmd_vel and hero_detection callbacks
        # trigger), else on a wall timer (the pace, or a lockstep-timeout check while it
        # waits). Nothing polls at a high rate, and no thread of our own fights the executor
        # for the GIL.
        self._resume = self.create_guard_condition(self._advance)
        self._advance_timer = self.create_timer(self._advance_period(), self._advance,
                                                clock=wall)
        self.create_timer(p('diagnostics_period'), self._publish_diagnostics, clock=wall)
        self.get_logger().info(
            f"scenario '{self.scenario.name}' (seed {self.scenario.seed}): "
            f'{self.scenario.description}; {self.scenario.duration:.0f} s, '
            f'{len(self.scenario.others)} other people, camera '
            f'{camera.width}x{camera.height} at {self.settings.camera_rate:g} Hz, pitch '
            f'{camera.pitch_deg:g} deg')

    # The finite-job protocol of followme_common.runner ---------------------------------------

    def progress(self):
        """Return (simulated seconds done, scenario duration)."""
        return self.sim.time, self.scenario.duration

    def write_outputs(self, folder):
        """Score the run, fly the reference, write video, plot and summary; print the table."""
        folder = Path(folder)
        with self._lock:
            log = self.sim.log
            follow_distance = self._param('follow_distance')
            ours = metrics.compute(log, follow_distance, self.settings.min_hero_pixels)
            video = list(self._video)
            loop_masks = dict(self._loop_masks)
        ref_metrics, ref_log = None, None
        if self._param('run_reference'):
            ref_metrics, ref_log = self._fly_reference()
        ratios = metrics.compare(ours, ref_metrics) if ref_metrics else None
        summary = {
            'scenario': self.scenario.name, 'seed': self.scenario.seed,
            'description': self.scenario.description,
            'camera': {'rate_hz': self.settings.camera_rate,
                       'size': [self.settings.camera.width, self.settings.camera.height],
                       'hfov_deg': self.settings.camera.hfov_deg,
                       'pitch_deg': self.settings.camera.pitch_deg},
            'follow_distance_m': follow_distance,
            'our_loop': ours, 'reference': ref_metrics, 'ratio_to_reference': ratios,
            'loop_saw_detections': any(f[3] is not None for f in log.frames),
            'wall_s': round(self._wall_end - self._wall_start, 2) if self._wall_end else None,
            'lockstep_timeouts': self.lockstep.timeouts,
            'perception_wait_ms_mean': round(1000 * float(np.mean(
                self.lockstep.detection_waits)), 1) if self.lockstep.detection_waits else None,
            # Simulated time from a controller tick to its cmd_vel: 0 in command lockstep.
            'command_delay_sim_ms_max': round(1000 * max(self.lockstep.command_delays), 1)
            if self.lockstep.command_delays else None,
        }
        written = report.write(folder, summary, self.scenario, log, ref_log, video,
                               loop_masks, fps=self.settings.camera_rate / self._video_stride)
        print(f'\nfollow summary: {self.scenario.name} (seed {self.scenario.seed})')
        print(metrics.format_table(ours, ref_metrics, ratios))
        for path in written:
            print(f'wrote {path}')
        return summary

    def _fly_reference(self):
        from tqdm import tqdm
        params_file = self._param('control_params_file') or paths.default_params_file()
        params = reference.follow_params_from_file(params_file)
        with tqdm(total=round(self.scenario.duration, 1), unit='sim s',
                  desc='perfect-perception reference', leave=False) as bar:
            def show(t):
                bar.update(round(t, 1) - bar.n)
            return reference.run(self.scenario, self.settings, params,
                                 self._param('follow_distance'), progress=show)

    def destroy_node(self):
        self.sim.close()  # the renderer's GL context lives on the world's own thread
        super().destroy_node()

    # The simulation loop -----------------------------------------------------------------------

    def _advance(self):
        """Step until the lockstep has to wait for the loop (one step when paced)."""
        if self.done.is_set():
            return
        if self._wall_start is None:
            self._wall_start = time.monotonic()
        with self._lock:
            paced = self._min_step_period() > 0
            while not self.done.is_set() and not self._waiting():
                self._step()
                if paced:
                    break
            period_ns = int(self._advance_period() * 1e9)
        if period_ns != self._advance_timer.timer_period_ns and not self.done.is_set():
            self._advance_timer.timer_period_ns = period_ns

    def _advance_period(self):
        """Wall s between timer calls: the pace, or how often to check the lockstep timeout."""
        return self._min_step_period() or 0.05

    def _min_step_period(self):
        """Wall s per physics step at least: the real-time cap, or a floor when unpaced."""
        rtf = self._param('real_time_factor')
        if rtf > 0:
            return self.settings.physics_dt / rtf
        # In lockstep the loop paces the simulation; without it, 2 ms per 20 ms step (10x
        # real time) leaves a controller on the other end time to act.
        return 0.0 if self.lockstep.paces_simulation() else 0.002

    def _step(self):
        """One physics step, and a camera frame when one is due (call with the lock held)."""
        sim = self.sim
        if sim.frames_captured and sim.finished:
            self._finish()
            return
        frame_time = sim.next_frame_time()
        before = sim.time
        sim.advance(min(sim.time + self.settings.physics_dt, frame_time))
        self._pub_clock.publish(ClockMsg(clock=to_stamp(sim.time)))
        self.lockstep.stepped(before, sim.time, time.monotonic())
        if sim.time >= frame_time - 1e-9:
            self._publish_frame(sim.capture())

    def _waiting(self):
        """Whether the lockstep still waits for the loop (call with the lock held)."""
        waiting, ran_out = self.lockstep.waiting(time.monotonic(), self.sim.time)
        for timeout in ran_out:
            self.get_logger().warn(
                f'no {timeout.topic} for {timeout.what} within lockstep_timeout: simulating on '
                + ('and no longer waiting for it in this run' if timeout.for_good else
                   f'without waiting for {timeout.topic} until it arrives')
                + f' ({timeout.hint})', throttle_duration_sec=10.0)
        return waiting

    def _finish(self):
        self.get_logger().info(f'scenario finished at t = {self.sim.time:.1f} s')
        self._wall_end = time.monotonic()
        self._advance_timer.cancel()
        self.done.set()

    def _publish_frame(self, capture):
        stamp = to_stamp(capture.t)
        frame_id = self._param('camera_frame_id')
        frame = capture.frame
        image = fill_image(Image(), frame.rgb, 'rgb8')
        depth = fill_image(Image(), frame.depth, '32FC1')
        mask = fill_image(Image(), frame.classes, 'mono8')
        for msg in (image, depth, mask):
            msg.header.stamp, msg.header.frame_id = stamp, frame_id
        info = self._camera_info()
        info.header.stamp, info.header.frame_id = stamp, frame_id
        self._pub_info.publish(info)
        self._pub_depth.publish(depth)
        self._pub_mask.publish(mask)
        self._pub_hero.publish(self._hero_pose(capture, stamp, frame_id))
        self._pub_odom.publish(self._odometry(stamp))
        if capture.index % self._video_stride == 0:
            self._video.append((capture.index, frame.rgb, frame.classes))
        self.lockstep.frame_published(capture.index, time.monotonic())
        self._pub_image.publish(image)  # last: the loop starts on it
        self._counts['frames'] += 1

    def _camera_info(self):
        camera = self.settings.camera
        k = camera.k_matrix()
        info = CameraInfo(width=camera.width, height=camera.height,
                          distortion_model='plumb_bob')
        info.k = k.flatten().tolist()
        info.d = [0.0] * 5
        info.r = np.eye(3).flatten().tolist()
        info.p = np.hstack([k, np.zeros((3, 1))]).flatten().tolist()
        return info

    def _hero_pose(self, capture, stamp, frame_id):
        msg = PoseStamped()
        msg.header.stamp, msg.header.frame_id = stamp, frame_id
        x, y, z = capture.hero_optical
        msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = float(x), float(y), \
            float(z)
        # The hero's body frame (x = walking direction, z up) in the optical frame.
        optical = yaw_matrix(self.sim.drone.yaw) @ self.settings.camera.optical_in_body()
        w, qx, qy, qz = _quaternion(optical.T @ yaw_matrix(capture.hero_heading))
        msg.pose.orientation.w, msg.pose.orientation.x = w, qx
        msg.pose.orientation.y, msg.pose.orientation.z = qy, qz
        return msg

    def _odometry(self, stamp):
        drone = self.sim.drone
        msg = Odometry()
        msg.header.stamp, msg.header.frame_id = stamp, 'odom'
        msg.child_frame_id = 'base_link'
        pos = msg.pose.pose.position
        pos.x, pos.y, pos.z = (float(v) for v in drone.position)
        msg.pose.pose.orientation.w = math.cos(drone.yaw / 2)
        msg.pose.pose.orientation.z = math.sin(drone.yaw / 2)
        forward, left, up = drone.body_velocity()
        msg.twist.twist.linear.x, msg.twist.twist.linear.y = float(forward), float(left)
        msg.twist.twist.linear.z = float(up)
        msg.twist.twist.angular.z = float(drone.yaw_rate)
        return msg

    # Inputs ----------------------------------------------------------------------------------

    def _on_cmd_vel(self, msg):
        values = (msg.linear.x, msg.linear.y, msg.linear.z, msg.angular.z)
        with self._lock:
            self.lockstep.command(self.sim.time)
            self._resume.trigger()
            verdict = self.sim.set_command(values)
        if verdict == 'rejected':
            self.get_logger().warn(
                f'rejected cmd_vel {values}: NaN, inf or beyond '
                f'{self.settings.limits.reject_above} (the drone keeps the last valid command, '
                'then hovers)',
                throttle_duration_sec=5.0)
        elif verdict == 'clamped':
            self.get_logger().warn(f'cmd_vel {values} beyond the drone limits: clamped',
                                   throttle_duration_sec=5.0)

    def _frame_index(self, stamp_seconds):
        return int(round(stamp_seconds * self.settings.camera_rate))

    def _on_detection(self, msg):
        try:
            detection = HeroDetection.from_list(msg.data)
        except ValueError as err:
            self._counts['bad_detections'] += 1
            self.get_logger().warn(f'ignoring hero_detection: {err}', throttle_duration_sec=5.0)
            return
        index = self._frame_index(detection.stamp)
        with self._lock:
            self.lockstep.detection(index, time.monotonic())
            self._resume.trigger()
            self.sim.mark_seen(index, detection.present)

    def _on_mask(self, msg):
        try:
            classes = image_to_array(msg)
        except ImageConversionError as err:
            self._counts['bad_masks'] += 1
            self.get_logger().warn(f'ignoring mask: {err}', throttle_duration_sec=5.0)
            return
        index = self._frame_index(msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9)
        if index % self._video_stride == 0 and classes.ndim == 2:
            with self._lock:
                self._loop_masks[index] = classes.copy()

    # Parameters and diagnostics --------------------------------------------------------------

    def _param(self, name):
        return self.get_parameter(name).value

    def _limits(self):
        p = self._param
        return drone_model.DroneLimits(max_speed=p('max_speed'), max_climb=p('max_climb'),
                                       max_yaw_rate=p('max_yaw_rate'), max_accel=p('max_accel'),
                                       tau=p('response_time'))

    def _check_parameters(self, params):
        started = hasattr(self, 'sim')
        for param in params:
            if param.name in READ_ONLY and started:
                return SetParametersResult(
                    successful=False, reason=f'{param.name} is read at start-up: restart the '
                                             'node to change it')
            if param.name == 'scenario' and not Path(param.value).suffix and \
                    param.value not in scenarios.available():
                return SetParametersResult(
                    successful=False, reason=f"no scenario '{param.value}' (shipped: "
                                             f"{', '.join(scenarios.available())})")
            if param.name == 'camera_qos_reliability' and param.value not in RELIABILITY:
                return SetParametersResult(
                    successful=False, reason='camera_qos_reliability must be reliable or '
                                             'best_effort')
        return SetParametersResult(successful=True)

    def _apply_parameters(self, params):
        if not hasattr(self, 'sim'):
            return
        names = {p.name for p in params}
        with self._lock:
            self.lockstep.enabled = self._param('lockstep')
            self.lockstep.timeout = self._param('lockstep_timeout')
            self.lockstep.control_rate = self._param('lockstep_control_rate')
            if names & {'hfov_deg', 'camera_pitch_deg'}:
                camera = replace(self.settings.camera, hfov_deg=self._param('hfov_deg'),
                                 pitch_deg=self._param('camera_pitch_deg'))
                self.sim.set_camera(camera)
            limits = self._limits()
            self.settings = replace(self.sim.settings, limits=limits,
                                    command_timeout=self._param('command_timeout'))
            self.sim.settings = self.settings
            self.sim.drone.limits = limits

    def _publish_diagnostics(self):
        with self._lock:
            commands = dict(self.sim.log.commands)
            collisions = len(self.sim.log.collisions)
            values = {'sim_time_s': f'{self.sim.time:.2f}',
                      'duration_s': f'{self.scenario.duration:.1f}',
                      'frames': self._counts['frames'], 'scenario': self.scenario.name,
                      'cmd_ok': commands['ok'], 'cmd_clamped': commands['clamped'],
                      'cmd_rejected': commands['rejected'], 'collisions': collisions,
                      'lockstep_timeouts': self.lockstep.timeouts,
                      'bad_detections': self._counts['bad_detections'],
                      'bad_masks': self._counts['bad_masks']}
        level, message = DiagnosticStatus.OK, 'running'
        if self.done.is_set():
            message = 'scenario finished'
        if commands['rejected'] or commands['clamped'] or collisions:
            level = DiagnosticStatus.WARN
            message += (f"; {commands['rejected']} cmd_vel rejected, {commands['clamped']} "
                        f'clamped, {collisions} collisions')
        status = DiagnosticStatus(level=level, name='sim_node: simulator', message=message,
                                  hardware_id='followme_sim')
        status.values = [KeyValue(key=k, value=str(v)) for k, v in values.items()]
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = to_stamp(self.sim.time)
        self._pub_diag.publish(msg)


def _quaternion(rotation):
    """(w, x, y, z) of a rotation matrix."""
    import mujoco
    quat = np.zeros(4)
    mujoco.mju_mat2Quat(quat, np.ascontiguousarray(rotation, dtype=float).flatten())
    return tuple(float(q) for q in quat)


def parse_args(argv):
    """--help for users; ROS arguments (--ros-args ...) pass through to rclpy."""
    node_cli.parse_node_args(
        argv, 'sim_node',
        'Fly one scenario of the embedded MuJoCo simulator in simulated time: /clock, '
        'image, depth, camera_info, odom, true_hero_pose, true_mask and /diagnostics out; '
        'cmd_vel in, and hero_detection and mask to keep in step with the loop and score it. '
        'Exits when the scenario ends. See docs/simulator.md.',
        PARAMETERS)


def main(args=None):
    parse_args(sys.argv if args is None else args)
    # rclpy.init() of the Jazzy wheels returns None (no context manager): shut down by hand.
    rclpy.init(args=args)
    try:
        node = SimNode()
        try:
            rclpy.spin_until_future_complete(node, _event_future(node))
            folder = node.get_parameter('output_folder').value
            if folder:
                node.write_outputs(folder)
        finally:
            node.destroy_node()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        rclpy.try_shutdown()


def _event_future(node):
    """Return a future that completes when the node's scenario is done."""
    from rclpy.task import Future
    future = Future()
    node.create_timer(0.2, lambda: node.done.is_set() and not future.done() and
                      future.set_result(True), clock=Clock(clock_type=ClockType.STEADY_TIME))
    return future


if __name__ == '__main__':
    main()
