"""
Synthesize far-away heroes: paste people cut out of training frames, shrunk, into other frames.

    python -m training.paste_people --source ../shared/data/udacity_followme/train \
        --output training_runs/pasted --frames 1500

Why: the shipped network finds 93 % of the training set's heroes of 25-50 pixels but 14 % of
the validation set's and 34 % of the patrol set's (docs/training.md). The training set's far
heroes come from a few recorded sequences, and the network learns those scenes rather than
small people. Copy-paste augmentation (Kisantal et al., 2019, "Augmentation for small object
detection") puts small heroes into many scenes instead.

Each output frame is a training frame without the hero, with one hero and up to two other
people pasted in, each cut out of another frame (a whole person: one connected blob off the
frame's edge, at least 1.5 times as tall as wide), mirrored at random, shrunk to a height
drawn log-uniformly from --height-range and alpha-blended at a random place in the lower part
of the frame (where people stand). Others are pasted too, so that "looks pasted" does not mean
"hero". A pixel takes the pasted class where the shrunk cutout covers at least half of it.
Output: the classic layout, a manifest.json and preview.png (image | mask for the first frames).
"""

import argparse
from dataclasses import dataclass
import math
from pathlib import Path

import cv2
from followme_common.scoring import HERO, OTHERS
import numpy as np
from tqdm import tqdm

from training.data import DataError, find_pairs, MASK_COLOURS, mask_to_ids, read_rgb, save_json

MAX_OTHERS = 2
MIN_ASPECT = 1.5
# How a cutout is shrunk: 'area' averages (smooth, blended edges), 'nearest' picks pixels
# (hard, aliased edges, as the simulator renders a far-away person).
SHRINK = {'area': cv2.INTER_AREA, 'nearest': cv2.INTER_NEAREST}


@dataclass(frozen=True)
class Cutout:
    """One person: RGB pixels and coverage (1 inside the person) over its bounding box."""

    rgb: np.ndarray
    alpha: np.ndarray
    class_id: int


def person_cutouts(image, ids, class_id, min_pixels) -> list:
    """
    Cut out the whole people of one class.

    A whole person is a connected blob of >= min_pixels, off the frame's edge, at least
    MIN_ASPECT times as tall as wide (a standing person, not a part of one).
    """
    count, labels, stats, _ = cv2.connectedComponentsWithStats(
        (ids == class_id).view(np.uint8), connectivity=8)
    height, width = ids.shape
    cutouts = []
    for label in range(1, count):
        x, y, w, h, area = (int(v) for v in stats[label])
        if area < min_pixels or x == 0 or y == 0 or x + w == width or y + h == height:
            continue
        if h < MIN_ASPECT * w:
            continue
        alpha = (labels[y:y + h, x:x + w] == label).astype(np.float32)
        cutouts.append(Cutout(image[y:y + h, x:x + w].copy(), alpha, class_id))
    return cutouts


def paste(image, ids, cutout: Cutout, height, rng, flip, shrink='area'):
    """Shrink `cutout` to `height` pixels and blend it into image/ids in place; return its box."""
    scale = height / cutout.alpha.shape[0]
    size = (max(1, round(cutout.alpha.shape[1] * scale)), max(1, round(height)))
    rgb = cv2.resize(cutout.rgb, size, interpolation=SHRINK[shrink]).astype(np.float32)
    alpha = cv2.resize(cutout.alpha, size, interpolation=SHRINK[shrink])
    if flip:
        rgb, alpha = rgb[:, ::-1], alpha[:, ::-1]
    frame_h, frame_w = ids.shape
    w, h = size
    if w > frame_w or h > frame_h:
        return None
    # Feet in the lower 70 % of the frame, where the ground is in these camera views.
    bottom = int(rng.integers(max(h, int(0.3 * frame_h)), frame_h + 1))
    x, y = int(rng.integers(0, frame_w - w + 1)), bottom - h
    region = image[y:y + h, x:x + w].astype(np.float32)
    blended = alpha[..., None] * rgb + (1.0 - alpha[..., None]) * region
    image[y:y + h, x:x + w] = np.clip(blended + 0.5, 0, 255).astype(np.uint8)
    ids[y:y + h, x:x + w][alpha >= 0.5] = cutout.class_id
    return x, y, w, h


