"""followme_common.image_msgs: Image fields <-> numpy, on real messages and plain objects."""

import array
import struct
from types import SimpleNamespace

import cv2
from followme_common.image_msgs import (compressed_to_rgb, decode_rvl, depth_to_metres,
                                        DepthMetres, fill_image, image_to_array, image_to_rgb,
                                        ImageConversionError)
import numpy as np
import pytest
from transport_helpers import compressed_depth_data, encode_rvl

RGB = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)


def raw(pixels, encoding, pad=0, bigendian=False, data_type=bytes):
    """Build a plain Image-like object, rows padded with `pad` junk bytes."""
    pixels = np.ascontiguousarray(pixels)
    if bigendian:
        pixels = pixels.astype(pixels.dtype.newbyteorder('>'))
    height, width = pixels.shape[:2]
    rows = pixels.view(np.uint8).reshape(height, -1)
    rows = np.concatenate([rows, np.full((height, pad), 0xEE, np.uint8)], axis=1)
    data = rows.tobytes()
    if data_type is array.array:
        data = array.array('B', data)
    elif data_type is list:
        data = list(data)
    elif data_type is np.ndarray:
        data = np.frombuffer(data, np.uint8)
    return SimpleNamespace(height=height, width=width, encoding=encoding,
                           is_bigendian=int(bigendian), step=rows.shape[1], data=data)


@pytest.mark.parametrize('encoding,pixels', [
    ('rgb8', RGB), ('bgr8', RGB[:, :, ::-1]),
    ('rgba8', np.dstack([RGB, np.full((4, 5), 9, np.uint8)])),
    ('bgra8', np.dstack([RGB[:, :, ::-1], np.full((4, 5), 9, np.uint8)])),
    ('8UC3', RGB)])
@pytest.mark.parametrize('pad', [0, 3, 16])
def test_every_colour_encoding_gives_rgb(encoding, pixels, pad):
    out = image_to_rgb(raw(pixels, encoding, pad))
    np.testing.assert_array_equal(out, RGB)
    assert out.flags['C_CONTIGUOUS'] and out.dtype == np.uint8


@pytest.mark.parametrize('encoding', ['mono8', '8UC1'])
def test_mono_becomes_grey_rgb(encoding):
    grey = RGB[:, :, 0]
    out = image_to_rgb(raw(grey, encoding, pad=2))
    assert out.shape == (4, 5, 3)
    for channel in range(3):
        np.testing.assert_array_equal(out[:, :, channel], grey)


@pytest.mark.parametrize('data_type', [bytes, array.array, list, np.ndarray])
def test_data_containers_from_rclpy_rosbags_and_lists(data_type):
    np.testing.assert_array_equal(image_to_rgb(raw(RGB, 'rgb8', 1, data_type=data_type)), RGB)


@pytest.mark.parametrize('check_fields', [False, True])
def test_real_rclpy_message_round_trip(check_fields):
    sensor_msgs = pytest.importorskip('sensor_msgs.msg')
    # check_fields is what ROS_PYTHON_CHECK_FIELDS=1 turns on for every message.
    empty = sensor_msgs.Image(check_fields=check_fields)
    own_array = empty.data
    msg = fill_image(empty, RGB, 'rgb8')
    assert (msg.height, msg.width, msg.step, msg.is_bigendian) == (4, 5, 15, 0)
    np.testing.assert_array_equal(image_to_array(msg), RGB)
    # Filled in place: the setter would copy the frame again, or check it byte by byte.
    assert msg.data is own_array
    # A message filled again holds only the new frame.
    np.testing.assert_array_equal(image_to_array(fill_image(msg, RGB[:2], 'rgb8')), RGB[:2])
    # Anything else gets an array.array, the type the generated setter keeps when checking.
    assert isinstance(fill_image(SimpleNamespace(), RGB, 'rgb8').data, array.array)


def test_depth_32fc1_is_metres_and_no_readings_become_nan():
    metres = np.array([[1.5, 0.0, np.nan], [np.inf, -np.inf, 2.25]], np.float32)
    depth = depth_to_metres(raw(metres, '32FC1', pad=4))
    assert depth.dtype == np.float32
    np.testing.assert_array_equal(depth, [[1.5, np.nan, np.nan], [np.nan, np.nan, 2.25]])


