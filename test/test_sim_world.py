"""The simulator without ROS: real MuJoCo renders, the drone model, scenarios and metrics."""

import math

from followme_sim import drone, metrics, reference, scenario
from followme_sim.simulation import SimSettings, Simulation
from followme_sim.world import CameraModel, hero_position, project, World, world_to_optical
import numpy as np
import pytest

SHORT_WALK = {
    'description': 'test walk', 'duration': 5.0,
    'hero': {'speed': 1.3, 'path': [[0, 0, 0.5], [30, 0]]},
    'crossings': [{'time': 2.0, 'along': 3.0, 'count': 2, 'speed': 1.4}],
    'bystanders': 3, 'drone': {'behind': 4.0, 'height': 3.0},
}
CAMERA = CameraModel(width=96, height=96)


@pytest.fixture
def walk_world():
    world = World(scenario.build(SHORT_WALK, seed=3), CAMERA)
    yield world
    world.close()


def _look_at_hero(world, t, behind=4.0, height=3.0):
    hero, heading = hero_position(world.scenario, t)
    position = [hero[0] - behind * math.cos(heading), hero[1] - behind * math.sin(heading),
                height]
    world.set_time(t)
    world.set_drone(position, heading)
    return hero, position, heading


def test_true_mask_agrees_with_render(walk_world):
    hero, position, heading = _look_at_hero(walk_world, 2.0)
    frame = walk_world.render()
    hero_pixels = frame.classes == 2
    assert hero_pixels.sum() > 50
    # Where the mask says hero, the render shows her red clothes and hair.
    r, g, b = frame.rgb[hero_pixels].astype(float).mean(axis=0)
    assert r > 1.6 * g and r > 1.6 * b
    # Her chest centre projects inside the hero blob.
    u, v = project(world_to_optical(hero, position, heading, CAMERA), CAMERA)
    rows, cols = np.nonzero(hero_pixels)
    assert cols.min() <= u <= cols.max() and rows.min() <= v <= rows.max()
    # Depth there is the distance along the optical axis (about 4.5 m away), sky has none.
    assert 3.5 < np.nanmedian(frame.depth[hero_pixels]) < 5.5
    assert np.isnan(frame.depth[0]).any()


def test_other_people_are_class_one_and_not_hero_coloured():
    world = World(scenario.load('crowd_crossing', seed=2), CameraModel(128, 128))
    try:
        found = 0
        for t in np.arange(4.0, 20.0, 2.0):
            _look_at_hero(world, t, behind=8.0, height=4.0)
            frame = world.render(depth=False)
            others = frame.classes == 1
            if others.sum() > 30:
                found += 1
                r, g, b = frame.rgb[others].astype(float).mean(axis=0)
                assert not (r > 1.6 * g and r > 1.6 * b)
        assert found >= 2
    finally:
        world.close()


def test_same_seed_same_world_other_seed_another():
    a, b = scenario.build(SHORT_WALK, 7), scenario.build(SHORT_WALK, 7)
    c = scenario.build(SHORT_WALK, 8)
    assert [(o.x, o.y, o.size) for o in a.obstacles] == [(o.x, o.y, o.size) for o in b.obstacles]
    assert [p.colours for p in a.people] == [p.colours for p in b.people]
    assert a.sky == b.sky and a.sky != c.sky
    frames = []
    for scen in (a, b, c):
        world = World(scen, CameraModel(64, 64))
        _look_at_hero(world, 3.0)
        frames.append(world.render(depth=False))
        world.close()
    assert np.array_equal(frames[0].rgb, frames[1].rgb)
    assert np.array_equal(frames[0].classes, frames[1].classes)
    assert not np.array_equal(frames[0].rgb, frames[2].rgb)


def test_every_shipped_scenario_loads_and_keeps_scenery_off_the_route():
    for name in scenario.available():
        scen = scenario.load(name, seed=0)
        assert scen.duration > 0 and scen.others
        world_points = scen.hero.path.points
        for obstacle in scen.obstacles:
            if obstacle.kind == 'awning':  # a roof over the route, on purpose
                assert obstacle.size[2] < scen.drone_start[2] - 0.5
                continue
            nearest = min(math.hypot(obstacle.x - x, obstacle.y - y) for x, y in world_points)
            assert nearest > 2.0, (name, obstacle)


def test_unknown_scenario_says_what_exists():
    with pytest.raises(scenario.ScenarioError, match='city_walk'):
        scenario.load('no_such_walk')


def test_walk_path_stops_and_goes():
    path = scenario.WalkPath([(0, 0), (2, 0), (2, 2)], [1.0, 2.0, 0.0], speed=1.0)
    assert path.state(0.5)[:2] == (0.0, 0.0) and not path.state(0.5)[3]   # waiting
    assert path.state(2.0)[0] == pytest.approx(1.0) and path.state(2.0)[3]  # walking
    assert path.state(4.0)[:2] == (2.0, 0.0) and not path.state(4.0)[3]   # the stop
    x, y, heading, moving, walked = path.state(5.5)
    assert (x, y) == pytest.approx((2.0, 0.5)) and heading == pytest.approx(math.pi / 2)
    assert path.state(99.0)[:2] == (2.0, 2.0) and walked == pytest.approx(2.5)


