"""
sensor_msgs/Image <-> numpy (`encoding`, `step`, `is_bigendian`); CompressedImage -> numpy.

We do not use cv_bridge: it is not installable from the Python package index and its
Humble/Jazzy builds break under numpy 2. This module only needs the message's fields, so it
works with real rclpy messages, rosbags messages and plain objects alike.
"""

import array
from dataclasses import dataclass
import struct

import cv2
import numpy as np


class ImageConversionError(ValueError):
    """An Image message whose fields do not describe a valid image."""


@dataclass(frozen=True)
class Encoding:
    dtype: np.dtype
    channels: int


ENCODINGS = {
    'rgb8': Encoding(np.dtype(np.uint8), 3),
    'bgr8': Encoding(np.dtype(np.uint8), 3),
    'rgba8': Encoding(np.dtype(np.uint8), 4),
    'bgra8': Encoding(np.dtype(np.uint8), 4),
    'mono8': Encoding(np.dtype(np.uint8), 1),
    '8UC1': Encoding(np.dtype(np.uint8), 1),
    '8UC3': Encoding(np.dtype(np.uint8), 3),
    # What camera drivers publish before any conversion: 4:2:2 YUV (YUV422, 2 bytes a pixel) from
    # V4L2 webcams, and 8-bit Bayer mosaics from machine-vision cameras.
    'yuv422': Encoding(np.dtype(np.uint8), 2),       # UYVY (ROS's name of old)
    'uyvy': Encoding(np.dtype(np.uint8), 2),
    'yuv422_yuy2': Encoding(np.dtype(np.uint8), 2),  # YUYV
    'yuyv': Encoding(np.dtype(np.uint8), 2),
    'bayer_rggb8': Encoding(np.dtype(np.uint8), 1),
    'bayer_bggr8': Encoding(np.dtype(np.uint8), 1),
    'bayer_gbrg8': Encoding(np.dtype(np.uint8), 1),
    'bayer_grbg8': Encoding(np.dtype(np.uint8), 1),
    'mono16': Encoding(np.dtype(np.uint16), 1),
    '16UC1': Encoding(np.dtype(np.uint16), 1),
    '32FC1': Encoding(np.dtype(np.float32), 1),
}


YUV422 = ('yuv422', 'uyvy', 'yuv422_yuy2', 'yuyv')


def image_to_array(msg) -> np.ndarray:
    """
    Return the image as an (H, W) or (H, W, C) array in the message's own encoding.

    Rows padded beyond `width` (step > width * pixel size) are cropped. The result is a view
    of `msg.data` where possible; copy it before writing to it.
    """
    enc = ENCODINGS.get(msg.encoding)
    if enc is None:
        raise ImageConversionError(
            f"unsupported encoding '{msg.encoding}' (supported: {', '.join(sorted(ENCODINGS))})")
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise ImageConversionError(f'zero-size image ({width}x{height})')
    row_bytes = width * enc.channels * enc.dtype.itemsize
    if step < row_bytes:
        raise ImageConversionError(
            f'step {step} is smaller than width x pixel size ({row_bytes}) for {msg.encoding}')
    data = msg.data
    size = len(data)
    if size != step * height:
        raise ImageConversionError(
            f'data has {size} bytes, expected step x height = {step} x {height} = '
            f'{step * height}')
    raw = np.frombuffer(_as_buffer(data), dtype=np.uint8).reshape(height, step)
    raw = raw[:, :row_bytes]
    wire_dtype = enc.dtype.newbyteorder('>' if msg.is_bigendian else '<')
    # astype is a no-op (no copy) when the wire byte order is already the native one.
    pixels = raw.view(wire_dtype).astype(enc.dtype, copy=False)
    if enc.channels == 1:
        return pixels.reshape(height, width)
    return pixels.reshape(height, width, enc.channels)


# OpenCV conversions to RGB, as cv_bridge maps them; OpenCV's are several times faster than
# numpy's channel slicing plus a contiguous copy (bgr8 640x480: 0.93 ms in numpy). OpenCV names
# a Bayer pattern by the second row's second and third pixels, so ROS's RGGB is OpenCV's BG
# (a test checks this on a mosaic).
_CONVERSIONS = {
    'bgr8': cv2.COLOR_BGR2RGB, 'rgba8': cv2.COLOR_RGBA2RGB, 'bgra8': cv2.COLOR_BGRA2RGB,
    'mono8': cv2.COLOR_GRAY2RGB, '8UC1': cv2.COLOR_GRAY2RGB,
    'yuv422': cv2.COLOR_YUV2RGB_UYVY, 'uyvy': cv2.COLOR_YUV2RGB_UYVY,
    'yuv422_yuy2': cv2.COLOR_YUV2RGB_YUYV, 'yuyv': cv2.COLOR_YUV2RGB_YUYV,
    'bayer_rggb8': cv2.COLOR_BayerBG2RGB, 'bayer_bggr8': cv2.COLOR_BayerRG2RGB,
    'bayer_gbrg8': cv2.COLOR_BayerGR2RGB, 'bayer_grbg8': cv2.COLOR_BayerGB2RGB,
}
# The encodings image_to_rgb() turns into colour frames.
COLOUR_ENCODINGS = ('rgb8', '8UC3', *_CONVERSIONS)