@pytest.mark.parametrize('encoding', ['16UC1', 'mono16'])
def test_depth_16uc1_is_millimetres(encoding):
    millimetres = np.array([[1500, 0], [65535, 42]], np.uint16)
    depth = depth_to_metres(raw(millimetres, encoding, pad=2))
    np.testing.assert_allclose(depth, [[1.5, np.nan], [65.535, 0.042]], rtol=1e-6)


def test_big_endian_data_is_read_in_wire_order():
    millimetres = np.array([[258, 1000]], np.uint16)
    np.testing.assert_allclose(depth_to_metres(raw(millimetres, '16UC1', bigendian=True)),
                               [[0.258, 1.0]], rtol=1e-6)
    metres = np.array([[3.5, 0.25]], np.float32)
    np.testing.assert_array_equal(depth_to_metres(raw(metres, '32FC1', bigendian=True)),
                                  metres)


def test_little_endian_16bit_is_not_swapped():
    msg = raw(np.array([[258]], np.uint16), 'mono16')
    assert image_to_array(msg)[0, 0] == 258


@pytest.mark.parametrize('change,words', [
    ({'encoding': 'nv21'}, 'unsupported encoding'),
    ({'height': 0}, 'zero-size'),
    ({'width': 0}, 'zero-size'),
    ({'step': 14}, 'step 14 is smaller'),
    ({'data': bytes(59)}, 'expected step x height'),
])
def test_malformed_messages_raise_a_clear_error(change, words):
    msg = raw(RGB, 'rgb8')
    for field, value in change.items():
        setattr(msg, field, value)
    with pytest.raises(ImageConversionError, match=words):
        image_to_rgb(msg)


def test_wrong_kind_of_image_is_refused():
    with pytest.raises(ImageConversionError, match='not a colour image'):
        image_to_rgb(raw(np.zeros((2, 2), np.uint16), '16UC1'))
    with pytest.raises(ImageConversionError, match='REP 118'):
        depth_to_metres(raw(RGB, 'rgb8'))


def test_fill_image_packs_rows_and_checks_shape():
    msg = fill_image(SimpleNamespace(), np.zeros((3, 7), np.float32), '32FC1')
    assert (msg.step, len(msg.data), msg.encoding) == (28, 84, '32FC1')
    with pytest.raises(ImageConversionError, match='does not fit'):
        fill_image(SimpleNamespace(), np.zeros((3, 7), np.uint8), 'rgb8')
    with pytest.raises(ImageConversionError, match='unsupported'):
        fill_image(SimpleNamespace(), RGB, 'rgb9')


def compressed(data, fmt, data_type=bytes):
    """Build a CompressedImage-like object (rosbags gives bytes-like data, rclpy an array)."""
    data = bytes(data)
    if data_type is array.array:
        data = array.array('B', data)
    return SimpleNamespace(format=fmt, data=data)


SCENE = np.zeros((24, 32, 3), np.uint8)
SCENE[:, :10] = (200, 30, 30)     # red, green, blue bands: a channel swap cannot hide
SCENE[:, 10:20] = (30, 200, 30)
SCENE[:, 20:] = (30, 30, 200)


@pytest.mark.parametrize('data_type', [bytes, array.array])
def test_png_decodes_exactly_to_rgb(data_type):
    png = cv2.imencode('.png', cv2.cvtColor(SCENE, cv2.COLOR_RGB2BGR))[1]
    rgb = compressed_to_rgb(compressed(png, 'bgr8; png compressed bgr8', data_type))
    assert rgb.dtype == np.uint8 and rgb.flags.c_contiguous
    np.testing.assert_array_equal(rgb, SCENE)


def test_jpeg_as_compressed_image_transport_writes_it_keeps_the_colours():
    jpeg = cv2.imencode('.jpg', cv2.cvtColor(SCENE, cv2.COLOR_RGB2BGR),
                        (cv2.IMWRITE_JPEG_QUALITY, 95))[1]
    rgb = compressed_to_rgb(compressed(jpeg, 'rgb8; jpeg compressed bgr8'))
    assert rgb.shape == SCENE.shape
    # JPEG smears the sharp band edges a little; swapped channels would be off by ~110.
    assert np.abs(rgb.astype(int) - SCENE).mean() < 8
    assert [rgb[:, band].mean((0, 1)).argmax() for band in (slice(0, 8), slice(12, 18),
                                                            slice(22, 32))] == [0, 1, 2]


