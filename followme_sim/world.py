"""
The MuJoCo world: a scenario turned into a model, posed in time and rendered. No ROS.

MuJoCo only draws here: people and the drone are mocap bodies posed from their scripted
paths and the drone model, so nothing is integrated twice. Every geom has contype 0, which
keeps mj_kinematics cheap; collisions are checked analytically in `collision()`.

Frames: world x/y on the ground, z up. The camera's optical frame follows REP 103 (z forward,
x right, y down); MuJoCo's camera frame is x right, y up, z backward.
"""

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
import math

from followme_sim.scenario import Obstacle, Person, Scenario
import numpy as np

BACKGROUND, OTHERS, HERO = 0, 1, 2
# Classic data-set mask colours (RGB): red background, green other people, blue hero.
CLASS_COLOURS = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], dtype=np.uint8)
TORSO_HEIGHT_FRACTION = 0.64  # the hero's "position" is her chest centre, this far up
AWNING_THICKNESS = 0.1        # m
_MAX_DEPTH = 200.0            # far clipping plane (m); sky pixels have no depth reading


@dataclass
class Frame:
    rgb: np.ndarray        # (H, W, 3) uint8
    depth: np.ndarray      # (H, W) float32 metres along the optical axis, NaN for sky
    classes: np.ndarray    # (H, W) uint8: 0 background, 1 other people, 2 hero


@dataclass(frozen=True)
class CameraModel:
    width: int = 256
    height: int = 256
    hfov_deg: float = 53.0        # the Unity camera's horizontal field of view
    pitch_deg: float = 25.0       # gimbal pitch below the horizon (+ = down)

    @property
    def focal(self):
        return (self.width / 2.0) / math.tan(math.radians(self.hfov_deg) / 2.0)

    @property
    def fovy_deg(self):
        return math.degrees(2.0 * math.atan(self.height / 2.0 / self.focal))

    def k_matrix(self):
        """Pinhole intrinsics (pixel centres at integer coordinates)."""
        return np.array([[self.focal, 0.0, (self.width - 1) / 2.0],
                         [0.0, self.focal, (self.height - 1) / 2.0],
                         [0.0, 0.0, 1.0]])

    def optical_in_body(self):
        """Rotation whose columns are the optical x, y, z axes in the body frame."""
        p = math.radians(self.pitch_deg)
        right = (0.0, -1.0, 0.0)
        down = (-math.sin(p), 0.0, -math.cos(p))
        forward = (math.cos(p), 0.0, -math.sin(p))
        return np.array([right, down, forward]).T


def yaw_matrix(yaw):
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def camera_pose(position, yaw, camera):
    """World position and optical-frame rotation (columns = optical axes in world)."""
    return np.asarray(position, dtype=float), yaw_matrix(yaw) @ camera.optical_in_body()


def world_to_optical(point, position, yaw, camera):
    origin, rotation = camera_pose(position, yaw, camera)
    return rotation.T @ (np.asarray(point, dtype=float) - origin)


def project(point_optical, camera):
    """Pixel (u, v) of an optical-frame point, or None when it is behind the camera."""
    x, y, z = point_optical
    if z <= 1e-6:
        return None
    k = camera.k_matrix()
    return k[0, 0] * x / z + k[0, 2], k[1, 1] * y / z + k[1, 2]


def in_view(point_optical, camera):
    uv = project(point_optical, camera)
    return uv is not None and 0 <= uv[0] <= camera.width - 1 and 0 <= uv[1] <= camera.height - 1


def hero_position(scenario: Scenario, t):
    """Return the hero's chest centre in the world at time t (what true_hero_pose reports)."""
    x, y, heading, _, _ = scenario.hero.path.state(t)
    return np.array([x, y, TORSO_HEIGHT_FRACTION * scenario.hero.height]), heading