def new_rgb(height: int, width: int) -> np.ndarray:
    """Return a new (height, width, 3) uint8 array: the converters' default destination."""
    return np.empty((height, width, 3), np.uint8)


def image_to_rgb(msg, allocate=new_rgb) -> np.ndarray:
    """
    Return a colour or mono image message as a contiguous (H, W, 3) uint8 RGB array.

    A packed rgb8 frame comes back as a view of its data. Anything else is converted into
    `allocate(height, width)`, called once the message has been checked (an outgoing message's
    own buffer, say, to save a copy later).
    """
    pixels = image_to_array(msg)
    encoding = msg.encoding
    if encoding in ('rgb8', '8UC3'):
        if pixels.flags.c_contiguous:
            return pixels
        out = allocate(*pixels.shape[:2])
        np.copyto(out, pixels)
        return out
    if encoding not in _CONVERSIONS:
        raise ImageConversionError(f"encoding '{encoding}' is not a colour image")
    if encoding in YUV422 and msg.width % 2:
        raise ImageConversionError(f'{encoding} needs an even width (a U and a V per two '
                                   f'pixels), not {msg.width}')
    return cv2.cvtColor(pixels, _CONVERSIONS[encoding], dst=allocate(*pixels.shape[:2]))


def compressed_to_rgb(msg, allocate=new_rgb) -> np.ndarray:
    """
    Decode a CompressedImage (JPEG or PNG) to a contiguous (H, W, 3) uint8 RGB array.

    The RGB pixels go into `allocate(height, width)`, as in image_to_rgb().

    compressed_image_transport writes the pixels in OpenCV's BGR order whatever its `format`
    names as the source encoding ('rgb8; jpeg compressed bgr8'), and a camera's own JPEG
    decodes to BGR in OpenCV too, so the format only matters to refuse depth.
    """
    if 'compressedDepth' in msg.format:
        raise ImageConversionError(
            f"format '{msg.format}' is a compressed depth image, not a colour one")
    data = np.frombuffer(_as_buffer(msg.data), np.uint8)
    # IMREAD_COLOR: always 8-bit BGR, grey replicated to three channels (as mono8 frames are).
    decoded = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if decoded is None:
        raise ImageConversionError(
            f"cannot decode {data.size} bytes of format '{msg.format}' as JPEG or PNG")
    return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB, dst=allocate(*decoded.shape[:2]))


