"""
Scenarios: who walks where, what stands around, the sky and the light. No ROS, no MuJoCo.

A scenario file (followme_sim/scenarios/NAME.yaml) scripts the hero's walk and the crossings
that matter; the seed fills in the rest (bystanders, extra crossers, buildings, trees,
colours, sky, light), so one (scenario, seed) pair always gives the same world and the same
motions. See docs/simulator.md for the file format.
"""

from dataclasses import dataclass, field
import math
from pathlib import Path

import numpy as np
import yaml

SCENARIO_DIR = Path(__file__).resolve().parent / 'scenarios'

# The hero looks like the classic data set's hero, so the shipped model recognises her.
HERO_COLOURS = {
    'shirt': (0.78, 0.06, 0.05), 'trousers': (0.22, 0.07, 0.07), 'skin': (0.86, 0.66, 0.52),
    'hair': (0.48, 0.05, 0.04), 'shoes': (0.70, 0.08, 0.06)}
HERO_HEIGHT = 1.70

# Other people: no red, pink or maroon clothes, so only the hero wears the hero's colours.
SHIRTS = [(0.15, 0.25, 0.55), (0.1, 0.12, 0.3), (0.9, 0.9, 0.88), (0.5, 0.5, 0.52),
          (0.08, 0.08, 0.09), (0.2, 0.45, 0.25), (0.85, 0.75, 0.2), (0.1, 0.5, 0.55),
          (0.35, 0.3, 0.5), (0.6, 0.55, 0.4), (0.3, 0.55, 0.8), (0.25, 0.3, 0.25)]
TROUSERS = [(0.1, 0.12, 0.25), (0.06, 0.06, 0.07), (0.35, 0.36, 0.38), (0.55, 0.5, 0.35),
            (0.2, 0.3, 0.5), (0.25, 0.22, 0.18)]
HAIR = [(0.05, 0.04, 0.03), (0.25, 0.16, 0.08), (0.75, 0.62, 0.35), (0.6, 0.6, 0.6),
        (0.12, 0.09, 0.06)]
SKIN = [(0.95, 0.8, 0.68), (0.86, 0.66, 0.52), (0.65, 0.45, 0.32), (0.42, 0.28, 0.18)]
SHOES = [(0.1, 0.1, 0.1), (0.9, 0.9, 0.9), (0.35, 0.25, 0.15)]
BUILDING_WALLS = [(0.62, 0.36, 0.28), (0.72, 0.7, 0.66), (0.85, 0.8, 0.68), (0.5, 0.52, 0.55),
                  (0.55, 0.3, 0.25)]


class ScenarioError(ValueError):
    """A scenario name or file that cannot be used; the message says what to fix."""


class WalkPath:
    """
    A person walking waypoints in order at one speed, standing still where told.

    points: (N, 2) metres; pauses[i]: seconds standing on arrival at point i (pauses[0] is a
    wait before starting). After the last point the person stands there.
    """

    def __init__(self, points, pauses, speed):
        self.points = np.asarray(points, dtype=float).reshape(-1, 2)
        self.pauses = np.asarray(pauses, dtype=float)
        self.speed = float(speed)
        if len(self.points) < 1 or len(self.pauses) != len(self.points) or self.speed <= 0:
            raise ScenarioError('a path needs >= 1 point, a pause per point and a speed > 0')
        seg = np.diff(self.points, axis=0)
        self.lengths = np.hypot(seg[:, 0], seg[:, 1])
        self.headings = np.arctan2(seg[:, 1], seg[:, 0]) if len(seg) else np.zeros(0)
        # Time at which each point is reached and left.
        arrive, leave, t = [], [], 0.0
        for i in range(len(self.points)):
            if i > 0:
                t += self.lengths[i - 1] / self.speed
            arrive.append(t)
            t += self.pauses[i]
            leave.append(t)
        self.arrive, self.leave = np.array(arrive), np.array(leave)
        self.walked_at_point = np.concatenate([[0.0], np.cumsum(self.lengths)])

    def state(self, t):
        """(x, y, heading, moving, walked distance) at time t (s)."""
        points, n = self.points, len(self.points)
        i = int(np.searchsorted(self.leave, t, side='right')) - 1  # last point left by t
        if i < 0 or i == n - 1:  # waiting at the start, or arrived for good
            at = 0 if i < 0 else n - 1
            heading = 0.0 if n == 1 else self.headings[min(at, n - 2)]
            return points[at, 0], points[at, 1], heading, False, self.walked_at_point[at]
        if t >= self.arrive[i + 1]:  # standing at point i + 1
            return (points[i + 1, 0], points[i + 1, 1], self.headings[i], False,
                    self.walked_at_point[i + 1])
        frac = (t - self.leave[i]) * self.speed / max(self.lengths[i], 1e-9)
        xy = points[i] + frac * (points[i + 1] - points[i])
        walked = self.walked_at_point[i] + frac * self.lengths[i]
        return xy[0], xy[1], self.headings[i], True, walked

    def position_at_distance(self, walked):
        """(x, y, heading) after walking `walked` metres along the path."""
        i = int(np.clip(np.searchsorted(self.walked_at_point, walked) - 1, 0,
                        max(len(self.lengths) - 1, 0)))
        if not len(self.lengths):
            return self.points[0, 0], self.points[0, 1], 0.0
        frac = (walked - self.walked_at_point[i]) / max(self.lengths[i], 1e-9)
        xy = self.points[i] + frac * (self.points[i + 1] - self.points[i])
        return xy[0], xy[1], self.headings[i]