def load_frames(source, size) -> tuple:
    """(images, ids) of a classic-layout folder, every frame resized to size (H, W)."""
    images, ids = [], []
    height, width = size
    for pair in tqdm(find_pairs(source), desc='reading', unit='frame'):
        image = read_rgb(pair.image)
        mask = mask_to_ids(read_rgb(pair.mask), pair.mask)
        images.append(cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR))
        ids.append(cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST))
    return images, ids


def synthesize(images, ids, frames, seed=0, height_range=(6.0, 48.0), min_cutout_pixels=400,
               others_probability=0.5, shrink='area', hero_share=1.0):
    """
    Yield `frames` (image, ids) pairs: hero-free frames with small people pasted in.

    A share hero_share of the frames (default: all) gets one small hero; the others get small
    other people only (at least one), so that "small pasted person" does not mean "hero".
    Raises DataError when the source has no hero-free frame or no whole hero to cut out.
    """
    heroes, others, backgrounds = [], [], []
    for index, (image, mask) in enumerate(zip(images, ids)):
        heroes += person_cutouts(image, mask, HERO, min_cutout_pixels)
        others += person_cutouts(image, mask, OTHERS, min_cutout_pixels)
        if (mask == HERO).sum() == 0:
            backgrounds.append(index)
    if not heroes:
        raise DataError(f'no whole hero of at least {min_cutout_pixels} pixels to cut out '
                        '(one blob off the frame edge); lower --min-cutout-pixels')
    if not backgrounds:
        raise DataError('no frame without the hero to paste into')
    low, high = (math.log(v) for v in height_range)
    rng = np.random.default_rng(seed)
    for _ in range(frames):
        index = backgrounds[int(rng.integers(len(backgrounds)))]
        image, mask = images[index].copy(), ids[index].copy()
        # No draw for the default share: pasted sets made before it stay the same.
        with_hero = hero_share >= 1.0 or rng.random() < hero_share
        extra = [others[int(rng.integers(len(others)))] for _ in range(MAX_OTHERS)
                 if others and rng.random() < others_probability]
        if not with_hero and not extra and others:
            extra = [others[int(rng.integers(len(others)))]]
        hero = [heroes[int(rng.integers(len(heroes)))]] if with_hero else []
        # The hero last, so a pasted other never hides it.
        for cutout in extra + hero:
            paste(image, mask, cutout, math.exp(rng.uniform(low, high)), rng,
                  bool(rng.random() < 0.5), shrink)
        yield image, mask


def online_dataset(images, ids, seed=0, height_range=(6.0, 48.0), shrink='area'):
    """
    Return an endless tf.data stream of pasted (image, ids) pairs made from these frames.

    The on-the-fly version of write_pasted: a new background, hero, size and place for every
    draw, instead of a fixed set of frames seen again each epoch. Raises DataError as
    synthesize does, at once.
    """
    import sys

    import tensorflow as tf
    next(synthesize(images, ids, 1, seed, height_range, shrink=shrink))  # fail here, not later
    height, width = ids[0].shape
    return tf.data.Dataset.from_generator(
        lambda: synthesize(images, ids, sys.maxsize, seed, height_range, shrink=shrink),
        output_signature=(tf.TensorSpec((height, width, 3), tf.uint8),
                          tf.TensorSpec((height, width), tf.uint8)))


def preview(pairs, path, columns=4):
    """Write the given pairs as image | mask tiles in one PNG."""
    tiles = [np.hstack([image, MASK_COLOURS[mask]]) for image, mask in pairs]
    while len(tiles) % columns:
        tiles.append(np.zeros_like(tiles[0]))
    rows = [np.hstack(tiles[i:i + columns]) for i in range(0, len(tiles), columns)]
    cv2.imwrite(str(path), cv2.cvtColor(np.vstack(rows), cv2.COLOR_RGB2BGR))


