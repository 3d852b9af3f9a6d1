"""Small bags written by the tests themselves (nothing checked in), with rclpy's CDR."""

import numpy as np

NS = 1_000_000_000
START_NS = 1_700_000_000 * NS  # an ordinary wall-clock time, as a recorder would stamp


def string_cdr(text):
    from rclpy.serialization import serialize_message
    from std_msgs.msg import String
    return serialize_message(String(data=text))


def image_cdr(pixels, encoding, stamp_ns, frame_id='camera'):
    from rclpy.serialization import serialize_message
    from sensor_msgs.msg import Image

    from followme_common.image_msgs import fill_image
    msg = fill_image(Image(), pixels, encoding)
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(int(stamp_ns), NS)
    msg.header.frame_id = frame_id
    return serialize_message(msg)


def write_chatter_bag(path, storage='mcap', count=11, period_s=0.1, extra=None):
    """/chatter String 'msg i' every period_s from START_NS; extra(writer) adds more."""
    from followme_common.bags.storage import BagWriter
    with BagWriter(path, storage) as writer:
        writer.add_topic('/chatter', 'std_msgs/msg/String')
        for i in range(count):
            writer.write('/chatter', START_NS + round(i * period_s * NS), string_cdr(f'msg {i}'))
        if extra is not None:
            extra(writer)
    return path


def frame(value, height=48, width=64):
    """Make an RGB frame: left half red, right half blue, both at `value`."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:, : width // 2, 0] = value
    pixels[:, width // 2:, 2] = value
    return pixels


def mask_ids(height=48, width=64):
    """Make class ids: background, a block of other people (1) and a block of hero (2)."""
    ids = np.zeros((height, width), np.uint8)
    ids[: height // 2, : width // 2] = 1
    ids[height // 2:, width // 2:] = 2
    return ids
