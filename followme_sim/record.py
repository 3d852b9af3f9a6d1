"""
Record labelled frames from the simulator in the classic data-set layout.

    python -m followme_sim.record --out training_runs/sim_frames --frames 2000

writes images/NAME_cam1_NNNNN.jpeg (256x256 RGB) and masks/NAME_mask_NNNNN.png (red
background, green other people, blue hero), the same layout and colours as the classic
follow-me data, so training can mix both. Camera poses are the ones a follower sees: most
frames look at the hero from 3 to 15 m, mostly from behind, at varied heights, pitches and
yaw offsets; the rest look anywhere along the route (often no hero at all).
"""

import argparse
import json
import math
from pathlib import Path
import sys

import cv2
from followme_sim import scenario as scenarios
from followme_sim.world import CameraModel, CLASS_COLOURS, hero_position, World
import numpy as np


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog='python -m followme_sim.record',
        description='Export simulator frames and true masks in the classic follow-me data-set '
                    'layout (images/*.jpeg + masks/*.png) for training.')
    parser.add_argument('--out', type=Path, required=True,
                        help='output folder (images/ and masks/ are created inside)')
    parser.add_argument('--frames', type=int, default=2000, help='frames to write (default 2000)')
    parser.add_argument('--scenarios', default=','.join(scenarios.available()),
                        help='comma-separated scenario names (default: all shipped)')
    parser.add_argument('--seeds', type=int, default=4,
                        help='worlds (seeds) per scenario: colours, crowd, scenery (default 4)')
    parser.add_argument('--seed', type=int, default=1000,
                        help='first seed; also seeds the camera poses (default 1000)')
    parser.add_argument('--size', type=int, default=256, help='square image size (default 256)')
    parser.add_argument('--hero-fraction', type=float, default=0.7,
                        help='share of frames aimed at the hero (default 0.7)')
    parser.add_argument('--min-distance', type=float, default=3.0,
                        help='nearest camera-to-hero distance, horizontal (m, default 3)')
    parser.add_argument('--max-distance', type=float, default=15.0,
                        help='farthest camera-to-hero distance, horizontal (m, default 15)')
    parser.add_argument('--quality', type=int, default=95, help='JPEG quality (default 95)')
    args = parser.parse_args(argv)
    names = [n for n in args.scenarios.split(',') if n]
    unknown = [n for n in names if n not in scenarios.available()]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; shipped: "
                     f"{', '.join(scenarios.available())}")
    if args.frames < 1 or args.seeds < 1 or not 0 <= args.hero_fraction <= 1:
        parser.error('--frames and --seeds must be >= 1, --hero-fraction in [0, 1]')
    if not 0 < args.min_distance <= args.max_distance:
        parser.error('need 0 < --min-distance <= --max-distance')
    args.scenario_names = names
    return args


def mask_to_rgb(classes):
    """Class ids -> the classic mask colours (RGB)."""
    return CLASS_COLOURS[classes]


def camera_pose(rng, scen, t, aim_at_hero, min_distance, max_distance):
    """Pick a drone pose (x, y, z, yaw) and gimbal pitch like a follower's, or a random look."""
    hero, heading = hero_position(scen, t)
    if aim_at_hero:
        distance = rng.uniform(min_distance, max_distance)
        # Mostly from behind, sometimes from the side or the front.
        bearing = heading + math.pi + (rng.normal(0.0, 0.6) if rng.random() < 0.8
                                       else rng.uniform(-math.pi, math.pi))
        x = hero[0] + distance * math.cos(bearing)
        y = hero[1] + distance * math.sin(bearing)
        z = rng.uniform(1.8, 6.0)
        pitch = math.degrees(math.atan2(z - hero[2], distance)) + rng.uniform(-12.0, 12.0)
        yaw = math.atan2(hero[1] - y, hero[0] - x) + math.radians(rng.uniform(-20.0, 20.0))
    else:
        x = hero[0] + rng.uniform(-25.0, 25.0)
        y = hero[1] + rng.uniform(-25.0, 25.0)
        z = rng.uniform(1.8, 6.0)
        pitch = rng.uniform(5.0, 40.0)
        yaw = rng.uniform(-math.pi, math.pi)
    return (x, y, z, yaw), float(np.clip(pitch, -5.0, 80.0))


def record(args):
    from tqdm import tqdm
    images, masks = args.out / 'images', args.out / 'masks'
    images.mkdir(parents=True, exist_ok=True)
    masks.mkdir(parents=True, exist_ok=True)
    worlds = [(name, args.seed + k) for name in args.scenario_names for k in range(args.seeds)]
    per_world = np.full(len(worlds), args.frames // len(worlds))
    per_world[:args.frames % len(worlds)] += 1
    rng = np.random.default_rng(args.seed)
    counts = {'frames': 0, 'with_hero': 0, 'with_others': 0}
    with tqdm(total=args.frames, unit='frame', desc='recording') as bar:
        for (name, seed), count in zip(worlds, per_world):
            if count == 0:
                continue
            scen = scenarios.load(name, seed)
            world = World(scen, CameraModel(args.size, args.size))
            try:
                for i in range(count):
                    classes = _one_frame(rng, args, scen, world, images, masks,
                                         f'sim_{name}_s{seed}', i)
                    counts['frames'] += 1
                    counts['with_hero'] += int((classes == 2).any())
                    counts['with_others'] += int((classes == 1).any())
                    bar.update(1)
            finally:
                world.close()
    manifest = dict(counts, scenarios=args.scenario_names, seeds=args.seeds,
                    first_seed=args.seed, size=args.size)
    (args.out / 'manifest.json').write_text(json.dumps(manifest, indent=2) + '\n')
    return counts


def _one_frame(rng, args, scen, world, images, masks, prefix, i):
    aim = rng.random() < args.hero_fraction
    for _ in range(50):  # a pose that is not inside a building, tree or person
        t = rng.uniform(0.0, scen.duration)
        pose, pitch = camera_pose(rng, scen, t, aim, args.min_distance, args.max_distance)
        if world.collision(pose[:3], 0.4, t) is None:
            break
    world.set_time(t)
    world.set_drone(pose[:3], pose[3])
    world.set_camera(CameraModel(args.size, args.size, world.camera.hfov_deg, pitch))
    frame = world.render(depth=False)
    cv2.imwrite(str(images / f'{prefix}_cam1_{i:05d}.jpeg'), frame.rgb[:, :, ::-1],
                [cv2.IMWRITE_JPEG_QUALITY, args.quality])
    cv2.imwrite(str(masks / f'{prefix}_mask_{i:05d}.png'), mask_to_rgb(frame.classes)[:, :, ::-1])
    return frame.classes


def main(argv=None):
    args = parse_args(argv)
    counts = record(args)
    print(f"wrote {counts['frames']} frames to {args.out} ({counts['with_hero']} with the "
          f"hero, {counts['with_others']} with other people)")
    return 0


if __name__ == '__main__':
    sys.exit(main())
