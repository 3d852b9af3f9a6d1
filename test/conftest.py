"""
Shared test set-up: real rclpy over Fast DDS, isolated per test run.

Each pytest process gets its own ROS_DOMAIN_ID and keeps discovery on localhost, so parallel
runs on one machine cannot hear each other. Nothing here mocks rclpy.
"""

import os
from pathlib import Path
import time

import pytest

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / 'shared' / 'data' / 'udacity_followme'

# Set before rclpy is imported anywhere: domain ids 10..99, picked from the process id.
os.environ['ROS_DOMAIN_ID'] = os.environ.get('FOLLOWME_TEST_DOMAIN_ID',
                                             str(10 + os.getpid() % 90))
os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
os.environ.setdefault('RMW_IMPLEMENTATION', 'rmw_fastrtps_cpp')
os.environ.setdefault('MUJOCO_GL', 'egl')


def pytest_collection_modifyitems(items):
    """Mark the training tests: they import TensorFlow.

    TensorFlow and MuJoCo's EGL renderer cannot share a process (the renderer segfaults in
    its constructor once TensorFlow is loaded), so `make test` runs the `tensorflow` tests in
    a pytest process of their own.
    """
    for item in items:
        if item.path.name.startswith('test_training_'):
            item.add_marker(pytest.mark.tensorflow)


@pytest.fixture(scope='session')
def ros():
    """Initialise real rclpy once per session; yield its default context."""
    rclpy = pytest.importorskip('rclpy')
    rclpy.init()
    yield rclpy.get_default_context()
    rclpy.try_shutdown()


@pytest.fixture
def executor(ros):
    """Yield a single-threaded executor; nodes added to it are destroyed after the test."""
    from rclpy.executors import SingleThreadedExecutor
    ex = SingleThreadedExecutor()
    yield ex
    for node in list(ex.get_nodes()):
        ex.remove_node(node)
        node.destroy_node()
    ex.shutdown()


def spin_until(executor, predicate, timeout=10.0):
    """Spin until predicate() is true; return whether it became true before the timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        executor.spin_once(timeout_sec=0.02)
    return bool(predicate())


@pytest.fixture
def shared_data():
    """Return the shared follow-me data set, or skip cleanly where it is absent."""
    if not (DATA / 'train' / 'images').is_dir():
        pytest.skip(f'shared data set not found at {DATA}')
    return DATA