def test_drone_first_order_response_with_acceleration_limit():
    limits = drone.DroneLimits(max_accel=4.0, tau=0.35)
    d = drone.Drone(0.0, 0.0, 3.0, 0.0, limits)
    d.step(drone.Command(forward=2.0), 0.1)
    assert d.velocity[0] == pytest.approx(0.4)   # 2 / 0.35 > 4 m/s^2: the limit holds
    for _ in range(150):
        d.step(drone.Command(forward=2.0), 0.02)
    assert d.velocity[0] == pytest.approx(2.0, abs=0.01)
    assert d.position[0] > 5.0 and d.position[1] == pytest.approx(0.0)
    # Turned left by 90 degrees, "forward" is world +y.
    d = drone.Drone(0.0, 0.0, 3.0, math.pi / 2, limits)
    for _ in range(200):
        d.step(drone.Command(forward=1.0), 0.02)
    assert d.position[1] > 3.0 and abs(d.position[0]) < 1e-6
    d.step(drone.Command(yaw_rate=1.0), 0.02)
    assert d.yaw_rate > 0.0


def test_sanitize_rejects_garbage_and_clamps_excess():
    limits = drone.DroneLimits(max_speed=5.0, max_yaw_rate=1.5)
    assert drone.sanitize((math.nan, 0, 0, 0), limits) == (None, 'rejected')
    assert drone.sanitize((0, 0, 0, math.inf), limits) == (None, 'rejected')
    assert drone.sanitize((1e9, 0, 0, 0), limits) == (None, 'rejected')
    command, verdict = drone.sanitize((30.0, 40.0, 0.0, -9.0), limits)
    assert verdict == 'clamped'
    assert (command.forward, command.left) == pytest.approx((3.0, 4.0))
    assert command.yaw_rate == -1.5
    assert drone.sanitize((1.0, 0.0, 0.5, 0.2), limits)[1] == 'ok'


def test_stale_command_times_out_to_hover():
    settings = SimSettings(camera=CAMERA, command_timeout=0.5)
    sim = Simulation(scenario.build(SHORT_WALK, 1), settings)
    try:
        sim.set_command((2.0, 0.0, 0.0, 0.0))
        sim.advance(3.0)
        assert np.allclose(sim.drone.velocity, 0.0, atol=0.01)  # no new command: hovering
        steps = sim.log.step_array()
        assert steps[steps[:, 0] <= 0.5, 11].max() == 2.0
    finally:
        sim.close()


def test_metrics_occlusion_episode_and_ratios():
    log = metrics.FlightLog()
    # Frames at 10 Hz: seen, then hidden (in view, no pixels) for 3 frames, then seen again.
    for i, (pixels, seen) in enumerate([(100, True), (0, False), (0, False), (0, False),
                                        (80, False), (90, True)]):
        log.frames.append([i * 0.1, True, pixels, seen])
    for i in range(6):
        log.steps.append([i * 0.1, -4.0, 0, 3, 0, 0, 0, 0, 0, 0.5 * (i % 2), 0,
                          1.0, 0, 0, 0.1, 0])
    result = metrics.compute(log, follow_distance=4.0, min_hero_pixels=20)
    assert result['occlusions'] == 1 and result['reacquire_max_s'] == pytest.approx(0.4)
    assert result['hero_seen_pct'] == pytest.approx(100 * 2 / 6, abs=1e-3)
    assert result['distance_rms_error_m'] == pytest.approx(math.sqrt(0.125), rel=1e-3)
    ratios = metrics.compare({'distance_rms_error_m': 0.6, 'hero_in_view_pct': 90.0},
                             {'distance_rms_error_m': 0.5, 'hero_in_view_pct': 99.0})
    assert ratios['distance_rms_error_m'] == pytest.approx(1.2)
    assert ratios['hero_in_view_pct'] == pytest.approx(1.1)


def test_perfect_perception_reference_follows(tmp_path):
    params_file = tmp_path / 'params.yaml'
    params_file.write_text('/**/control_node:\n  ros__parameters:\n    follow_distance: 4.0\n'
                           '    camera_pitch_deg: 25.0\n')
    params = reference.follow_params_from_file(params_file)
    scen = scenario.build(SHORT_WALK, 0)
    result, log = reference.run(scen, SimSettings(camera=CAMERA), params, 4.0)
    assert result['hero_in_view_pct'] == 100.0
    assert result['collisions'] == 0
    steps = log.step_array()
    assert steps[-1, 1] - steps[0, 1] > 2.0       # the drone moved along with the hero
    assert result['distance_rms_error_m'] < 1.5
