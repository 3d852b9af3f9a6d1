"""
What crosses the wire to the Unity quadrotor simulator, in plain Python (no ROS).

Frame decoding (base64 JPEG/PNG, depth scale), pose strings, world <-> camera maths, the
payloads of the events we send, and the `object_lost` counter. The wire format is described in
../shared/docs/unity-quadsim-protocol.md; docs/unity_bridge.md says what we chose and why.

Frames (REP 103): the world frame is the simulator's ROS-style frame (x, y, z = Unity z, -x, y).
A pose string "x,y,z,roll,pitch,yaw" (degrees) is a camera-link or body pose, x forward, y left,
z up, rotation R = Rz(yaw) Ry(pitch) Rx(roll) (fixed-axis roll, pitch, yaw, as the original
script's transforms3d `euler2mat`). The camera optical frame is z forward, x right, y down.
"""

import base64
import binascii
from collections import deque, OrderedDict
from dataclasses import dataclass
import decimal
import math

import cv2
import numpy as np

# The shipped script's depth: Unity's linear 0..1 depth as 0..255 in R, times 50/255 m per unit.
DEFAULT_DEPTH_SCALE = 50.0 / 255.0
# The original back-projection used fx = image size: a horizontal field of view of 2 atan(1/2).
CLASSIC_HFOV_DEG = math.degrees(2.0 * math.atan(0.5))
# The classic hero marker: a translucent blue 0.7 x 0.7 x 2 m box, redrawn each frame.
MARKER_DIMENSIONS = (0.7, 0.7, 2.0)
MARKER_COLOR = (0.0, 0.0, 1.0, 0.1)

SENSOR_FRAME_FIELDS = ('timestamp', 'rgb_image', 'depth_image', 'pose', 'gimbal_pose')
_JPEG_MAGIC = b'\xff\xd8\xff'
_PNG_MAGIC = b'\x89PNG\r\n\x1a\n'
_MAX_STAMP_S = 2 ** 31 - 1  # builtin_interfaces/Time.sec is an int32

# Optical axes (x right, y down, z forward) expressed in the camera link (x fwd, y left, z up).
OPTICAL_IN_LINK = np.array([[0.0, 0.0, 1.0],
                            [-1.0, 0.0, 0.0],
                            [0.0, -1.0, 0.0]])


class FrameError(ValueError):
    """A sensor frame we cannot use; `kind` names the diagnostics counter it goes to."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class Pose:
    """A pose in the world frame: position in metres, roll/pitch/yaw in radians."""

    position: np.ndarray
    rpy: np.ndarray

    def rotation(self) -> np.ndarray:
        return rpy_to_matrix(*self.rpy)


@dataclass(frozen=True)
class SensorFrame:
    stamp_ns: int          # the simulator's own Unix time, in nanoseconds
    rgb: np.ndarray        # (H, W, 3) uint8, RGB
    depth_m: np.ndarray    # (H, W) float32 metres
    drone: Pose            # the quad's body pose
    camera: Pose           # the gimbal camera link's world pose


@dataclass(frozen=True)
class PinholeCamera:
    """The simulator's gimbal camera: an ideal pinhole centred on the image, square pixels."""

    width: int
    height: int
    hfov_deg: float = CLASSIC_HFOV_DEG

    @property
    def fx(self) -> float:
        return 0.5 * self.width / math.tan(math.radians(self.hfov_deg) / 2.0)

    @property
    def fy(self) -> float:
        return self.fx

    @property
    def cx(self) -> float:
        # ROS puts integer pixel coordinates at pixel centres: the image's centre is (W-1)/2.
        return (self.width - 1) / 2.0

    @property
    def cy(self) -> float:
        return (self.height - 1) / 2.0

    def k(self) -> list:
        return [self.fx, 0.0, self.cx, 0.0, self.fy, self.cy, 0.0, 0.0, 1.0]

    def p(self) -> list:
        return [self.fx, 0.0, self.cx, 0.0, 0.0, self.fy, self.cy, 0.0, 0.0, 0.0, 1.0, 0.0]

    def back_project(self, u: float, v: float, depth: float) -> np.ndarray:
        """Pixel (u = column, v = row) at `depth` metres -> point in the optical frame."""
        return np.array([(u - self.cx) * depth / self.fx, (v - self.cy) * depth / self.fy,
                         depth])


def rpy_to_matrix(roll: float, pitch: float, yaw: float) -> np.ndarray:
    """R = Rz(yaw) Ry(pitch) Rx(roll)."""
    cr, sr = math.cos(roll), math.sin(roll)
    cp, sp = math.cos(pitch), math.sin(pitch)
    cy, sy = math.cos(yaw), math.sin(yaw)
    return np.array([
        [cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr],
        [sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr],
        [-sp, cp * sr, cp * cr],
    ])