def test_grey_jpeg_comes_out_as_three_equal_channels():
    grey = np.tile(np.arange(0, 256, 8, dtype=np.uint8), (24, 1))
    rgb = compressed_to_rgb(compressed(cv2.imencode('.png', grey)[1], 'mono8; png compressed '))
    assert rgb.shape == (24, 32, 3)
    np.testing.assert_array_equal(rgb[:, :, 0], grey)
    np.testing.assert_array_equal(rgb[:, :, 1], rgb[:, :, 2])


@pytest.mark.parametrize('data,fmt,words', [
    (b'\xff\xd8\xff not really', 'jpeg', 'cannot decode 14 bytes'),
    (b'', 'rgb8; jpeg compressed bgr8', 'cannot decode 0 bytes'),
    (b'\x89PNG', '16UC1; compressedDepth png', 'depth'),
])
def test_undecodable_compressed_images_raise_a_clear_error(data, fmt, words):
    with pytest.raises(ImageConversionError, match=words):
        compressed_to_rgb(compressed(data, fmt))


def mosaic(rgb, pattern):
    """Sample an RGB frame through a Bayer filter; `pattern` as ROS names it (rggb: R at 0, 0)."""
    out = np.empty(rgb.shape[:2], np.uint8)
    for (dy, dx), colour in zip(((0, 0), (0, 1), (1, 0), (1, 1)), pattern):
        out[dy::2, dx::2] = rgb[dy::2, dx::2, 'rgb'.index(colour)]
    return out


@pytest.mark.parametrize('pattern', ['rggb', 'bggr', 'gbrg', 'grbg'])
def test_bayer_mosaics_demosaic_to_their_colours(pattern):
    flat = np.full((8, 10, 3), (200, 100, 30), np.uint8)
    rgb = image_to_rgb(raw(mosaic(flat, pattern), f'bayer_{pattern}8', pad=3))
    assert rgb.shape == flat.shape and rgb.dtype == np.uint8
    # A flat colour demosaics to itself away from the border, whatever the interpolation.
    np.testing.assert_array_equal(rgb[2:-2, 2:-2], flat[2:-2, 2:-2])


@pytest.mark.parametrize('encoding,code', [
    ('yuv422', cv2.COLOR_RGB2YUV_UYVY), ('uyvy', cv2.COLOR_RGB2YUV_UYVY),
    ('yuv422_yuy2', cv2.COLOR_RGB2YUV_YUY2), ('yuyv', cv2.COLOR_RGB2YUV_YUY2)])
def test_yuv422_byte_orders_decode_to_their_colours(encoding, code):
    flat = np.full((4, 6, 3), (200, 100, 30), np.uint8)
    rgb = image_to_rgb(raw(cv2.cvtColor(flat, code), encoding, pad=4))
    assert rgb.shape == flat.shape
    assert np.abs(rgb.astype(int) - flat).max() <= 2   # 8-bit YUV rounding


def test_yuv422_needs_an_even_width():
    with pytest.raises(ImageConversionError, match='even width'):
        image_to_rgb(raw(np.zeros((4, 5, 2), np.uint8), 'yuyv'))


@pytest.mark.parametrize('encoding', ['16UC1', '32FC1'])
def test_depth_read_where_indexed_equals_the_whole_conversion(encoding):
    rng = np.random.default_rng(3)
    millimetres = rng.integers(1, 9000, (12, 16)).astype(np.uint16)
    millimetres[1, 1] = 0                                            # no reading
    pixels = millimetres if encoding == '16UC1' else millimetres.astype(np.float32) / 1000
    if encoding == '32FC1':
        pixels[2, 3], pixels[4, 5] = np.nan, np.inf
    msg = raw(pixels, encoding, pad=6)
    whole, lazy = depth_to_metres(msg), DepthMetres(msg)
    assert lazy.shape == whole.shape == (12, 16)
    rows = np.concatenate([[1, 2, 4], rng.integers(0, 12, 40)])
    cols = np.concatenate([[1, 3, 5], rng.integers(0, 16, 40)])
    sampled = lazy[rows, cols]
    np.testing.assert_array_equal(sampled, whole[rows, cols])   # NaN equals NaN here
    assert np.isnan(sampled[0]) and np.isnan(sampled[1]) == (encoding == '32FC1')
    np.testing.assert_array_equal(lazy[2:5, 3:6], whole[2:5, 3:6])