class DepthMetres:
    """
    A REP 118 depth image read in metres where it is indexed: 32FC1 is metres, 16UC1 mm.

    0, NaN and inf mean 'no reading' and come back as NaN. Indexing converts only the pixels
    asked for: the hero's few hundred instead of a whole frame (0.2 ms at 640x480).
    """

    def __init__(self, msg):
        if msg.encoding == '32FC1':
            self._scale = None
        elif msg.encoding in ('16UC1', 'mono16'):
            self._scale = np.float32(0.001)
        else:
            raise ImageConversionError(
                f"depth encoding '{msg.encoding}' is not REP 118 (use 32FC1 metres or 16UC1 mm)")
        self._raw = image_to_array(msg)
        self._inverse = None   # (A, B) of compressedDepth's quantized inverse depth
        self.shape = self._raw.shape

    @classmethod
    def from_compressed(cls, msg):
        """
        Read a CompressedImage as compressed_depth_image_transport writes it ('compressedDepth').

        Its data is a 12-byte header (int32 format, float32 A and B) and 16-bit values: 16UC1
        millimetres as they are, or 32FC1 as quantized inverse depth, z = A / (value - B), 0 for
        no reading. The values are a PNG ('compressedDepth png', or no codec named: the old
        default) or, for 'compressedDepth rvl', the width and height (uint32) and RVL.
        """
        encoding, _, compression = msg.format.partition(';')
        encoding, compression = encoding.strip(), compression.strip()
        if not compression.startswith('compressedDepth'):
            raise ImageConversionError(f"format '{msg.format}' is not a compressedDepth image")
        codec = compression[len('compressedDepth'):].strip() or 'png'
        if codec not in ('png', 'rvl'):
            raise ImageConversionError(f"format '{msg.format}': unknown compressedDepth codec "
                                       f"'{codec}' (png and rvl are read)")
        data = np.frombuffer(_as_buffer(msg.data), np.uint8)
        if data.size <= 12:
            raise ImageConversionError(f'compressedDepth image of {data.size} bytes: nothing '
                                       'after its 12-byte header')
        _, quant_a, quant_b = struct.unpack('<iff', data[:12].tobytes())
        raw = _rvl_image(data[12:]) if codec == 'rvl' else cv2.imdecode(data[12:],
                                                                        cv2.IMREAD_UNCHANGED)
        if raw is None or raw.dtype != np.uint16 or raw.ndim != 2:
            raise ImageConversionError(f"format '{msg.format}': the data is not a 16-bit "
                                       'single-channel PNG')
        depth = cls.__new__(cls)
        depth._raw, depth.shape = raw, raw.shape
        if encoding in ('16UC1', 'mono16'):
            depth._scale, depth._inverse = np.float32(0.001), None
        elif encoding == '32FC1':
            depth._scale, depth._inverse = None, (np.float32(quant_a), np.float32(quant_b))
        else:
            raise ImageConversionError(f"compressedDepth encoding '{encoding}' is not REP 118 "
                                       '(32FC1 or 16UC1)')
        return depth

    def __getitem__(self, index) -> np.ndarray:
        raw = self._raw[index]
        if self._inverse is not None:
            quant_a, quant_b = self._inverse
            with np.errstate(divide='ignore'):
                metres = np.array(quant_a / (np.asarray(raw, np.float32) - quant_b), np.float32)
            metres[np.asarray(raw) == 0] = np.nan
        else:
            metres = np.array(raw, dtype=np.float32)  # a copy, whatever the index
            if self._scale is not None:
                metres *= self._scale
        metres[~np.isfinite(metres) | (metres <= 0.0)] = np.nan
        return metres


RVL_MAX_PIXELS = 1 << 26   # 8192 x 8192: a corrupt size must not allocate without bound


def _rvl_image(data: np.ndarray) -> np.ndarray:
    if data.size < 8:
        raise ImageConversionError(f'RVL depth of {data.size} bytes: no width and height')
    width, height = struct.unpack('<II', data[:8].tobytes())
    if not 0 < width * height <= RVL_MAX_PIXELS:
        raise ImageConversionError(f'RVL depth says {width}x{height} pixels: corrupt')
    return decode_rvl(data[8:], width * height).reshape(height, width)