class World:
    """A scenario's MuJoCo model: pose it with set_time()/set_drone(), then render()."""

    def __init__(self, scenario: Scenario, camera: CameraModel = CameraModel()):
        import mujoco
        self._mujoco = mujoco
        self.scenario = scenario
        self.camera = camera
        self.model = mujoco.MjModel.from_xml_string(build_mjcf(scenario, camera))
        self.data = mujoco.MjData(self.model)
        self._camera_id = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_CAMERA, 'drone_cam')
        self._drone_mocap = self._mocap('drone')
        parts = ('', '_legl', '_legr', '_arml', '_armr')
        self._limbs = [[self._mocap(p.name + part) for part in parts] for p in scenario.people]
        body_class = np.zeros(self.model.nbody, dtype=np.uint8)
        for person in scenario.people:
            for part in parts:
                body = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_BODY, person.name + part)
                body_class[body] = HERO if person.hero else OTHERS
        self._geom_class = body_class[self.model.geom_bodyid]
        self._renderer = None
        # A GL context is current in one thread only, and ROS executors call back on any
        # thread: every GL call goes through this one worker thread.
        self._gl_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix='followme_gl')
        self.set_camera(camera)
        self.set_time(0.0)
        self.set_drone(scenario.drone_start[:3], scenario.drone_start[3])

    def _mocap(self, body_name):
        body = self._mujoco.mj_name2id(self.model, self._mujoco.mjtObj.mjOBJ_BODY, body_name)
        return int(self.model.body_mocapid[body])

    def set_camera(self, camera: CameraModel):
        """Apply a new gimbal pitch or field of view (the image size is fixed per World)."""
        if (camera.width, camera.height) != (self.camera.width, self.camera.height):
            raise ValueError('the image size is fixed when the World is made')
        self.camera = camera
        # MuJoCo camera axes in the body frame: x right, y up, z backward.
        optical = camera.optical_in_body()
        mj_axes = optical @ np.diag([1.0, -1.0, -1.0])
        quat = np.zeros(4)
        self._mujoco.mju_mat2Quat(quat, mj_axes.flatten())
        self.model.cam_quat[self._camera_id] = quat
        self.model.cam_fovy[self._camera_id] = camera.fovy_deg

    def set_time(self, t):
        """Pose every person as scripted at time t (s): position, heading and gait."""
        for person, mocaps in zip(self.scenario.people, self._limbs):
            x, y, heading, moving, walked = person.path.state(t)
            scale = person.height / 1.75
            hip = _hip_height(person)
            phase = 2.0 * math.pi * walked / (1.4 * scale)
            leg_swing = 0.45 * math.sin(phase) if moving else 0.0
            base = np.array([x, y, hip])
            rot = yaw_matrix(heading)
            yaw_q = np.array([math.cos(heading / 2), 0.0, 0.0, math.sin(heading / 2)])
            self.data.mocap_pos[mocaps[0]] = base
            self.data.mocap_quat[mocaps[0]] = yaw_q
            for mocap, (pivot, swing) in zip(mocaps[1:], _limb_pivots(person, leg_swing)):
                self.data.mocap_pos[mocap] = base + rot @ pivot
                self.data.mocap_quat[mocap] = _yaw_pitch_quat(heading, swing)

    def set_drone(self, position, yaw):
        self.data.mocap_pos[self._drone_mocap] = position
        self.data.mocap_quat[self._drone_mocap] = [math.cos(yaw / 2), 0.0, 0.0,
                                                   math.sin(yaw / 2)]

    def render(self, rgb=True, depth=True) -> Frame:
        """Render what the drone camera sees: colour, depth and the true class mask."""
        return self._gl_thread.submit(self._render, rgb, depth).result()

    def _render(self, rgb, depth):
        mujoco = self._mujoco
        if self._renderer is None:
            self._renderer = mujoco.Renderer(self.model, self.camera.height, self.camera.width)
        mujoco.mj_kinematics(self.model, self.data)
        mujoco.mj_camlight(self.model, self.data)
        renderer = self._renderer
        renderer.update_scene(self.data, camera=self._camera_id)
        colour = renderer.render().copy() if rgb else None
        metres = None
        if depth:
            renderer.enable_depth_rendering()
            metres = renderer.render().astype(np.float32)
            renderer.disable_depth_rendering()
            metres[metres >= 0.99 * _MAX_DEPTH] = np.nan
        renderer.enable_segmentation_rendering()
        seg = renderer.render()
        renderer.disable_segmentation_rendering()
        ids, types = seg[..., 0], seg[..., 1]
        is_geom = (types == int(mujoco.mjtObj.mjOBJ_GEOM)) & (ids >= 0)
        classes = np.where(is_geom, self._geom_class[np.clip(ids, 0, None)], BACKGROUND)
        return Frame(colour, metres, classes.astype(np.uint8))

    def close(self):
        if self._renderer is not None:
            self._gl_thread.submit(self._renderer.close).result()
            self._renderer = None
        self._gl_thread.shutdown()

    def collision(self, position, radius, t):
        """
        Return what a sphere at `position` touches at time t.

        'ground', an obstacle kind ('building', 'tree', ...), 'hero', 'person' or None.
        """
        p = np.asarray(position, dtype=float)
        if p[2] < radius:
            return 'ground'
        for obstacle in self.scenario.obstacles:
            if _obstacle_distance(obstacle, p) < radius:
                return obstacle.kind
        for person in self.scenario.people:
            x, y, _, _, _ = person.path.state(t)
            if p[2] - radius < person.height and \
                    math.hypot(p[0] - x, p[1] - y) < radius + 0.25 * person.girth:
                return 'hero' if person.hero else 'person'
        return None