@pytest.mark.parametrize('encoding,pad', [('bgr8', 0), ('mono8', 0), ('rgb8', 3), ('yuyv', 0)])
def test_conversions_land_in_the_buffer_allocate_gives(encoding, pad):
    pixels = {'bgr8': RGB[:, :, ::-1], 'mono8': RGB[:, :, 0], 'rgb8': RGB,
              'yuyv': np.zeros((4, 4, 2), np.uint8)}[encoding]
    given = []

    def allocate(height, width):
        given.append(np.full((height, width, 3), 7, np.uint8))
        return given[-1]
    msg = raw(pixels, encoding, pad=pad)
    rgb = image_to_rgb(msg, allocate)
    assert len(given) == 1 and np.shares_memory(rgb, given[0])
    np.testing.assert_array_equal(rgb, image_to_rgb(msg))


def test_a_packed_rgb8_frame_is_not_copied():
    msg = raw(RGB, 'rgb8', data_type=array.array)
    rgb = image_to_rgb(msg, lambda h, w: pytest.fail('nothing to convert'))
    assert np.shares_memory(rgb, np.frombuffer(msg.data, np.uint8))


def test_compressed_frames_land_in_the_buffer_allocate_gives():
    png = cv2.imencode('.png', cv2.cvtColor(SCENE, cv2.COLOR_RGB2BGR))[1]
    buffer = np.zeros(SCENE.shape, np.uint8)
    rgb = compressed_to_rgb(compressed(png, 'png'), lambda h, w: buffer)
    assert np.shares_memory(rgb, buffer)
    np.testing.assert_array_equal(buffer, SCENE)


def compressed_depth(metres, encoding, codec='png'):
    """Build a CompressedImage-like depth image, as compressed_depth_image_transport sends it."""
    fmt, data = compressed_depth_data(metres, encoding, codec)
    return compressed(data, fmt)


DEPTH = np.array([[4.0, 6.0, np.nan], [0.0, 2.5, 9.0]], np.float32)
RVL_DEPTH = compressed_depth_data(DEPTH, '16UC1', 'rvl')[1]   # header, width, height, RVL


@pytest.mark.parametrize('codec', ['png', 'rvl'])
def test_compressed_depth_16uc1_reads_the_millimetres(codec):
    depth = DepthMetres.from_compressed(compressed_depth(DEPTH, '16UC1', codec))
    assert depth.shape == (2, 3)
    millimetres = np.array([[4000, 6000, 0], [0, 2500, 9000]], np.uint16)
    # Exactly what the same millimetres read raw give (NaN for the 0s).
    np.testing.assert_array_equal(depth[...], depth_to_metres(raw(millimetres, '16UC1')))
    np.testing.assert_allclose(depth[...], [[4.0, 6.0, np.nan], [np.nan, 2.5, 9.0]], rtol=1e-6)


@pytest.mark.parametrize('codec', ['png', 'rvl'])
def test_compressed_depth_32fc1_undoes_the_inverse_depth_quantization(codec):
    depth = DepthMetres.from_compressed(compressed_depth(DEPTH, '32FC1', codec))
    metres = depth[...]
    assert np.isnan(metres[0, 2]) and np.isnan(metres[1, 0])     # NaN and 0: no reading
    # One inverse-depth step is z^2 / A: 1.6 mm at 4 m with the publisher's defaults.
    np.testing.assert_allclose(metres[[0, 0, 1, 1], [0, 1, 1, 2]], [4.0, 6.0, 2.5, 9.0],
                               atol=0.01)
    np.testing.assert_array_equal(depth[np.array([0, 1]), np.array([0, 1])],
                                  metres[[0, 1], [0, 1]])