def matrix_to_quaternion(rotation: np.ndarray) -> tuple:
    """Convert a rotation matrix to a unit quaternion (x, y, z, w), w >= 0."""
    m = rotation
    trace = m[0, 0] + m[1, 1] + m[2, 2]
    if trace > 0.0:
        s = 2.0 * math.sqrt(1.0 + trace)
        q = (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s, s / 4
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = 2.0 * math.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2])
        q = s / 4, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s, (m[2, 1] - m[1, 2]) / s
    elif m[1, 1] > m[2, 2]:
        s = 2.0 * math.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2])
        q = (m[0, 1] + m[1, 0]) / s, s / 4, (m[1, 2] + m[2, 1]) / s, (m[0, 2] - m[2, 0]) / s
    else:
        s = 2.0 * math.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1])
        q = (m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, s / 4, (m[1, 0] - m[0, 1]) / s
    q = np.array(q) / np.linalg.norm(q)
    return tuple(float(v) for v in (q if q[3] >= 0.0 else -q))


def optical_rotation(camera: Pose) -> np.ndarray:
    """World orientation of the camera's optical frame (z forward, x right, y down)."""
    return camera.rotation() @ OPTICAL_IN_LINK


def optical_to_world(camera: Pose, point_optical) -> np.ndarray:
    """Move a point from the camera optical frame to the world, with that frame's camera pose."""
    return optical_rotation(camera) @ np.asarray(point_optical, dtype=float) + camera.position


def world_to_optical(camera: Pose, point_world) -> np.ndarray:
    return optical_rotation(camera).T @ (np.asarray(point_world, dtype=float) - camera.position)


def wrap_degrees(angle: float) -> float:
    """Wrap into [-180, 180): the script's 'below -180, add 360' for the negated angles."""
    return (angle + 180.0) % 360.0 - 180.0


def parse_pose(text) -> Pose:
    """Parse the simulator's pose string "x,y,z,roll,pitch,yaw" (metres, degrees)."""
    if not isinstance(text, str):
        raise FrameError('bad_pose', f'pose is a {type(text).__name__}, expected a string')
    parts = text.split(',')
    if len(parts) != 6:
        raise FrameError('bad_pose', f"pose '{text[:80]}' has {len(parts)} values, expected 6 "
                                     '(x,y,z,roll,pitch,yaw)')
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise FrameError('bad_pose', f"pose '{text[:80]}' has a value that is not a number")
    if not all(math.isfinite(v) for v in values):
        raise FrameError('bad_pose', f"pose '{text[:80]}' has a NaN or infinite value")
    angles = [math.radians(wrap_degrees(a)) for a in values[3:]]
    return Pose(np.array(values[:3]), np.array(angles))


def parse_timestamp(value) -> int:
    """Parse Unix seconds (a string such as "1504814505.23149", or a number) to exact ns."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise FrameError('bad_timestamp', f'timestamp is a {type(value).__name__}')
    try:
        seconds = decimal.Decimal(str(value).strip())
    except decimal.InvalidOperation:
        raise FrameError('bad_timestamp', f"timestamp '{str(value)[:40]}' is not a number")
    if not seconds.is_finite() or not 0 < seconds < _MAX_STAMP_S:
        raise FrameError('bad_timestamp', f"timestamp '{str(value)[:40]}' is out of range")
    return int(seconds * 1_000_000_000)


def decode_image_field(text, field: str, flags: int) -> np.ndarray:
    """Decode a base64 JPEG or PNG string with OpenCV `flags` (colour comes as BGR)."""
    if not isinstance(text, str):
        raise FrameError('missing_field', f'{field} is a {type(text).__name__}, expected base64')
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise FrameError('bad_base64', f'{field} is not valid base64 ({exc})')
    if not raw.startswith((_JPEG_MAGIC, _PNG_MAGIC)):
        raise FrameError('not_jpeg_or_png', f'{field} is neither JPEG nor PNG '
                                            f'(starts with {raw[:8].hex() or "nothing"})')
    pixels = cv2.imdecode(np.frombuffer(raw, dtype=np.uint8), flags)
    if pixels is None:
        raise FrameError('bad_image', f'{field} could not be decoded (truncated or corrupt)')
    return pixels


class FrameDecoder:
    """`sensor_frame` payloads -> SensorFrame, or FrameError saying what is wrong."""

    def __init__(self, width: int = 256, height: int = 256,
                 depth_scale: float = DEFAULT_DEPTH_SCALE):
        self.width = width
        self.height = height
        self.depth_scale = depth_scale

    def decode(self, payload) -> SensorFrame:
        if not isinstance(payload, dict):
            raise FrameError('missing_field', f'sensor_frame payload is a '
                                              f'{type(payload).__name__}, expected an object')
        missing = [f for f in SENSOR_FRAME_FIELDS if f not in payload]
        if missing:
            raise FrameError('missing_field', f"sensor_frame lacks {', '.join(missing)}")
        stamp_ns = parse_timestamp(payload['timestamp'])
        drone = parse_pose(payload['pose'])
        camera = parse_pose(payload['gimbal_pose'])
        bgr = decode_image_field(payload['rgb_image'], 'rgb_image', cv2.IMREAD_COLOR)
        self._check_size(bgr, 'rgb_image')
        depth = decode_image_field(payload['depth_image'], 'depth_image', cv2.IMREAD_UNCHANGED)
        self._check_size(depth, 'depth_image')
        if depth.dtype != np.uint8:
            raise FrameError('bad_image', f'depth_image has {depth.dtype} pixels, expected 8 bit')
        # R = G = B hold the depth; OpenCV gives BGR(A), so R is channel 2.
        depth_units = depth if depth.ndim == 2 else depth[:, :, 2]
        return SensorFrame(
            stamp_ns=stamp_ns,
            rgb=np.ascontiguousarray(bgr[:, :, ::-1]),
            depth_m=depth_units.astype(np.float32) * np.float32(self.depth_scale),
            drone=drone, camera=camera)

    def _check_size(self, pixels, field):
        height, width = pixels.shape[:2]
        if (width, height) != (self.width, self.height):
            raise FrameError('wrong_size', f'{field} is {width}x{height}, expected '
                                           f'{self.width}x{self.height}')


class PoseHistory:
    """The camera poses of the newest frames, by stamp, so a late hero pose meets its own."""

    def __init__(self, length: int):
        self.length = length
        self._poses = OrderedDict()

    def add(self, stamp_ns: int, camera: Pose):
        self._poses[stamp_ns] = camera
        while len(self._poses) > self.length:
            self._poses.popitem(last=False)

    def get(self, stamp_ns: int):
        return self._poses.get(stamp_ns)

    def clear(self):
        self._poses.clear()


class LostTracker:
    """
    Say when to send `object_lost`: more than N frames in a row after the last hero.

    A frame counts as a miss when its stamp is newer than the newest frame the hero was seen
    in, so a hero pose that arrives a little after the next frame (perception latency) still
    resets the count correctly.
    """

    def __init__(self, lost_after_frames: int):
        self.lost_after_frames = lost_after_frames
        self._frames = deque(maxlen=lost_after_frames + 1)
        self._last_hero_ns = None  # None: not following (never found, or lost already sent)

    @property
    def following(self) -> bool:
        return self._last_hero_ns is not None

    def hero_seen(self, stamp_ns: int):
        if self._last_hero_ns is None or stamp_ns > self._last_hero_ns:
            self._last_hero_ns = stamp_ns

    def frame_arrived(self, stamp_ns: int) -> bool:
        """Record a frame; True when this frame makes the hero lost (send object_lost once)."""
        self._frames.append(stamp_ns)
        if self._last_hero_ns is None:
            return False
        misses = sum(1 for s in self._frames if s > self._last_hero_ns)
        if misses > self.lost_after_frames:
            self._last_hero_ns = None
            return True
        return False

    def reset(self):
        self._frames.clear()
        self._last_hero_ns = None


def velocity_target(drone: Pose, linear_body, horizon_s: float) -> np.ndarray:
    """
    Return where a body-frame velocity (x fwd, y left, z up) takes the quad in `horizon_s`.

    The velocity is turned by the quad's yaw only: a follow command is meant level, whatever
    the quad's momentary roll and pitch.
    """
    vx, vy, vz = (float(v) for v in linear_body)
    yaw = drone.rpy[2]
    c, s = math.cos(yaw), math.sin(yaw)
    return drone.position + horizon_s * np.array([c * vx - s * vy, s * vx + c * vy, vz])


def _finite_point(point) -> list:
    values = [float(v) for v in point]
    if len(values) != 3 or not all(math.isfinite(v) for v in values):
        raise ValueError(f'point {values} is not three finite numbers')
    return values


def object_detected_payload(point) -> dict:
    """Send the quad to Follow towards `point` (world frame, metres)."""
    return {'coords': _finite_point(point)}


def object_lost_payload() -> dict:
    return {'data': ''}


def box_marker_payload(marker_id: int, point, duration_s: float) -> dict:
    """Draw the classic hero box at `point` for `duration_s` (-1: forever)."""
    return {'id': int(marker_id), 'pose': _finite_point(point) + [0.0, 0.0, 0.0],
            'dimensions': list(MARKER_DIMENSIONS), 'color': list(MARKER_COLOR),
            'duration': float(duration_s)}