def _hip_height(person: Person):
    return 0.52 * person.height


def _limb_pivots(person: Person, leg_swing):
    """(pivot in the body frame, pitch) for left leg, right leg, left arm, right arm."""
    g = person.girth
    shoulder = (0.82 - 0.52) * person.height - 0.05
    return [(np.array([0.0, 0.085 * g, 0.0]), leg_swing),
            (np.array([0.0, -0.085 * g, 0.0]), -leg_swing),
            (np.array([0.0, 0.2 * g, shoulder]), -0.7 * leg_swing),
            (np.array([0.0, -0.2 * g, shoulder]), 0.7 * leg_swing)]


def _yaw_pitch_quat(yaw, pitch):
    """Quaternion of yaw about z followed by pitch about the (rotated) y axis."""
    cy, sy = math.cos(yaw / 2), math.sin(yaw / 2)
    cp, sp = math.cos(pitch / 2), math.sin(pitch / 2)
    return np.array([cy * cp, -sy * sp, cy * sp, sy * cp])


def _obstacle_distance(obstacle: Obstacle, p):
    dx, dy = p[0] - obstacle.x, p[1] - obstacle.y
    if obstacle.kind in ('building', 'kiosk', 'awning'):
        c, s = math.cos(obstacle.yaw), math.sin(obstacle.yaw)
        hx, hy, hz = obstacle.size
        if obstacle.kind == 'awning':  # the roof slab; its posts stand beside the route
            centre_z, hz = hz + AWNING_THICKNESS / 2, AWNING_THICKNESS / 2
        else:
            centre_z = hz
        local = np.array([c * dx + s * dy, -s * dx + c * dy, p[2] - centre_z])
        outside = np.maximum(np.abs(local) - np.array([hx, hy, hz]), 0.0)
        return float(np.linalg.norm(outside))
    radius, height = obstacle.size
    if obstacle.kind == 'tree':  # a canopy as wide as `radius` above the trunk
        radius = radius if p[2] > 0.35 * height else 0.15
    horizontal = max(math.hypot(dx, dy) - radius, 0.0)
    vertical = max(p[2] - height, 0.0)
    return math.hypot(horizontal, vertical)


# MJCF ----------------------------------------------------------------------------------------

def _rgb(colour, alpha=1.0):
    return ' '.join(f'{c:.3f}' for c in colour) + f' {alpha:g}'


