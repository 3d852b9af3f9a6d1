# Source this (bash) after `make run` or `make test` has made .venv: it activates the
# environment and sets what ROS 2 from the Python wheels needs. `make` sources it too.
#   source env.sh && python -m followme_common.bags.replay --help
FOLLOWME_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export VIRTUAL_ENV="$FOLLOWME_ROOT/.venv"
export PATH="$VIRTUAL_ENV/bin:$PATH"
# The wheels register their packages under .venv/share: the ament index must look there.
export AMENT_PREFIX_PATH="$VIRTUAL_ENV"
export RMW_IMPLEMENTATION=rmw_fastrtps_cpp
# Discovery stays on this machine; set ROS_DOMAIN_ID yourself to separate parallel runs.
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
# Large images over shared memory (config/fastdds.xml says why); a profile of yours wins.
export FASTRTPS_DEFAULT_PROFILES_FILE="${FASTRTPS_DEFAULT_PROFILES_FILE:-$FOLLOWME_ROOT/config/fastdds.xml}"
# The embedded simulator renders headless through EGL (Mesa on the CPU).
export MUJOCO_GL=egl
export PYTHONPATH="$FOLLOWME_ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
