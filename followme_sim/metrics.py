"""
Follow quality: what a run logs and the figures computed from it. No ROS.

Definitions (docs/simulator.md has the long form):
- hero_in_view_pct: camera frames with the hero's chest centre inside the image.
- hero_visible_pct: frames where the true mask shows at least `min_hero_pixels` hero pixels.
- hero_seen_pct: frames where the loop found the hero (our perception's `present` flag; for
  the perfect-perception reference, the same as visible).
- distance_rms_error_m: RMS over time of (horizontal drone-hero distance - follow distance).
- reacquire_*: an episode is a run of frames where the loop does not see the hero that
  contains at least one occluded frame (in view but hidden); its re-acquire time runs from
  its first frame to the first frame the loop sees the hero again.
- max_cmd_*: the largest velocity command received (after clamping to the drone's limits).
- jerk_*: the time derivative of the drone's acceleration (m/s^3).
- collisions: times the drone started touching the ground, scenery or a person.
"""

from dataclasses import dataclass, field
import math

import numpy as np

# Figures where lower is better; the rest (the percentages) are better higher.
LOWER_IS_BETTER = ('distance_rms_error_m', 'reacquire_mean_s', 'reacquire_max_s',
                   'max_cmd_speed_mps', 'max_cmd_yaw_rate', 'jerk_rms', 'jerk_max',
                   'collisions')
HIGHER_IS_BETTER = ('hero_in_view_pct', 'hero_visible_pct', 'hero_seen_pct')


@dataclass
class FlightLog:
    """Everything a run records; filled by Simulation, read by metrics and the report."""

    # Physics steps: t, drone x y z yaw, drone accel x y z, hero x y, command f l u yaw.
    steps: list = field(default_factory=list)
    # Camera frames: t, hero in view, hero pixels, seen by the loop (None = not yet known).
    frames: list = field(default_factory=list)
    collisions: list = field(default_factory=list)   # (t, what)
    commands: dict = field(default_factory=lambda: {'ok': 0, 'clamped': 0, 'rejected': 0})

    def step_array(self):
        return np.array(self.steps, dtype=float).reshape(-1, 16)


def compute(log: FlightLog, follow_distance, min_hero_pixels):
    """Compute the follow-quality figures of one run, as a JSON-ready dictionary."""
    steps = log.step_array()
    frames = log.frames
    result = {'duration_s': round(float(steps[-1, 0]), 3) if len(steps) else 0.0,
              'frames': len(frames)}
    n = max(len(frames), 1)
    in_view = np.array([f[1] for f in frames], dtype=bool)
    visible = np.array([f[2] >= min_hero_pixels for f in frames], dtype=bool)
    seen = np.array([visible[i] if f[3] is None else bool(f[3]) for i, f in enumerate(frames)],
                    dtype=bool)
    result['hero_in_view_pct'] = 100.0 * in_view.sum() / n
    result['hero_visible_pct'] = 100.0 * visible.sum() / n
    result['hero_seen_pct'] = 100.0 * seen.sum() / n

    if len(steps):
        distance = np.hypot(steps[:, 9] - steps[:, 1], steps[:, 10] - steps[:, 2])
        error = distance - follow_distance
        result['distance_rms_error_m'] = float(np.sqrt(np.mean(error ** 2)))
        result['distance_mean_m'] = float(distance.mean())
        cmd = steps[:, 11:15]
        result['max_cmd_speed_mps'] = float(np.max(np.hypot(cmd[:, 0], cmd[:, 1])))
        result['max_cmd_yaw_rate'] = float(np.max(np.abs(cmd[:, 3])))
        if len(steps) > 2:
            dt = np.diff(steps[:, 0])
            jerk = np.linalg.norm(np.diff(steps[:, 5:8], axis=0), axis=1) / np.maximum(dt, 1e-9)
            result['jerk_rms'] = float(np.sqrt(np.mean(jerk ** 2)))
            result['jerk_max'] = float(jerk.max())
    times = np.array([f[0] for f in frames])
    episodes = _occlusion_episodes(times, in_view, visible, seen)
    durations = [d for d in episodes if d is not None]
    result['occlusions'] = len(episodes)
    result['never_reacquired'] = len(episodes) - len(durations)
    result['reacquire_mean_s'] = float(np.mean(durations)) if durations else None
    result['reacquire_max_s'] = float(np.max(durations)) if durations else None
    result['collisions'] = len(log.collisions)
    result['commands'] = dict(log.commands)
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in result.items()}


def _occlusion_episodes(times, in_view, visible, seen):
    """Re-acquire time of each not-seen episode that holds an occluded frame (None: never)."""
    episodes, start, occluded = [], None, False
    for i in range(len(times)):
        if not seen[i]:
            if start is None:
                start, occluded = i, False
            occluded |= bool(in_view[i] and not visible[i])
        elif start is not None:
            if occluded:
                episodes.append(float(times[i] - times[start]))
            start = None
    if start is not None and occluded:
        episodes.append(None)
    return episodes


def compare(ours, reference):
    """
    Ratios ours / reference, and whether each is within `factor` of the reference.

    For lower-is-better figures the ratio is ours / reference; for percentages it is
    reference / ours, so in both cases 1.0 is as good as perfect perception and larger is
    worse. None where the reference is 0 or a figure is missing.
    """
    ratios = {}
    for key in LOWER_IS_BETTER + HIGHER_IS_BETTER:
        a, b = ours.get(key), reference.get(key)
        if a is None or b is None:
            ratios[key] = None
            continue
        num, den = (a, b) if key in LOWER_IS_BETTER else (b, a)
        if den == 0:
            ratios[key] = 1.0 if num == 0 else None
        else:
            ratios[key] = round(num / den, 3)
    return ratios


def format_table(ours, reference=None, ratios=None):
    """Format the figures as a plain-text table for the terminal."""
    keys = list(HIGHER_IS_BETTER) + ['distance_mean_m'] + list(LOWER_IS_BETTER) + \
        ['occlusions', 'never_reacquired']
    lines = [f"{'figure':<24}{'our loop':>12}" + (f"{'reference':>12}{'ratio':>8}"
                                                  if reference else '')]
    for key in keys:
        row = f'{key:<24}{_fmt(ours.get(key)):>12}'
        if reference is not None:
            row += f'{_fmt(reference.get(key)):>12}{_fmt((ratios or {}).get(key)):>8}'
        lines.append(row)
    return '\n'.join(lines)


def _fmt(value):
    if value is None:
        return '-'
    if isinstance(value, float):
        return f'{value:.2f}' if math.isfinite(value) else str(value)
    return str(value)