@dataclass
class Person:
    name: str
    path: WalkPath
    height: float
    girth: float           # width scale: 1.0 is an average build
    colours: dict          # shirt, trousers, skin, hair, shoes: RGB 0..1
    hero: bool = False
    long_hair: bool = False


@dataclass
class Obstacle:
    kind: str              # 'building', 'tree', 'lamp', 'kiosk', 'awning'
    x: float
    y: float
    yaw: float
    # building/kiosk: half sizes (x, y, z); tree/lamp: (radius, height);
    # awning: (half length, half width, roof height)
    size: tuple
    colour: tuple


@dataclass
class Scenario:
    name: str
    description: str
    seed: int
    duration: float
    hero: Person
    others: list
    obstacles: list
    pavements: list        # (x0, y0, x1, y1, half_width) strips along the hero's route
    drone_start: tuple     # x, y, z, yaw
    sky: dict = field(default_factory=dict)
    light: dict = field(default_factory=dict)

    @property
    def people(self):
        return [self.hero] + list(self.others)


def available():
    """Names of the scenarios shipped with the package."""
    return sorted(p.stem for p in SCENARIO_DIR.glob('*.yaml'))


def load(name_or_path, seed=0):
    """Build the scenario `name_or_path` (a shipped name or a YAML file) for `seed`."""
    path = Path(name_or_path)
    if not path.suffix:
        path = SCENARIO_DIR / f'{name_or_path}.yaml'
    if not path.is_file():
        raise ScenarioError(f"no scenario '{name_or_path}' (shipped: {', '.join(available())}; "
                            'or give the path of a .yaml file)')
    with open(path) as stream:
        spec = yaml.safe_load(stream) or {}
    try:
        return build(spec, seed, name=path.stem)
    except (KeyError, TypeError, ValueError) as err:
        raise ScenarioError(f'{path}: {err}') from err


def build(spec, seed, name='custom'):
    """Turn a scenario dictionary (the YAML's content) into a Scenario for `seed`."""
    rng = np.random.default_rng(seed)
    hero_spec = spec['hero']
    points, pauses = _parse_waypoints(hero_spec['path'])
    hero_path = WalkPath(points, pauses, hero_spec.get('speed', 1.3))
    hero = Person('hero', hero_path, HERO_HEIGHT, 1.0, dict(HERO_COLOURS), hero=True,
                  long_hair=True)
    duration = float(spec.get('duration', 30.0))
    drone_spec = spec.get('drone', {})
    behind, height = float(drone_spec.get('behind', 4.0)), float(drone_spec.get('height', 3.0))
    hx, hy, heading, _, _ = hero_path.state(0.0)
    drone_start = (hx - behind * math.cos(heading), hy - behind * math.sin(heading), height,
                   heading)

    others = []
    for group in spec.get('crossings', []):
        others += _crossing_group(rng, hero_path, group, len(others))
    for _ in range(int(spec.get('random_crossings', 0))):
        group = {'time': rng.uniform(2.0, duration - 2.0), 'along': rng.uniform(-3.0, 6.0),
                 'count': 1, 'speed': rng.uniform(0.9, 1.6)}
        others += _crossing_group(rng, hero_path, group, len(others))
    for _ in range(int(spec.get('bystanders', 0))):
        others.append(_bystander(rng, hero_path, len(others)))

    pavements = [(*points[i], *points[i + 1], 2.5) for i in range(len(points) - 1)]
    obstacles = [_awning(hero_path, item) for item in spec.get('awnings', [])]
    obstacles += _scenery(rng, hero_path, spec.get('scenery', {}))
    return Scenario(name=name, description=str(spec.get('description', '')), seed=int(seed),
                    duration=duration, hero=hero, others=others, obstacles=obstacles,
                    pavements=pavements, drone_start=drone_start, sky=_sky(rng),
                    light=_light(rng))