def write_pasted(source, output, frames, seed=0, size=(256, 256), height_range=(6.0, 48.0),
                 min_cutout_pixels=400, prefix='pasted', preview_frames=16,
                 shrink='area', hero_share=1.0) -> dict:
    """Write `frames` pasted pairs in the classic layout under output; return the manifest."""
    images, ids = load_frames(source, size)
    output = Path(output)
    (output / 'images').mkdir(parents=True, exist_ok=True)
    (output / 'masks').mkdir(parents=True, exist_ok=True)
    shown, hero_pixels = [], []
    pairs = synthesize(images, ids, frames, seed, height_range, min_cutout_pixels,
                       shrink=shrink, hero_share=hero_share)
    for index, (image, mask) in enumerate(tqdm(pairs, total=frames, desc='pasting',
                                               unit='frame')):
        cv2.imwrite(str(output / 'images' / f'{prefix}_cam1_{index:05d}.jpeg'),
                    cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
        cv2.imwrite(str(output / 'masks' / f'{prefix}_mask_{index:05d}.png'),
                    cv2.cvtColor(MASK_COLOURS[mask], cv2.COLOR_RGB2BGR))
        if (mask == HERO).any():
            hero_pixels.append(int((mask == HERO).sum()))
        if len(shown) < preview_frames:
            shown.append((image, mask))
    if shown:
        preview(shown, output / 'preview.png')
    manifest = {'source': str(source), 'frames': frames, 'seed': seed, 'size': list(size),
                'height_range': list(height_range), 'min_cutout_pixels': min_cutout_pixels,
                'shrink': shrink, 'hero_share': hero_share,
                'frames_with_hero': len(hero_pixels),
                'hero_pixels_median': float(np.median(hero_pixels)) if hero_pixels else 0.0}
    save_json(output / 'manifest.json', manifest)
    return manifest


def main(argv=None):
    parser = argparse.ArgumentParser(
        description='Paste shrunk people cut out of training frames into hero-free frames: '
                    'training pairs with far-away heroes in many scenes (classic layout).')
    parser.add_argument('--source', required=True,
                        help='classic-layout folder to cut from and paste into (the train set)')
    parser.add_argument('--output', required=True, help='classic-layout folder to write')
    parser.add_argument('--frames', type=int, default=1500,
                        help='pairs to write (default: %(default)s)')
    parser.add_argument('--seed', type=int, default=0, help='random seed (default: 0)')
    parser.add_argument('--size', type=int, nargs=2, default=(256, 256),
                        metavar=('HEIGHT', 'WIDTH'), help='frame size (default: 256 256)')
    parser.add_argument('--height-range', type=float, nargs=2, default=(6.0, 48.0),
                        metavar=('MIN', 'MAX'),
                        help='pasted person height in pixels (default: 6 48)')
    parser.add_argument('--min-cutout-pixels', type=int, default=400,
                        help='smallest person to cut out (default: %(default)s)')
    parser.add_argument('--shrink', choices=sorted(SHRINK), default='area',
                        help="'area': smooth, blended edges; 'nearest': hard, aliased edges, "
                             'as the simulator draws far-away people (default: %(default)s)')
    parser.add_argument('--hero-share', type=float, default=1.0,
                        help='share of frames that get the hero; the rest get small other '
                             'people only, so a small pasted person is not always the hero '
                             '(default: %(default)s)')
    args = parser.parse_args(argv)
    if not 0.0 <= args.hero_share <= 1.0:
        parser.error('--hero-share must be between 0 and 1')
    if args.frames < 1:
        parser.error('--frames must be at least 1')
    if not 1.0 <= args.height_range[0] <= args.height_range[1]:
        parser.error('--height-range needs 1 <= MIN <= MAX')
    if min(args.size) < 8:
        parser.error('--size must be at least 8 8')
    try:
        manifest = write_pasted(args.source, args.output, args.frames, args.seed,
                                tuple(args.size), tuple(args.height_range),
                                args.min_cutout_pixels, shrink=args.shrink,
                                hero_share=args.hero_share)
    except DataError as err:
        parser.exit(2, f'error: {err}\n')
    print(f"wrote {manifest['frames']} pairs to {args.output} ({manifest['frames_with_hero']} "
          f"with a hero, median {manifest['hero_pixels_median']:.0f} pixels); see preview.png "
          'there')


if __name__ == '__main__':
    main()
