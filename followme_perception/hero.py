"""
Where the hero is: the largest hero blob in a class mask, then 3D from depth, size or bearing.

No ROS here. Positions are in the camera optical frame (REP 103: z forward, x right, y down).
"""

import dataclasses
from dataclasses import dataclass
import functools
import math

import cv2
from followme_perception.detection import HeroDetection, IntrinsicsSource, RangeSource
from followme_perception.segmenter import HERO
import numpy as np

# Fewer valid depth pixels than this in the blob and the median is not trusted.
MIN_VALID_DEPTH_PIXELS = 5


# CameraInfo distortion models (sensor_msgs/distortion_models.hpp) that bearings undo, with
# the coefficient counts OpenCV takes for each.
RADIAL_TANGENTIAL_MODELS = ('plumb_bob', 'rational_polynomial')
RADIAL_TANGENTIAL_COEFFICIENTS = (4, 5, 8, 12, 14)
FISHEYE_MODEL = 'equidistant'
# OpenCV's default (5 iterations) leaves pixels of error near the edge of a wide-angle lens.
_UNDISTORT_CRITERIA = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 50, 1e-9)


@dataclass(frozen=True)
class Intrinsics:
    fx: float
    fy: float
    cx: float
    cy: float
    source: IntrinsicsSource
    distortion_model: str = ''   # '' (none), a RADIAL_TANGENTIAL_MODELS name or FISHEYE_MODEL
    distortion: tuple = ()       # its coefficients, CameraInfo's D

    @classmethod
    def from_k(cls, k):
        """From CameraInfo's row-major 3x3 K; None when it is unset (all zeros) or invalid."""
        fx, fy, cx, cy = float(k[0]), float(k[4]), float(k[2]), float(k[5])
        if not all(math.isfinite(v) for v in (fx, fy, cx, cy)) or fx <= 0.0 or fy <= 0.0:
            return None
        return cls(fx, fy, cx, cy, IntrinsicsSource.CAMERA_INFO)

    @classmethod
    def from_camera_info(cls, k, d, distortion_model, p, rectified=False):
        """
        Build the camera model for bearings from CameraInfo's K, D, distortion_model and P.

        A raw image (`rectified` false) is described by K and D; a rectified one (image_rect,
        as image_proc makes it) by P with no distortion (P falls back to K when unset), as
        image_geometry's PinholeCameraModel reads them. Returns (intrinsics or None, problem):
        intrinsics is None when the matrix is unusable; `problem` says why D was ignored.
        """
        if rectified:
            # P is row-major 3x4: fx' at 0, cx' at 2, fy' at 5, cy' at 6.
            from_p = cls.from_k((p[0], 0, p[2], 0, p[5], p[6])) if len(p) == 12 else None
            return from_p or cls.from_k(k), None
        pinhole = cls.from_k(k)
        coefficients = tuple(float(v) for v in d)
        if pinhole is None or not any(coefficients):
            return pinhole, None
        if not all(math.isfinite(v) for v in coefficients):
            return pinhole, f'D {list(coefficients)} is not finite'
        if (distortion_model in RADIAL_TANGENTIAL_MODELS
                and len(coefficients) in RADIAL_TANGENTIAL_COEFFICIENTS) or \
                (distortion_model == FISHEYE_MODEL and len(coefficients) == 4):
            return dataclasses.replace(pinhole, distortion_model=distortion_model,
                                       distortion=coefficients,
                                       source=IntrinsicsSource.CAMERA_INFO_UNDISTORTED), None
        return pinhole, (f'distortion model {distortion_model!r} with {len(coefficients)} '
                         f'coefficients is not one of {", ".join(RADIAL_TANGENTIAL_MODELS)} '
                         f'(4, 5, 8, 12 or 14) or {FISHEYE_MODEL} (4)')

    @classmethod
    def from_fov(cls, width, height, hfov_deg):
        """Assume a pinhole with square pixels and the principal point at the centre."""
        focal = (width / 2.0) / math.tan(math.radians(hfov_deg) / 2.0)
        return cls(focal, focal, width / 2.0, height / 2.0, IntrinsicsSource.ASSUMED_FOV)

    def in_region(self, x_offset, y_offset, binning_x, binning_y):
        """
        Describe a cropped (region of interest) or binned image of this camera (REP 104).

        CameraInfo's K and P describe the full-resolution sensor; a driver that crops (`roi`)
        or bins (`binning_x`, `binning_y`) publishes a smaller image, in which a pixel (u, v)
        is ((u_full - x_offset) / binning_x, ...), as image_geometry reads it.
        """
        if (x_offset, y_offset, binning_x, binning_y) == (0, 0, 1, 1):
            return self
        return dataclasses.replace(self, fx=self.fx / binning_x, fy=self.fy / binning_y,
                                   cx=(self.cx - x_offset) / binning_x,
                                   cy=(self.cy - y_offset) / binning_y)

    def scaled_to(self, width, height, info_width, info_height):
        """Rescale to an image of another size than CameraInfo gives (a resized stream)."""
        if info_width <= 0 or info_height <= 0 or (width, height) == (info_width, info_height):
            return self
        sx, sy = width / info_width, height / info_height
        # D acts on normalised coordinates, which scaling leaves alone.
        return dataclasses.replace(self, fx=self.fx * sx, fy=self.fy * sy, cx=self.cx * sx,
                                   cy=self.cy * sy)

    def undistorted(self, points, tolerance_px=0.5):
        """
        (N, 2) pixels -> ((N, 2) points (x/z, y/z), whether the lens model inverts there).

        A wrong or absurd D (another lens's calibration, a sign flipped), or a pixel beyond
        what the polynomial can reach, makes OpenCV's iteration diverge: NaN, or rays far off,
        with no error raised. So each point is distorted back and must land on its pixel.
        """
        rays = self.normalized(points)
        if not self.distortion_model:
            return rays, True
        if not np.all(np.isfinite(rays)):
            return rays, False
        objects = np.concatenate([rays, np.ones((len(rays), 1))], axis=1).reshape(-1, 1, 3)
        camera, zero, coefficients = self._matrix(), np.zeros(3), np.array(self.distortion)
        if self.distortion_model == FISHEYE_MODEL:
            pixels, _ = cv2.fisheye.projectPoints(objects, zero, zero, camera, coefficients)
        else:
            pixels, _ = cv2.projectPoints(objects, zero, zero, camera, coefficients)
        error = np.abs(pixels.reshape(-1, 2) - np.asarray(points, np.float64).reshape(-1, 2))
        return rays, bool(np.all(np.isfinite(error)) and error.max() <= tolerance_px)

    def normalized(self, points) -> np.ndarray:
        """(N, 2) pixel coordinates -> (N, 2) points (x/z, y/z), lens distortion undone."""
        pixels = np.asarray(points, np.float64).reshape(-1, 1, 2)
        if not self.distortion_model:
            return ((pixels[:, 0] - (self.cx, self.cy)) / (self.fx, self.fy))
        camera, coefficients = self._matrix(), np.array(self.distortion)
        if self.distortion_model == FISHEYE_MODEL:
            undone = cv2.fisheye.undistortPoints(pixels, camera, coefficients,
                                                 criteria=_UNDISTORT_CRITERIA)
        else:
            undone = cv2.undistortPoints(pixels, camera, coefficients,
                                         criteria=_UNDISTORT_CRITERIA)
        return undone[:, 0]

    def _matrix(self):
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])


