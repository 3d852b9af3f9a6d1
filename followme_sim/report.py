"""What a run leaves behind: overlay video, trajectory/distance plot and summary JSON. No ROS."""

import json
from pathlib import Path

import cv2
from followme_sim.world import CLASS_COLOURS
import numpy as np

VIDEO_SCALE = 2  # the 256 px frames are small on a screen


def write(folder, summary, scenario, log, reference_log, video_frames, loop_masks, fps):
    """Write summary.json, trajectories.png and follow.mp4 into folder; return their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    summary_path = folder / 'summary.json'
    summary_path.write_text(json.dumps(summary, indent=2) + '\n')
    written.append(summary_path)
    written.append(plot(folder / 'trajectories.png', scenario, log, reference_log,
                        summary['follow_distance_m']))
    if video_frames:
        path = overlay_video(folder / 'follow.mp4', video_frames, loop_masks, log, fps)
        if path is not None:
            written.append(path)
    return written


def overlay(rgb, classes, alpha=0.45):
    """Tint other people green and the hero blue (the classic mask colours)."""
    tint = CLASS_COLOURS[classes].astype(np.float32)
    out = rgb.astype(np.float32)
    people = classes > 0
    out[people] = (1 - alpha) * out[people] + alpha * tint[people]
    return out.astype(np.uint8)


def overlay_video(path, video_frames, loop_masks, log, fps):
    """Write an mp4 of what the drone saw, tinted with the loop's mask (or the true one)."""
    height, width = video_frames[0][1].shape[:2]
    size = (width * VIDEO_SCALE, height * VIDEO_SCALE)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'mp4v'), max(fps, 1.0), size)
    if not writer.isOpened():
        print(f'warning: OpenCV cannot write {path} (no mp4v encoder); skipping the video')
        return None
    try:
        for index, rgb, true_classes in video_frames:
            classes = loop_masks.get(index)
            source = 'perception mask'
            if classes is None or classes.shape != true_classes.shape:
                classes, source = true_classes, 'true mask'
            frame = cv2.resize(overlay(rgb, np.clip(classes, 0, 2)), size,
                               interpolation=cv2.INTER_NEAREST)
            t, seen = log.frames[index][0], log.frames[index][3]
            label = f't {t:5.1f} s  {source}'
            if seen is False:
                label += '  hero lost'
            cv2.putText(frame, label, (8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (255, 255, 255),
                        2, cv2.LINE_AA)
            writer.write(frame[:, :, ::-1])
    finally:
        writer.release()
    return path


def plot(path, scenario, log, reference_log, follow_distance):
    """Top-down trajectories and the distance to the hero over time."""
    import matplotlib
    matplotlib.use('Agg')
    from matplotlib import pyplot as plt
    from matplotlib.patches import Circle, Rectangle

    fig, (ax_map, ax_dist) = plt.subplots(1, 2, figsize=(13, 5.5))
    for obstacle in scenario.obstacles:
        if obstacle.kind in ('building', 'kiosk', 'awning'):
            hx, hy, _ = obstacle.size
            corner = np.array([obstacle.x, obstacle.y]) - _rotate((hx, hy), obstacle.yaw)
            ax_map.add_patch(Rectangle(corner, 2 * hx, 2 * hy,
                                       angle=float(np.degrees(obstacle.yaw)),
                                       color=obstacle.colour, alpha=0.6))
        else:
            ax_map.add_patch(Circle((obstacle.x, obstacle.y), obstacle.size[0],
                                    color=obstacle.colour, alpha=0.6))
    for other in scenario.others:
        pts = other.path.points
        ax_map.plot(pts[:, 0], pts[:, 1], color='0.75', lw=0.8)
    steps = log.step_array()
    runs = [('our loop', steps, 'tab:blue', '-')]
    if reference_log is not None:
        runs.append(('perfect-perception reference', reference_log.step_array(), '0.4', '--'))
    if len(steps):
        ax_map.plot(steps[:, 9], steps[:, 10], color='tab:red', lw=2, label='hero')
    for label, data, colour, style in runs:
        if len(data):
            ax_map.plot(data[:, 1], data[:, 2], color=colour, ls=style, lw=1.5,
                        label=f'drone, {label}')
            distance = np.hypot(data[:, 9] - data[:, 1], data[:, 10] - data[:, 2])
            ax_dist.plot(data[:, 0], distance, color=colour, ls=style, label=label)
    for t, what in log.collisions:
        row = steps[np.searchsorted(steps[:, 0], t)] if len(steps) else None
        if row is not None:
            ax_map.plot(row[1], row[2], 'kx', ms=9)
    ax_map.set_aspect('equal')
    ax_map.set_title(f'{scenario.name} (seed {scenario.seed}): top view (m)')
    ax_map.legend(loc='best', fontsize=8)
    ax_dist.axhline(follow_distance, color='k', lw=0.8, label='follow distance')
    frames = log.frames
    for t, _, _, seen in frames:
        if seen is False:
            ax_dist.axvspan(t - 0.05, t + 0.05, color='tab:orange', alpha=0.2, lw=0)
    ax_dist.set_xlabel('time (s)')
    ax_dist.set_ylabel('horizontal distance to the hero (m)')
    ax_dist.set_title('distance (orange: our loop did not see the hero)')
    ax_dist.legend(loc='best', fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _rotate(vector, angle):
    c, s = np.cos(angle), np.sin(angle)
    return np.array([c * vector[0] - s * vector[1], s * vector[0] + c * vector[1]])
