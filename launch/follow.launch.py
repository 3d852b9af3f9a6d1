"""Start followme: perception, control, and the embedded simulator or the Unity bridge.

ros2 launch followme follow.launch.py sim:=embedded rviz:=true

The node list comes from followme_common.bringup, which the launch-free runner
(`followme-run`) reads too, so the two start the same nodes with the same parameter file.
"""

import os

from ament_index_python.packages import get_package_share_directory
from followme_common import bringup, paths
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

SHARE = get_package_share_directory('followme')

ARGUMENTS = (
    ('sim', 'embedded', 'drone to connect: embedded (MuJoCo simulator), unity (bridge to the '
                        'Unity quadrotor simulator) or none (a real camera and autopilot)'),
    ('model', os.path.join(SHARE, 'models', 'followme_fcn_int8.onnx'),
     'ONNX segmentation model for the perception node'),
    ('params_file', os.path.join(SHARE, 'config', 'followme.yaml'), 'parameter YAML file'),
    ('namespace', '', 'namespace for every node and topic'),
    ('image', 'image', 'camera image topic the perception node subscribes to'),
    ('depth', 'depth', 'depth image topic (REP 118: 32FC1 m or 16UC1 mm)'),
    ('camera_info', 'camera_info', 'camera info topic'),
    ('use_sim_time', 'auto', 'use /clock: true, false, or auto (true with sim:=embedded)'),
    ('rviz', 'true', 'start rviz2 with rviz/followme.rviz: true or false'),
    ('log_level', 'info', 'log level: debug, info, warn, error or fatal'),
    ('fastdds_profile', paths.default_fastdds_profile(),
     'Fast DDS XML profile for every process started here, empty for none (default: '
     '$FASTRTPS_DEFAULT_PROFILES_FILE, else config/fastdds.xml: large images over shared '
     'memory)'),
)


def _nodes(context):
    config = {name: LaunchConfiguration(name).perform(context) for name, _, _ in ARGUMENTS}
    sim = config['sim']
    use_sim_time = config['use_sim_time']
    use_sim_time = sim == 'embedded' if use_sim_time == 'auto' else use_sim_time == 'true'
    remaps = bringup.camera_remaps(config['image'], config['depth'], config['camera_info'])
    # Before the nodes, so that every process started below creates its participant with it.
    actions = [SetEnvironmentVariable(name, value) for name, value in
               bringup.fastdds_environment(config['fastdds_profile']).items()]
    for spec in bringup.nodes_for(sim):
        overrides = {'use_sim_time': use_sim_time}
        if spec.name == 'perception_node':
            overrides['model_path'] = config['model']
        actions.append(Node(
            package='followme', executable=spec.name, name=spec.name,
            namespace=config['namespace'], output='screen',
            parameters=[config['params_file'], overrides],
            remappings=remaps if spec.camera_inputs else [],
            arguments=['--ros-args', '--log-level', config['log_level']]))
    if config['rviz'].lower() in ('true', '1'):  # as launch's IfCondition reads it
        actions.append(Node(package='rviz2', executable='rviz2', name='rviz2',
                            namespace=config['namespace'],
                            arguments=['-d', os.path.join(SHARE, 'rviz', 'followme.rviz')]))
    return actions


def generate_launch_description():
    return LaunchDescription(
        [DeclareLaunchArgument(name, default_value=default, description=description)
         for name, default, description in ARGUMENTS]
        + [OpaqueFunction(function=_nodes)])