def camera_info_region(width, height, binning_x, binning_y, roi):
    """
    (x_offset, y_offset, binning_x, binning_y, image width, image height) from CameraInfo.

    REP 104: binning 0 means 1; a region of interest of all zeros (or zero size) means the full
    sensor; both in full-resolution pixels. `roi` is (x_offset, y_offset, width, height).
    """
    binning_x, binning_y = max(1, int(binning_x)), max(1, int(binning_y))
    x_offset, y_offset, roi_width, roi_height = (int(v) for v in roi)
    if roi_width <= 0 or roi_height <= 0:
        x_offset, y_offset, roi_width, roi_height = 0, 0, int(width), int(height)
    return (x_offset, y_offset, binning_x, binning_y, roi_width // binning_x,
            roi_height // binning_y)


@dataclass(frozen=True)
class HeroEstimate:
    detection: HeroDetection
    position: tuple = None   # (x, y, z) metres, or a unit vector when bearing-only; None if absent


class HeroLocator:
    """
    Finds the largest hero blob and estimates the hero's position.

    The blob search runs on the network's grid (a 160x160 mask, say), which is many times
    cheaper than on the input image; the image-resolution figures (box, centroid, area) are
    then exact for the nearest-neighbour upscaled mask the node publishes.
    """

    def __init__(self, min_pixels=30, person_height_m=1.75, assumed_hfov_deg=90.0):
        self.min_pixels = int(min_pixels)
        self.person_height_m = float(person_height_m)
        self.assumed_hfov_deg = float(assumed_hfov_deg)

    def locate(self, class_ids, hero_prob, depth=None, intrinsics=None, stamp=(0, 0),
               image_size=None):
        """
        Return a HeroEstimate for one frame.

        class_ids: (h, w) uint8 mask on the network grid; hero_prob: (h, w) hero probability;
        image_size: the input image's (H, W), default (h, w); depth: (H, W) float metres with
        NaN for no reading (an array, or a DepthMetres read only where indexed), or None;
        intrinsics: from CameraInfo for the image size, or None; stamp: (sec, nanosec).
        """
        height, width = image_size or class_ids.shape
        frame = {'stamp_sec': int(stamp[0]), 'stamp_nanosec': int(stamp[1]),
                 'image_width': width, 'image_height': height}
        rows, cols = _axis(class_ids.shape[0], height), _axis(class_ids.shape[1], width)
        blob = self._largest_blob(class_ids, rows, cols)
        if blob is None:
            return HeroEstimate(HeroDetection(**frame))
        (x0, y0, x1, y1), (cx, cy), area, (ys, xs), weights = blob
        # The pixel-weighted mean; np.average spends more in Python than in the sum.
        confidence = float(np.dot(hero_prob[ys, xs], weights)) / area
        camera = intrinsics or Intrinsics.from_fov(width, height, self.assumed_hfov_deg)
        # The centroid's ray, and the box's top and bottom edges (pixel centres are integers)
        # below it, for the range from size.
        edges = [(cx, cy), (cx, y0 - 0.5), (cx, y1 - 0.5)]
        (centre, top, bottom), inverted = camera.undistorted(edges)
        if not inverted:
            # The lens model does not invert at these pixels: the pinhole reading for this
            # frame rather than a NaN or wild pose (intrinsics_source says CAMERA_INFO).
            camera = dataclasses.replace(camera, distortion_model='', distortion=(),
                                         source=IntrinsicsSource.CAMERA_INFO)
            centre, top, bottom = camera.normalized(edges)
        ray = np.array([centre[0], centre[1], 1.0])
        z, source = None, RangeSource.DEPTH
        if depth is not None:
            seen = weights > 0
            z = _median_depth(depth[rows.sample[ys[seen]], cols.sample[xs[seen]]])
        if z is None and intrinsics is not None:
            z, source = self.person_height_m / (bottom[1] - top[1]), RangeSource.SIZE
        if z is None:
            position, range_m, source = ray / np.linalg.norm(ray), math.nan, RangeSource.BEARING
        else:
            position = ray * z
            range_m = float(np.linalg.norm(position))
        detection = HeroDetection(
            present=1, cx=float(cx), cy=float(cy), x_min=float(x0), y_min=float(y0),
            x_max=float(x1), y_max=float(y1), area_px=float(area), confidence=confidence,
            range_m=range_m, range_source=source, intrinsics_source=camera.source, **frame)
        return HeroEstimate(detection, tuple(float(v) for v in position))

    def _largest_blob(self, class_ids, rows, cols):
        hero = (class_ids == HERO).view(np.uint8)
        # Label only the box around all hero cells: usually a small part of the grid.
        x_all, y_all, w_all, h_all = cv2.boundingRect(hero)
        if w_all == 0:
            return None
        hero = hero[y_all:y_all + h_all, x_all:x_all + w_all]
        # 16-bit labels are several times faster; separate 8-connected blobs need a gap, so
        # there are at most ceil(h/2) * ceil(w/2) of them.
        blobs_max = ((h_all + 1) // 2) * ((w_all + 1) // 2)
        label_type = cv2.CV_16U if blobs_max < 2**16 else cv2.CV_32S
        count, labels, stats, _ = cv2.connectedComponentsWithStats(hero, connectivity=8,
                                                                   ltype=label_type)
        best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        x, y, w, h = (int(v) for v in stats[best, :4])
        ys, xs = np.nonzero(labels[y:y + h, x:x + w] == best)
        x, y = x + x_all, y + y_all
        ys += y
        xs += x
        weights = rows.count[ys] * cols.count[xs]   # image pixels behind each grid cell
        area = int(weights.sum())
        if area < self.min_pixels:
            return None
        centroid = (float(np.dot(weights, cols.centre[xs])) / area,
                    float(np.dot(weights, rows.centre[ys])) / area)
        box = (cols.first[x], rows.first[y], cols.end[x + w - 1], rows.end[y + h - 1])
        return box, centroid, area, (ys, xs), weights


@dataclass(frozen=True)
class _Axis:
    """How a nearest-neighbour resize spreads n grid cells over N image pixels, per cell."""

    count: np.ndarray    # image pixels showing the cell
    first: np.ndarray    # first such pixel
    end: np.ndarray      # one past the last
    centre: np.ndarray   # their mean index
    sample: np.ndarray   # one of them (the middle), to read depth at


@functools.lru_cache(maxsize=16)
def _axis(cells, pixels):
    # Ask OpenCV which cell each pixel shows, so this agrees with the mask's cv2.resize.
    shown = cv2.resize(np.arange(cells, dtype=np.float32)[None], (pixels, 1),
                       interpolation=cv2.INTER_NEAREST)[0].astype(np.int64)
    index = np.arange(cells)
    first = np.searchsorted(shown, index, side='left')
    end = np.searchsorted(shown, index, side='right')
    return _Axis(end - first, first, end, (first + end - 1) / 2.0,
                 np.minimum((first + end - 1) // 2, pixels - 1))


def _median_depth(values):
    values = values[np.isfinite(values) & (values > 0.0)]
    if values.size < MIN_VALID_DEPTH_PIXELS:
        return None
    return float(np.median(values))
