"""
The one list of nodes that both `launch/follow.launch.py` and the launch-free runner start.

Keeping it here (plain Python, no launch import) is what stops the two from drifting apart.
"""

from dataclasses import dataclass
import importlib

SIM_CHOICES = ('embedded', 'unity', 'none')


@dataclass(frozen=True)
class NodeSpec:
    name: str          # node name, also the console script (executable) in setup.py
    target: str        # 'module:Class' of the rclpy Node subclass
    sims: tuple        # which `sim:=` choices start this node
    camera_inputs: bool = False  # takes the image/depth/camera_info remaps

    def node_class(self):
        module_name, class_name = self.target.split(':')
        return getattr(importlib.import_module(module_name), class_name)


NODES = (
    NodeSpec('sim_node', 'followme_sim.node:SimNode', ('embedded',)),
    NodeSpec('unity_bridge', 'followme_control.unity_bridge.node:UnityBridgeNode', ('unity',)),
    NodeSpec('perception_node', 'followme_perception.node:PerceptionNode', SIM_CHOICES,
             camera_inputs=True),
    NodeSpec('control_node', 'followme_control.node:ControlNode', SIM_CHOICES),
)


def nodes_for(sim: str):
    if sim not in SIM_CHOICES:
        raise ValueError(f"sim must be one of {', '.join(SIM_CHOICES)}, not '{sim}'")
    return [spec for spec in NODES if sim in spec.sims]


# Fast DDS reads its XML profile from this variable when a process creates its first
# participant; config/fastdds.xml says why followme ships one.
FASTDDS_PROFILE_VARIABLE = 'FASTRTPS_DEFAULT_PROFILES_FILE'


def fastdds_environment(profile: str):
    """Environment for the nodes' processes: the Fast DDS profile, unless `profile` is ''."""
    return {FASTDDS_PROFILE_VARIABLE: profile} if profile else {}


def camera_remaps(image: str, depth: str, camera_info: str):
    """Remaps for the perception node's camera inputs (identity when left at defaults)."""
    return [(src, dst) for src, dst in
            (('image', image), ('depth', depth), ('camera_info', camera_info)) if src != dst]
