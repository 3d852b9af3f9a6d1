"""Messages as ROS's image_transport plugins encode them, built for the tests."""

import struct

import cv2
import numpy as np


def compressed_depth_data(metres, encoding, codec='png', depth_max=10.0, quantization=100.0):
    """
    Return (format, data) of depth as compressed_depth_image_transport publishes it.

    A 12-byte header (int32 format, float32 A, B) and 16-bit values: 16UC1 millimetres, or for
    32FC1 the quantized inverse depth A / z + B (0 beyond depth_max and for NaN), with the
    publisher's default depth_max and depth_quantization; as a PNG, or for codec 'rvl' the
    width and height (uint32) and RVL.
    """
    if encoding == '16UC1':
        values = np.where(np.isfinite(metres), metres * 1000.0, 0.0)
        quant_a = quant_b = 0.0
    else:
        quant_a = np.float32(quantization * (quantization + 1.0))
        quant_b = np.float32(1.0 - quant_a / depth_max)
        with np.errstate(invalid='ignore', divide='ignore'):
            values = np.where(metres < depth_max, quant_a / metres.astype(np.float32) + quant_b,
                              0.0)
    values = np.nan_to_num(values, nan=0.0, posinf=0.0).astype(np.uint16)
    header = struct.pack('<iff', 0, quant_a, quant_b)
    if codec == 'rvl':
        payload = struct.pack('<II', values.shape[1], values.shape[0]) + encode_rvl(values)
    else:
        payload = cv2.imencode('.png', values)[1].tobytes()
    return f'{encoding}; compressedDepth {codec}', header + payload


def encode_rvl(values) -> bytes:
    """
    RVL-code uint16 values: compressed_depth_image_transport's RvlCodec::CompressRVL, step by step.

    A plain port (one Python step per value, slow), kept apart from the decoder under test.
    """
    words, state = [], {'word': 0, 'groups': 0}

    def put(number):                     # EncodeVLE: 3 bits a group, low bits first
        while True:
            group, number = number & 7, number >> 3
            if number:
                group |= 8               # more to come
            state['word'] = ((state['word'] << 4) | group) & 0xFFFFFFFF
            state['groups'] += 1
            if state['groups'] == 8:
                words.append(state['word'])
                state['word'], state['groups'] = 0, 0
            if not number:
                return

    pixels = [int(v) for v in np.asarray(values, np.uint16).ravel()]
    index, previous = 0, 0
    while index < len(pixels):
        zeros = 0
        while index < len(pixels) and not pixels[index]:
            index, zeros = index + 1, zeros + 1
        put(zeros)
        nonzeros = 0
        while index + nonzeros < len(pixels) and pixels[index + nonzeros]:
            nonzeros += 1
        put(nonzeros)
        for current in pixels[index:index + nonzeros]:
            delta = current - previous
            put(((delta << 1) ^ (delta >> 31)) & 0xFFFFFFFF)    # zigzag, as a 32-bit int
            previous = current
        index += nonzeros
    if state['groups']:
        words.append((state['word'] << 4 * (8 - state['groups'])) & 0xFFFFFFFF)
    return np.array(words, '<u4').tobytes()
