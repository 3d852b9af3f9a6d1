"""Messages as ROS's image_transport plugins encode them, built for the tests."""

import struct

import cv2
import numpy as np


def compressed_depth_data(metres, encoding, codec='png', depth_max=10.0, quantization=100.0):
    """
    Return (format, data) of depth as compressed_depth_image_transport publishes it.

    A 12-byte header (int32 format, float32 A, B) and a 16-bit PNG: 16UC1 millimetres, or for
    32FC1 the quantized inverse depth A / z + B (0 beyond depth_max and for NaN), with the
    publisher's default depth_max and depth_quantization.
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
    return (f'{encoding}; compressedDepth {codec}',
            header + cv2.imencode('.png', values)[1].tobytes())