def build_mjcf(scenario: Scenario, camera: CameraModel) -> str:
    """Write the scenario as an MJCF string: sky, light, ground, scenery, people, drone."""
    sky, light = scenario.sky, scenario.light
    parts = [f"""<mujoco model="followme_{scenario.name}">
  <compiler angle="radian"/>
  <statistic extent="100" center="0 0 0"/>
  <visual>
    <global offwidth="{max(camera.width, 640)}" offheight="{max(camera.height, 480)}"/>
    <quality shadowsize="0" offsamples="0" numslices="12" numstacks="6" numquads="1"/>
    <headlight ambient="{light['ambient']:.3f} {light['ambient']:.3f} {light['ambient']:.3f}"
               diffuse="0.25 0.25 0.25" specular="0 0 0"/>
    <map znear="0.001" zfar="{_MAX_DEPTH / 100:.3f}" haze="0.3"/>
    <rgba haze="{_rgb(sky['horizon'])}"/>
  </visual>
  <default><geom contype="0" conaffinity="0"/></default>
  <asset>
    <texture name="sky" type="skybox" builtin="gradient" rgb1="{_rgb(sky['top'])[:-2]}"
             rgb2="{_rgb(sky['horizon'])[:-2]}" width="128" height="128"/>
    <texture name="grass" type="2d" builtin="flat" rgb1="0.33 0.58 0.16" mark="random"
             random="0.35" markrgb="0.22 0.45 0.1" width="256" height="256"/>
    <material name="grass" texture="grass" texrepeat="80 80" specular="0"/>
    <texture name="paving" type="2d" builtin="checker" rgb1="0.78 0.77 0.75"
             rgb2="0.7 0.69 0.68" mark="edge" markrgb="0.55 0.55 0.55" width="64"
             height="64"/>
    <material name="paving" texture="paving" texrepeat="1.6 1.6" texuniform="true"
              specular="0.05"/>
    <texture name="windows" type="2d" builtin="checker" rgb1="1 1 1" rgb2="0.35 0.38 0.42"
             mark="edge" markrgb="0.8 0.8 0.8" width="64" height="64"/>
    <material name="wall" texture="windows" texrepeat="0.35 0.35" texuniform="true"
              specular="0.05"/>
  </asset>
  <worldbody>
    <light directional="true" castshadow="false" pos="0 0 50"
           dir="{' '.join(f'{v:.3f}' for v in light['direction'])}"
           diffuse="{light['diffuse']:.3f} {light['diffuse']:.3f} {light['diffuse']:.3f}"
           specular="0.1 0.1 0.1"/>
    <geom name="ground" type="plane" size="300 300 30" material="grass"/>"""]
    # Overlapping strips each a few millimetres higher than the last: no z-fighting.
    for i, (x0, y0, x1, y1, half_width) in enumerate(scenario.pavements):
        length = math.hypot(x1 - x0, y1 - y0) + 2 * half_width
        yaw = math.atan2(y1 - y0, x1 - x0)
        parts.append(
            f'    <geom name="pavement{i}" type="box" material="paving" '
            f'pos="{(x0 + x1) / 2:.3f} {(y0 + y1) / 2:.3f} {0.005 + 0.004 * i:.3f}" '
            f'euler="0 0 {yaw:.4f}" '
            f'size="{length / 2 + 8:.3f} {half_width:.3f} 0.005"/>')
    for i, obstacle in enumerate(scenario.obstacles):
        parts.append(_obstacle_mjcf(i, obstacle))
    for person in scenario.people:
        parts.append(_person_mjcf(person))
    parts.append("""    <body name="drone" mocap="true">
      <camera name="drone_cam" pos="0 0 0"/>
    </body>
  </worldbody>
</mujoco>""")
    return '\n'.join(parts)


def _obstacle_mjcf(i, o: Obstacle):
    name = f'{o.kind}{i}'
    if o.kind == 'building':
        hx, hy, hz = o.size
        return (f'    <body name="{name}" pos="{o.x:.3f} {o.y:.3f} 0" euler="0 0 {o.yaw:.4f}">\n'
                f'      <geom type="box" material="wall" rgba="{_rgb(o.colour)}" '
                f'pos="0 0 {hz:.3f}" size="{hx:.3f} {hy:.3f} {hz:.3f}"/>\n'
                f'      <geom type="box" rgba="0.3 0.28 0.28 1" pos="0 0 {2 * hz + 0.15:.3f}" '
                f'size="{hx + 0.2:.3f} {hy + 0.2:.3f} 0.15"/>\n    </body>')
    if o.kind == 'awning':
        hx, hy, height = o.size
        posts = ''.join(
            f'      <geom type="cylinder" rgba="0.3 0.3 0.3 1" pos="{sx * hx:.3f} '
            f'{sy * (hy - 0.05):.3f} {height / 2:.3f}" size="0.05 {height / 2:.3f}"/>\n'
            for sx in (-1, 1) for sy in (-1, 1))
        return (f'    <body name="{name}" pos="{o.x:.3f} {o.y:.3f} 0" euler="0 0 {o.yaw:.4f}">\n'
                f'      <geom type="box" rgba="{_rgb(o.colour)}" '
                f'pos="0 0 {height + AWNING_THICKNESS / 2:.3f}" '
                f'size="{hx:.3f} {hy:.3f} {AWNING_THICKNESS / 2:.3f}"/>\n{posts}    </body>')
    if o.kind == 'kiosk':
        hx, hy, hz = o.size
        return (f'    <body name="{name}" pos="{o.x:.3f} {o.y:.3f} 0" euler="0 0 {o.yaw:.4f}">\n'
                f'      <geom type="box" rgba="{_rgb(o.colour)}" pos="0 0 {hz:.3f}" '
                f'size="{hx:.3f} {hy:.3f} {hz:.3f}"/>\n'
                f'      <geom type="box" rgba="0.85 0.85 0.85 1" pos="0 0 {2 * hz + 0.08:.3f}" '
                f'size="{hx + 0.3:.3f} {hy + 0.3:.3f} 0.08"/>\n    </body>')
    radius, height = o.size
    if o.kind == 'tree':
        return (f'    <body name="{name}" pos="{o.x:.3f} {o.y:.3f} 0">\n'
                f'      <geom type="cylinder" rgba="0.35 0.24 0.14 1" '
                f'pos="0 0 {0.25 * height:.3f}" size="0.15 {0.25 * height:.3f}"/>\n'
                f'      <geom type="ellipsoid" rgba="{_rgb(o.colour)}" '
                f'pos="0 0 {0.67 * height:.3f}" size="{radius:.3f} {radius:.3f} '
                f'{0.33 * height:.3f}"/>\n    </body>')
    return (f'    <body name="{name}" pos="{o.x:.3f} {o.y:.3f} 0">\n'
            f'      <geom type="cylinder" rgba="{_rgb(o.colour)}" pos="0 0 {height / 2:.3f}" '
            f'size="{radius:.3f} {height / 2:.3f}"/>\n'
            f'      <geom type="sphere" rgba="0.95 0.95 0.85 1" pos="0 0 {height:.3f}" '
            f'size="0.18"/>\n    </body>')


