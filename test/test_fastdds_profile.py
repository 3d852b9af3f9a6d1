"""config/fastdds.xml: camera-sized frames, best effort, between two processes all arrive."""

import os
from pathlib import Path
import subprocess
import sys

REPO = Path(__file__).resolve().parent.parent
PROFILE = REPO / 'config' / 'fastdds.xml'
FRAMES = 30

SUBSCRIBER = """
import sys, time
import rclpy
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image
rclpy.init()
node = rclpy.create_node('profile_test_subscriber')
received = []
node.create_subscription(Image, sys.argv[1], lambda msg: received.append(len(msg.data)),
                         qos_profile_sensor_data)
start = first = time.monotonic()  # first: the last spin before a frame arrived
while time.monotonic() < start + 30.0 and len(received) < int(sys.argv[2]):
    rclpy.spin_once(node, timeout_sec=0.1)
    if received and time.monotonic() > first + 6.0:
        break
    if not received:
        first = time.monotonic()
print(len(received), min(received, default=0))
"""

PUBLISHER = """
import sys, time
import numpy as np
import rclpy
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image
from followme_common.image_msgs import fill_image
rclpy.init()
node = rclpy.create_node('profile_test_publisher')
pub = node.create_publisher(Image, sys.argv[1], qos_profile_sensor_data)
deadline = time.monotonic() + 20.0
while not pub.get_subscription_count() and time.monotonic() < deadline:
    time.sleep(0.05)
time.sleep(0.5)
msg = fill_image(Image(), np.full((480, 640, 3), 7, np.uint8), 'rgb8')
for _ in range(int(sys.argv[2])):
    pub.publish(msg)
    time.sleep(0.1)
time.sleep(1.0)
"""


def test_640x480_best_effort_frames_cross_processes_with_the_profile():
    # Fast DDS's defaults lost a third to a half of such frames on this machine (the profile's
    # comment); with the profile every one arrived. Allow a little for a loaded CI machine.
    env = dict(os.environ, FASTRTPS_DEFAULT_PROFILES_FILE=str(PROFILE))
    topic = f'profile_test_{os.getpid()}'
    subscriber = subprocess.Popen([sys.executable, '-c', SUBSCRIBER, topic, str(FRAMES)],
                                  env=env, stdout=subprocess.PIPE, text=True)
    subprocess.run([sys.executable, '-c', PUBLISHER, topic, str(FRAMES)], env=env,
                   check=True, timeout=60)
    out, _ = subscriber.communicate(timeout=60)
    received, smallest = (int(v) for v in out.split())
    assert received >= FRAMES - 2, f'only {received} of {FRAMES} frames arrived'
    assert smallest == 480 * 640 * 3