def decode_rvl(data: np.ndarray, pixel_count: int) -> np.ndarray:
    """
    Decode `pixel_count` uint16 values from RVL as compressed_depth_image_transport writes it.

    RVL (Wilson 2017): little-endian 32-bit words of 4-bit groups, each word's top group
    first. A group holds 3 bits of a number, low bits first; its high bit says another group
    follows. The numbers run: zeros in a row, non-zeros in a row, each of those non-zeros as
    its zigzag-coded difference from the one before, and again. In numpy but for one Python
    step per run of zeros: 8.5-10 ms for a 640x480 frame with up to 2 % holes, 12.5-13.5 ms
    with 10 %, where OpenCV decodes the PNG codec in 3.5-4 (bench/bench_depth_decode.py).
    """
    # Bytes of each word top first, then each byte's high group first.
    top_first = data[:data.size - data.size % 4].reshape(-1, 4)[:, ::-1]
    nibbles = np.empty((top_first.shape[0], 4, 2), np.uint8)
    np.right_shift(top_first, 4, out=nibbles[:, :, 0])
    np.bitwise_and(top_first, 15, out=nibbles[:, :, 1])
    nibbles = nibbles.ravel()
    ends = np.flatnonzero(nibbles < 8)          # each number's last group
    if ends.size < 2:
        raise ImageConversionError(f'RVL data of {data.size} bytes holds no run')
    starts = np.empty_like(ends)
    starts[0], starts[1:] = 0, ends[:-1] + 1
    lengths = ends - starts + 1
    if lengths.max() > 10:       # the coder's numbers fit in 27 bits (9 groups)
        raise ImageConversionError('RVL data holds a number of more than 30 bits: corrupt')
    payload = nibbles & 7
    numbers = payload[starts].astype(np.int32)
    longer, place = np.flatnonzero(lengths > 1), 1   # most numbers are one or two groups
    while longer.size:
        numbers[longer] |= payload[starts[longer] + place].astype(np.int32) << (3 * place)
        place += 1
        longer = longer[lengths[longer] > place]
    # Where a run starts depends on the length of the one before: one Python step per run,
    # along a table of where the next run would start if one started at each number. A run
    # of no pixels leads off the table, so garbage stops the walk at once; so does running
    # past the data, or more runs than pixels.
    following = np.arange(2, numbers.size + 2, dtype=np.int64)
    following[:-1] += numbers[1:]
    last = numbers.size - 1
    following[:-1][numbers[:-1] + numbers[1:] == 0] = last
    run_starts, position = [], 0
    append, step = run_starts.append, following.item
    for _ in range(pixel_count):
        append(position)
        position = step(position)
        if position >= last:
            break
    run_starts = np.asarray(run_starts, np.int64)
    run_pixels = numbers[run_starts].astype(np.int64) + numbers[run_starts + 1]
    decoded = np.cumsum(run_pixels)
    runs = int(np.searchsorted(decoded, pixel_count)) + 1     # up to the one that fills it
    empty = np.flatnonzero(run_pixels[:runs] == 0)
    if empty.size:                    # the coder never writes one; padding or garbage does
        raise ImageConversionError(f'RVL data holds a run of no pixels after '
                                   f'{decoded[empty[0]]} of {pixel_count}: corrupt or too short')
    if runs > run_starts.size:
        raise ImageConversionError(f'RVL data ends after {decoded[-1] if decoded.size else 0} '
                                   f'of {pixel_count} pixels')
    if decoded[runs - 1] != pixel_count:
        raise ImageConversionError(f'RVL runs hold {decoded[runs - 1]} pixels, not '
                                   f'{pixel_count}')
    run_starts = run_starts[:runs]
    values = numbers.item(run_starts[-1] + 1)
    position = run_starts[-1] + 2 + values
    if position > numbers.size:
        raise ImageConversionError(f'RVL data ends inside its last run of {values} values: '
                                   'truncated')
    counts = np.empty(2 * runs, np.int64)          # zeros, values, zeros, values, ...
    counts[0::2], counts[1::2] = numbers[run_starts], numbers[run_starts + 1]
    is_difference = np.ones(position, bool)
    is_difference[run_starts] = is_difference[run_starts + 1] = False
    zigzag = numbers[:position][is_difference]
    # uint16 arithmetic wraps as the codec's does.
    differences = ((zigzag >> 1) ^ -(zigzag & 1)).astype(np.uint16)
    pixels = np.zeros(pixel_count, np.uint16)
    non_zero = np.repeat(np.tile([False, True], runs), counts)
    pixels[non_zero] = np.cumsum(differences, dtype=np.uint16)
    return pixels


def depth_to_metres(msg) -> np.ndarray:
    """Return a whole REP 118 depth image as float32 metres, NaN where there is no reading."""
    return DepthMetres(msg)[...]


def fill_image(msg, pixels: np.ndarray, encoding: str):
    """Fill an Image message's fields from an array, tightly packed (step = row bytes)."""
    enc = ENCODINGS.get(encoding)
    if enc is None:
        raise ImageConversionError(f"unsupported encoding '{encoding}'")
    pixels = np.ascontiguousarray(pixels, dtype=enc.dtype)
    expected_ndim = 2 if enc.channels == 1 else 3
    if pixels.ndim != expected_ndim or (enc.channels > 1 and pixels.shape[2] != enc.channels):
        raise ImageConversionError(
            f'array of shape {pixels.shape} does not fit encoding {encoding}')
    msg.height, msg.width = int(pixels.shape[0]), int(pixels.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = msg.width * enc.channels * enc.dtype.itemsize
    pixel_bytes = memoryview(pixels).cast('B')
    data = getattr(msg, 'data', None)
    if isinstance(data, array.array) and data.typecode == 'B':
        # A generated message's own array, filled in place: its setter copies whatever it is
        # given once more (an array.array too), or with ROS_PYTHON_CHECK_FIELDS=1 checks
        # bytes one by one in Python (75 ms for a 640x480 rgb8 frame).
        del data[:]
        data.frombytes(pixel_bytes)
    else:
        data = array.array('B')
        data.frombytes(pixel_bytes)
        msg.data = data
    return msg


def _as_buffer(data):
    # rclpy gives array.array('B') or bytes; rosbags gives numpy arrays; lists need a copy.
    if isinstance(data, (bytes, bytearray, memoryview, np.ndarray)):
        return data
    try:
        return memoryview(data)
    except TypeError:
        return bytes(data)