def _person_mjcf(p: Person):
    """Describe a walking figure: a torso body plus a mocap body per limb, so limbs swing."""
    c = {k: _rgb(v) for k, v in p.colours.items()}
    g, s, h = p.girth, p.height / 1.75, p.height
    hip = _hip_height(p)
    torso_half = (0.82 - 0.52) * h / 2
    head_z = (0.93 - 0.52) * h
    head_r = 0.062 * h
    shoulder = (0.82 - 0.52) * h
    forearm = c['shirt'] if p.hero else c['skin']  # the hero wears long sleeves
    long_hair = (f'      <geom type="ellipsoid" rgba="{c["hair"]}" '
                 f'pos="{-0.06 * s:.3f} 0 {head_z - 0.13 * s:.3f}" '
                 f'size="{0.05 * s:.3f} {0.1 * s:.3f} {0.15 * s:.3f}"/>\n') if p.long_hair else ''
    body = (f'    <body name="{p.name}" mocap="true">\n'
            f'      <geom type="ellipsoid" rgba="{c["trousers"]}" pos="0 0 0.02" '
            f'size="{0.1 * g:.3f} {0.16 * g:.3f} 0.1"/>\n'
            f'      <geom type="ellipsoid" rgba="{c["shirt"]}" pos="0 0 {torso_half + 0.03:.3f}" '
            f'size="{0.11 * g:.3f} {0.18 * g:.3f} {torso_half:.3f}"/>\n'
            f'      <geom type="capsule" rgba="{c["shirt"]}" '
            f'fromto="0 {-0.16 * g:.3f} {shoulder - 0.04:.3f} 0 {0.16 * g:.3f} '
            f'{shoulder - 0.04:.3f}" size="{0.065 * g:.3f}"/>\n'
            f'      <geom type="capsule" rgba="{c["skin"]}" '
            f'fromto="0 0 {shoulder:.3f} 0 0 {shoulder + 0.07 * s:.3f}" size="0.045"/>\n'
            f'      <geom type="sphere" rgba="{c["skin"]}" pos="{0.01 * s:.3f} 0 {head_z:.3f}" '
            f'size="{head_r:.3f}"/>\n'
            f'      <geom type="sphere" rgba="{c["hair"]}" '
            f'pos="{-0.03 * s:.3f} 0 {head_z + 0.02 * s:.3f}" size="{1.02 * head_r:.3f}"/>\n'
            f'{long_hair}    </body>\n')
    limbs = ''
    for side in ('l', 'r'):
        limbs += (f'    <body name="{p.name}_leg{side}" mocap="true">\n'
                  f'      <geom type="capsule" rgba="{c["trousers"]}" '
                  f'fromto="0 0 -0.02 0 0 {-(hip - 0.1):.3f}" size="{0.07 * g:.3f}"/>\n'
                  f'      <geom type="box" rgba="{c["shoes"]}" '
                  f'pos="{0.04 * s:.3f} 0 {-(hip - 0.04):.3f}" '
                  f'size="{0.11 * s:.3f} {0.045 * g:.3f} 0.04"/>\n    </body>\n'
                  f'    <body name="{p.name}_arm{side}" mocap="true">\n'
                  f'      <geom type="capsule" rgba="{c["shirt"]}" '
                  f'fromto="0 0 0 0 0 {-0.27 * s:.3f}" size="{0.05 * g:.3f}"/>\n'
                  f'      <geom type="capsule" rgba="{forearm}" '
                  f'fromto="0 0 {-0.27 * s:.3f} 0 0 {-0.52 * s:.3f}" size="{0.04 * g:.3f}"/>\n'
                  f'    </body>\n')
    return body + limbs