@pytest.mark.parametrize('msg,words', [
    (compressed(b'', 'rgb8; jpeg compressed bgr8'), 'not a compressedDepth'),
    (compressed(compressed_depth(DEPTH, '16UC1').data, '16UC1; compressedDepth jxl'),
     "unknown compressedDepth codec 'jxl'"),
    (compressed(b'\0' * 12, '16UC1; compressedDepth png'), 'nothing after'),
    (compressed(b'\0' * 16, '16UC1; compressedDepth rvl'), 'no width and height'),
    (compressed(b'\0' * 12 + struct.pack('<II', 0, 5), '16UC1; compressedDepth rvl'),
     '0x5 pixels: corrupt'),
    (compressed(RVL_DEPTH[:-4], '16UC1; compressedDepth rvl'), 'truncated'),
    # The header says 3x3, the runs hold the 2x3 image.
    (compressed(RVL_DEPTH[:12] + struct.pack('<II', 3, 3) + RVL_DEPTH[20:],
                '16UC1; compressedDepth rvl'), 'ends after 6 of 9 pixels'),
    (compressed(b'\0' * 12 + struct.pack('<II', 3, 2) + b'\0' * 400,
                '16UC1; compressedDepth rvl'), 'run of no pixels after 0 of 6'),
    (compressed(b'\0' * 12 + struct.pack('<II', 3, 2) + b'\xff' * 8 + b'\0' * 4,
                '16UC1; compressedDepth rvl'), 'more than 30 bits'),
    (compressed(b'\0' * 12 + cv2.imencode('.png', np.zeros((2, 2), np.uint8))[1].tobytes(),
                '16UC1; compressedDepth png'), 'not a 16-bit'),
    (compressed(compressed_depth(DEPTH, '16UC1').data, 'mono8; compressedDepth'), 'not REP 118'),
])
def test_unreadable_compressed_depth_raises_a_clear_error(msg, words):
    with pytest.raises(ImageConversionError, match=words):
        DepthMetres.from_compressed(msg)


def test_rvl_reads_a_hand_coded_word():
    # Pixels 0, 0, 5, 7: 2 zeros, 2 non-zeros, differences 5 and 2, zigzag-coded 10 and 4.
    # Groups 2, 2, 0xA (low 3 bits of 10, more to come), 1, 4, left-aligned in one word.
    word = struct.pack('<I', 0x22A14000)
    assert encode_rvl([0, 0, 5, 7]) == word
    np.testing.assert_array_equal(decode_rvl(np.frombuffer(word, np.uint8), 4), [0, 0, 5, 7])


@pytest.mark.parametrize('seed', range(4))
def test_rvl_decodes_what_the_reference_encoder_codes(seed):
    rng = np.random.default_rng(seed)
    # Runs of holes, steps of every size (wrapping from 65535 to 1 and back), long flat runs.
    values = rng.integers(0, 65536, 3000).astype(np.uint16)
    values[rng.random(values.size) < [0.0, 0.05, 0.5, 0.95][seed]] = 0
    values[1000:1600] = 0
    values[2000:2500] = 1234
    values[[10, 11]] = [65535, 1]
    coded = np.frombuffer(encode_rvl(values), np.uint8)
    np.testing.assert_array_equal(decode_rvl(coded, values.size), values)
    np.testing.assert_array_equal(decode_rvl(np.frombuffer(encode_rvl(np.zeros(50, np.uint16)),
                                                           np.uint8), 50), np.zeros(50))


def test_the_depth_bench_reads_the_same_metres_through_every_transport():
    # A whole noisy 640x480 frame with holes, as bench/bench_depth_decode.py times it.
    from bench.bench_depth_decode import depth_frame, messages
    cases = {label: msg for label, msg, _ in messages(depth_frame(holes=0.02, noise_m=0.01))}
    raw_16 = DepthMetres(cases.pop('raw 16UC1'))[...]
    raw_32 = DepthMetres(cases.pop('raw 32FC1'))[...]
    assert np.isnan(raw_16).mean() == pytest.approx(0.02, abs=0.002)
    for label, msg in cases.items():
        metres = DepthMetres.from_compressed(msg)[...]
        np.testing.assert_array_equal(np.isnan(metres), np.isnan(raw_16), err_msg=label)
        if '16UC1' in label:       # millimetres, exactly
            np.testing.assert_array_equal(metres, raw_16, err_msg=label)
        else:                      # quantized inverse depth: z^2 / A, 5 mm at 7 m
            np.testing.assert_allclose(metres, raw_32, atol=0.005, err_msg=label)