def _parse_waypoints(items):
    points, pauses = [], []
    for item in items:
        if len(item) not in (2, 3):
            raise ValueError(f'a waypoint is [x, y] or [x, y, pause_s], not {item}')
        points.append((float(item[0]), float(item[1])))
        pauses.append(float(item[2]) if len(item) == 3 else 0.0)
    return points, pauses


def _random_person(rng, name, path):
    colours = {'shirt': SHIRTS[rng.integers(len(SHIRTS))],
               'trousers': TROUSERS[rng.integers(len(TROUSERS))],
               'skin': SKIN[rng.integers(len(SKIN))], 'hair': HAIR[rng.integers(len(HAIR))],
               'shoes': SHOES[rng.integers(len(SHOES))]}
    return Person(name, path, float(rng.uniform(1.5, 1.95)), float(rng.uniform(0.85, 1.25)),
                  colours, long_hair=bool(rng.random() < 0.3))


def _crossing_group(rng, hero_path, group, first_index):
    """
    People who cross the hero's route where the hero is at `time`, offset by `along` m.

    along < 0 puts the crossing behind the hero, between her and the follower, where the
    crossers hide her from the camera.
    """
    t = float(group['time'])
    hx, hy, _, _, walked = hero_path.state(t)
    cx, cy, heading = hero_path.position_at_distance(max(walked + float(group['along']), 0.0))
    side = 1.0 if rng.random() < 0.5 else -1.0
    angle = heading + side * math.pi / 2 + rng.uniform(-0.3, 0.3)
    speed = float(group.get('speed', 1.3))
    half_span = float(group.get('span', 9.0))
    direction = np.array([math.cos(angle), math.sin(angle)])
    people = []
    for k in range(int(group.get('count', 1))):
        # A loose cluster: rows of two, a little apart, all reaching the route together.
        offset = np.array([-direction[1], direction[0]]) * ((k % 2) - 0.5) * 0.7
        back = (k // 2) * 0.8
        start = np.array([cx, cy]) - direction * (half_span + back) + offset
        end = np.array([cx, cy]) + direction * (half_span - back) + offset
        wait = max(t - (half_span + back) / speed, 0.0)
        path = WalkPath([start, end], [wait, 0.0], speed * rng.uniform(0.95, 1.05))
        people.append(_random_person(rng, f'person{first_index + k}', path))
    return people


def _bystander(rng, hero_path, index):
    """Someone strolling up and down beside the route, 3 to 9 m from it."""
    walked = rng.uniform(0.0, hero_path.walked_at_point[-1] + 10.0)
    x, y, heading = hero_path.position_at_distance(walked)
    side = rng.choice([-1.0, 1.0]) * rng.uniform(3.0, 9.0)
    base = np.array([x - side * math.sin(heading), y + side * math.cos(heading)])
    stroll = np.array([math.cos(heading), math.sin(heading)]) * rng.uniform(-6.0, 6.0)
    pauses = [rng.uniform(0.0, 6.0), rng.uniform(0.0, 6.0), 0.0]
    path = WalkPath([base, base + stroll, base], pauses, rng.uniform(0.6, 1.3))
    return _random_person(rng, f'person{index}', path)


def _clear_of_route(points, x, y, clearance):
    for i in range(len(points) - 1):
        if _segment_distance(points[i], points[i + 1], (x, y)) < clearance:
            return False
    return True


def _segment_distance(a, b, p):
    a, b, p = (np.asarray(v, dtype=float) for v in (a, b, p))
    ab = b - a
    frac = np.clip(np.dot(p - a, ab) / max(np.dot(ab, ab), 1e-9), 0.0, 1.0)
    return float(np.hypot(*(p - a - frac * ab)))


def _scenery(rng, hero_path, spec):
    """Place buildings well away from the route, trees, lamps and kiosks closer to it."""
    points = hero_path.points
    total = hero_path.walked_at_point[-1]
    obstacles = []
    kinds = (('building', float(spec.get('building_spacing', 14.0)), (10.0, 18.0), 9.0),
             ('tree', float(spec.get('tree_spacing', 9.0)), (5.0, 8.0), 4.5),
             ('lamp', float(spec.get('lamp_spacing', 12.0)), (3.5, 4.5), 3.2),
             ('kiosk', float(spec.get('kiosk_spacing', 30.0)), (5.5, 8.0), 5.0))
    for kind, spacing, (near, far), clearance in kinds:
        walked = rng.uniform(-10.0, 0.0)
        while walked < total + 25.0:
            x, y, heading = hero_path.position_at_distance(walked)
            if walked < 0.0 or walked > total:  # before the start / past the end: extend
                x += (walked - np.clip(walked, 0.0, total)) * math.cos(heading)
                y += (walked - np.clip(walked, 0.0, total)) * math.sin(heading)
            for side in (-1.0, 1.0):
                if rng.random() < 0.25:
                    continue
                lateral = side * rng.uniform(near, far)
                ox = x - lateral * math.sin(heading)
                oy = y + lateral * math.cos(heading)
                obstacle = _obstacle(rng, kind, ox, oy, heading)
                reach = clearance + (max(obstacle.size[:2]) if kind in ('building', 'kiosk')
                                     else obstacle.size[0])
                if kind == 'building':
                    reach = clearance + obstacle.size[1]  # the side facing the route
                if _clear_of_route(points, ox, oy, reach):
                    obstacles.append(obstacle)
            walked += spacing * rng.uniform(0.8, 1.2)
    return obstacles


def _awning(hero_path, spec):
    """
    Place a roof over the route from `start` to `end` metres walked, `height` m up.

    The hero walks under it and the follower, flying above, loses sight of her.
    """
    start, end = float(spec['start']), float(spec['end'])
    x0, y0, heading = hero_path.position_at_distance(start)
    x1, y1, _ = hero_path.position_at_distance(end)
    size = ((end - start) / 2, float(spec.get('width', 3.0)) / 2, float(spec.get('height', 2.3)))
    return Obstacle('awning', (x0 + x1) / 2, (y0 + y1) / 2, heading, size, (0.2, 0.45, 0.35))


def _obstacle(rng, kind, x, y, heading):
    if kind == 'building':
        half = (rng.uniform(4.0, 8.0), rng.uniform(3.0, 5.0), rng.uniform(3.5, 9.0))
        colour = BUILDING_WALLS[rng.integers(len(BUILDING_WALLS))]
        return Obstacle(kind, x, y, heading, half, colour)
    if kind == 'tree':
        return Obstacle(kind, x, y, 0.0, (rng.uniform(1.2, 2.0), rng.uniform(4.0, 6.5)),
                        (0.18 + rng.uniform(0, 0.1), 0.45 + rng.uniform(0, 0.15), 0.15))
    if kind == 'lamp':
        return Obstacle(kind, x, y, 0.0, (0.08, rng.uniform(3.5, 4.5)), (0.2, 0.2, 0.22))
    half = (rng.uniform(0.8, 1.5), rng.uniform(0.8, 1.5), rng.uniform(1.1, 1.4))
    colour = ((0.2, 0.4, 0.6), (0.8, 0.75, 0.6), (0.3, 0.5, 0.3))[rng.integers(3)]
    return Obstacle(kind, x, y, heading, half, colour)


def _sky(rng):
    top = np.array([0.25, 0.45, 0.8]) + rng.uniform(-0.12, 0.12, 3)
    horizon = np.array([0.85, 0.9, 0.95]) + rng.uniform(-0.1, 0.05, 3)
    return {'top': tuple(np.clip(top, 0, 1)), 'horizon': tuple(np.clip(horizon, 0, 1))}


def _light(rng):
    azimuth = rng.uniform(0, 2 * math.pi)
    elevation = rng.uniform(math.radians(35), math.radians(75))
    direction = (-math.cos(elevation) * math.cos(azimuth),
                 -math.cos(elevation) * math.sin(azimuth), -math.sin(elevation))
    return {'direction': direction, 'diffuse': float(rng.uniform(0.45, 0.75)),
            'ambient': float(rng.uniform(0.3, 0.45))}
