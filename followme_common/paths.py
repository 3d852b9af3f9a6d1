"""
Where the package's shared files (config, models, launch, rviz) are.

After `colcon build` they are in the ament index's share folder; in a source checkout run
through `make run` they are next to this package.
"""

import os
from pathlib import Path

from followme_common.bringup import FASTDDS_PROFILE_VARIABLE

PACKAGE = 'followme'
_SOURCE_ROOT = Path(__file__).resolve().parent.parent


def share_dir() -> Path:
    try:
        from ament_index_python.packages import get_package_share_directory
        return Path(get_package_share_directory(PACKAGE))
    except (ImportError, LookupError, OSError, ValueError):
        return _SOURCE_ROOT


def default_params_file() -> Path:
    return share_dir() / 'config' / 'followme.yaml'


def default_fastdds_profile() -> str:
    """Return the user's Fast DDS profile when one is set, else the package's."""
    return os.environ.get(FASTDDS_PROFILE_VARIABLE,
                          str(share_dir() / 'config' / 'fastdds.xml'))


def default_model_file() -> Path:
    """Return the shipped int8 model: faster on a CPU than the float one, same score."""
    return Path(os.environ.get('FOLLOWME_MODEL',
                               share_dir() / 'models' / 'followme_fcn_int8.onnx'))


def default_tensorrt_cache_dir() -> Path:
    """Return where TensorRT engines are kept by default: under ROS's home, as its logs are."""
    ros_home = os.environ.get('ROS_HOME') or Path.home() / '.ros'
    return Path(ros_home) / 'followme' / 'tensorrt'
