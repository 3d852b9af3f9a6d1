"""
The hero detection summary on `hero_detection`: one flat list of numbers, no ROS needed.

It travels as std_msgs/Float64MultiArray (a standard type: no custom messages). That type has
no header, so the first two fields carry the camera frame's stamp, exactly (float64 holds any
int32 seconds and nanoseconds without loss): judge staleness from them, not from arrival time.
`layout.dim[0].label` lists FIELDS joined by commas, so `ros2 topic echo` is self-describing.

When the hero is not found, `present` is 0, every pixel field is 0, `range_m` is NaN and
`range_source` is RangeSource.NONE; `hero_pose` is then not published at all.
"""

from dataclasses import dataclass, fields
from enum import IntEnum
import math


class RangeSource(IntEnum):
    """Where the hero's distance came from; tells the control node how far to trust it."""

    NONE = 0      # no hero in this frame
    DEPTH = 1     # median of the blob's valid depth pixels (metres, REP 118)
    SIZE = 2      # blob height in pixels + assumed person height + CameraInfo focal length
    BEARING = 3   # direction only: hero_pose is a unit vector, range_m is NaN


class IntrinsicsSource(IntEnum):
    """Which camera model turned pixels into directions."""

    NONE = 0         # no hero, nothing computed
    CAMERA_INFO = 1  # the latest sensor_msgs/CameraInfo: K (P if image_rectified), no D
    ASSUMED_FOV = 2  # no CameraInfo yet: principal point at the centre, `assumed_hfov_deg`
    CAMERA_INFO_UNDISTORTED = 3  # CameraInfo's K and its lens distortion D, undone


@dataclass(frozen=True)
class HeroDetection:
    """
    One frame's summary. Pixel values are at the input image's resolution.

    The box is [x_min, x_max) x [y_min, y_max) in pixels (max is exclusive, so
    x_max - x_min is the box width). `area_px` is the blob's pixel count, `confidence` the mean
    hero probability over the blob (0..1), `range_m` the Euclidean distance from the camera to
    the hero position in hero_pose (NaN when unknown).
    """

    stamp_sec: int = 0
    stamp_nanosec: int = 0
    present: int = 0
    cx: float = 0.0
    cy: float = 0.0
    x_min: float = 0.0
    y_min: float = 0.0
    x_max: float = 0.0
    y_max: float = 0.0
    area_px: float = 0.0
    confidence: float = 0.0
    range_m: float = math.nan
    range_source: int = RangeSource.NONE
    intrinsics_source: int = IntrinsicsSource.NONE
    image_width: int = 0
    image_height: int = 0

    def to_list(self):
        """Return the values in FIELDS order, as floats (the Float64MultiArray's data)."""
        # Not dataclasses.astuple: it deep-copies, 15 times slower, on every frame.
        return [float(getattr(self, name)) for name in FIELDS]

    @classmethod
    def from_list(cls, values):
        """Decode a Float64MultiArray's data; raises ValueError on a wrong length."""
        values = list(values)
        if len(values) != len(FIELDS):
            raise ValueError(
                f'hero detection needs {len(FIELDS)} values ({LAYOUT_LABEL}), got {len(values)}')
        decoded = {}
        for field, value in zip(fields(cls), values):
            decoded[field.name] = int(value) if field.type is int else float(value)
        return cls(**decoded)

    @property
    def stamp(self) -> float:
        """Return the stamp in seconds (a float; match frames with the integer fields)."""
        return self.stamp_sec + self.stamp_nanosec * 1e-9

    @property
    def has_range(self) -> bool:
        return bool(self.present) and self.range_source in (RangeSource.DEPTH, RangeSource.SIZE)


FIELDS = tuple(field.name for field in fields(HeroDetection))
LAYOUT_LABEL = ','.join(FIELDS)
INDEX = {name: i for i, name in enumerate(FIELDS)}
