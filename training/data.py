"""
Classic-layout data (`images/` + `masks/`) -> validated pairs -> a tf.data pipeline.

Frames are decoded and resized with OpenCV (INTER_LINEAR for images, INTER_NEAREST for masks,
as in evaluation and the perception node), in parallel inside tf.data, then cached in memory
as uint8. Shuffling, augmentation and the [-1, 1] scaling happen after the cache, batches are
prefetched. Any bad file stops the run with a DataError that names it.
"""

from dataclasses import dataclass
import hashlib
import json
import os
from pathlib import Path
import re

import cv2
from followme_common.scoring import HERO
import numpy as np
import tensorflow as tf
from tqdm import tqdm

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA_ROOT = REPO.parent / 'shared' / 'data' / 'udacity_followme'
IMAGE_DIR = 'images'
MASK_DIR = 'masks'
IMAGE_SUFFIXES = ('.jpeg', '.jpg', '.png')
MASK_SUFFIXES = ('.png',)
# Classic mask colours, RGB, in class-id order: red background, green others, blue hero.
MASK_COLOURS = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], dtype=np.uint8)
INPUT_SCALE = 1.0 / 127.5   # pixel_float = uint8 * scale + offset, in [-1, 1]
INPUT_OFFSET = -1.0


class DataError(ValueError):
    """A data set that cannot be used as is; the message names the file and what to do."""


@dataclass(frozen=True)
class Pair:
    image: Path
    mask: Path


def _files(folder: Path, suffixes) -> list:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in suffixes and p.is_file())


def find_pairs(root) -> list:
    """Image/mask pairs of one classic-layout folder, paired by sorted file name."""
    root = Path(root)
    image_dir, mask_dir = root / IMAGE_DIR, root / MASK_DIR
    for folder in (image_dir, mask_dir):
        if not folder.is_dir():
            raise DataError(f'{folder} does not exist: a data folder needs {IMAGE_DIR}/ and '
                            f'{MASK_DIR}/ side by side (the classic layout)')
    images, masks = _files(image_dir, IMAGE_SUFFIXES), _files(mask_dir, MASK_SUFFIXES)
    if len(images) != len(masks):
        extra = _first_unpaired(images, masks)
        raise DataError(f'{root}: {len(images)} images but {len(masks)} masks; '
                        f'first file without a partner: {extra}')
    if not images:
        raise DataError(f'{root}: no images in {image_dir} (expected {IMAGE_SUFFIXES})')
    return [Pair(i, m) for i, m in zip(images, masks)]


def _frame_key(path: Path) -> str:
    # '..._cam1_00042_...jpeg' and '..._mask_00042_...png' share everything but that word.
    return re.sub(r'_(cam\d*|mask)_', '_', path.stem)


def _first_unpaired(images, masks) -> Path:
    image_keys = {_frame_key(p): p for p in images}
    mask_keys = {_frame_key(p): p for p in masks}
    for key, path in list(image_keys.items()) + list(mask_keys.items()):
        if key not in image_keys or key not in mask_keys:
            return path
    return (images if len(images) > len(masks) else masks)[min(len(images), len(masks))]


def find_all_pairs(roots) -> list:
    """Pairs from one root or a list of roots (e.g. the classic set plus simulator frames)."""
    if isinstance(roots, (str, os.PathLike)):
        roots = [roots]
    pairs = []
    for root in roots:
        pairs.extend(find_pairs(root))
    return pairs


def mask_to_ids(mask_rgb: np.ndarray, path) -> np.ndarray:
    """RGB one-hot mask -> class ids (0 background, 1 others, 2 hero)."""
    if mask_rgb.ndim != 3 or mask_rgb.shape[2] < 3:
        raise DataError(f'{path}: mask must be an RGB image, got shape {mask_rgb.shape}')
    rgb = mask_rgb[:, :, :3]
    on = rgb > 127
    bad = (on.sum(axis=2) != 1) | (np.abs(rgb.astype(np.int16) - on * 255) > 64).any(axis=2)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise DataError(f'{path}: mask is not one-hot: {int(bad.sum())} pixels are not pure '
                        f'red/green/blue (first at row {row}, column {col}: '
                        f'RGB {tuple(int(v) for v in rgb[row, col])})')
    return np.argmax(on, axis=2).astype(np.uint8)


def read_rgb(path) -> np.ndarray:
    pixels = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if pixels is None:
        raise DataError(f'{path}: cannot read this image (missing, empty or corrupt); '
                        'remove or replace it')
    return cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)


def load_pair(pair: Pair, size) -> tuple:
    """
    Load one pair: (image uint8 (H, W, 3) RGB, ids uint8 (H, W), original (height, width)).

    Frames of any size are resized to `size` (H, W) the same way the node does.
    """
    height, width = size
    image = read_rgb(pair.image)
    mask = read_rgb(pair.mask)
    ids = mask_to_ids(mask, pair.mask)
    original = image.shape[:2]
    image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    ids = cv2.resize(ids, (width, height), interpolation=cv2.INTER_NEAREST)
    return image, ids, original


def _decode_fn(size):
    def decode(image_path, mask_path):
        try:
            image, ids, original = load_pair(
                Pair(Path(image_path.decode()), Path(mask_path.decode())), size)
        except DataError as err:
            # tf.data wraps exceptions; the marker lets materialize() recover the message.
            raise ValueError(f'DataError<<{err}>>') from err
        hero = np.int32(np.count_nonzero(ids == HERO))
        return image, ids, hero, np.asarray(original, np.int32)
    return decode


def decoded_dataset(pairs, size) -> tf.data.Dataset:
    """Parallel decode + memory cache: (image uint8, ids uint8, hero pixels, original size)."""
    height, width = size
    paths = tf.data.Dataset.from_tensor_slices(
        ([str(p.image) for p in pairs], [str(p.mask) for p in pairs]))

    def decode(image_path, mask_path):
        image, ids, hero, original = tf.numpy_function(
            _decode_fn(size), [image_path, mask_path], [tf.uint8, tf.uint8, tf.int32, tf.int32],
            stateful=False)
        image.set_shape([height, width, 3])
        ids.set_shape([height, width])
        hero.set_shape([])
        original.set_shape([2])
        return image, ids, hero, original

    return paths.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).cache()


@dataclass
class FrameSet:
    """A decoded, validated set of frames (uint8 images and class ids at the input size)."""

    pairs: list
    dataset: tf.data.Dataset   # the cached decode stage, filled by materialize()
    images: np.ndarray
    ids: np.ndarray
    hero_pixels: np.ndarray
    resized: int               # frames whose size differed from the most common one


def materialize(pairs, size, desc='decoding') -> FrameSet:
    """Decode every frame once (filling the cache), validating as it goes."""
    dataset = decoded_dataset(pairs, size)
    images, ids, hero, originals = [], [], [], []
    try:
        for image, mask, hero_pixels, original in tqdm(
                dataset.as_numpy_iterator(), total=len(pairs), desc=desc, unit='frame'):
            images.append(image)
            ids.append(mask)
            hero.append(hero_pixels)
            originals.append(tuple(original))
    except tf.errors.OpError as err:
        found = re.search(r'DataError<<(.*?)>>', err.message, re.S)
        if found:
            raise DataError(found.group(1)) from None
        raise
    common = max(set(originals), key=originals.count)
    return FrameSet(pairs, dataset, np.stack(images), np.stack(ids), np.asarray(hero),
                    sum(o != common for o in originals))


def to_model_input(images):
    """uint8 RGB -> float32 in [-1, 1], the classic normalisation (works on numpy or tf)."""
    if isinstance(images, np.ndarray):
        return images.astype(np.float32) * np.float32(INPUT_SCALE) + np.float32(INPUT_OFFSET)
    return tf.cast(images, tf.float32) * INPUT_SCALE + INPUT_OFFSET


def training_dataset(frames: FrameSet, batch_size: int, seed: int, augment_fn=None,
                     small_hero_pixels: int = 0, small_hero_repeats: int = 1,
                     extra: tf.data.Dataset = None, extra_share: float = 0.0,
                     false_hero_frames=(), false_hero_repeats: int = 1) -> tf.data.Dataset:
    """
    Build endless shuffled, augmented, prefetched (image float, ids uint8) batches.

    Frames whose hero covers 1..small_hero_pixels pixels (the far-away hero, the classic weak
    spot) are seen small_hero_repeats times per pass, and the frames at the indices
    false_hero_frames (frames without a hero where a model sees one) false_hero_repeats times.
    `extra`, an endless stream of (image uint8, ids uint8) pairs at the same size (frames
    pasted on the fly), makes up `extra_share` of the draws, before augmentation.
    """
    repeats = np.ones(len(frames.pairs), np.int64)
    if small_hero_repeats > 1:
        small = (frames.hero_pixels > 0) & (frames.hero_pixels <= small_hero_pixels)
        repeats[small] = small_hero_repeats
    if false_hero_repeats > 1 and len(false_hero_frames):
        repeats[np.asarray(false_hero_frames, np.int64)] = false_hero_repeats
    dataset = tf.data.Dataset.zip(
        frames.dataset.map(lambda image, ids, hero, original: (image, ids)),
        tf.data.Dataset.from_tensor_slices(repeats))
    dataset = dataset.flat_map(
        lambda pair, count: tf.data.Dataset.from_tensors(pair).repeat(count))
    dataset = dataset.shuffle(int(repeats.sum()), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.repeat()
    if extra is not None and extra_share > 0.0:
        dataset = tf.data.Dataset.sample_from_datasets(
            [dataset, extra], weights=[1.0 - extra_share, extra_share], seed=seed)
    if augment_fn is not None:
        # A counter gives each draw its own stateless seed: reproducible, new every epoch.
        dataset = tf.data.Dataset.zip(dataset, tf.data.Dataset.counter())
        dataset = dataset.map(
            lambda pair, n: augment_fn(pair[0], pair[1], tf.stack([tf.cast(seed, tf.int64), n])),
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    dataset = dataset.map(lambda image, ids: (to_model_input(image), ids),
                          num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def fingerprint(pairs) -> dict:
    """Hash the data's content (file names and bytes); saved with each run."""
    digest = hashlib.sha256()
    for pair in tqdm(pairs, desc='fingerprint', unit='frame', leave=False):
        for path in (pair.image, pair.mask):
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    roots = sorted({str(p.image.parent.parent) for p in pairs})
    return {'frames': len(pairs), 'roots': roots, 'sha256': digest.hexdigest()}


def save_json(path, payload):
    Path(path).write_text(json.dumps(payload, indent=2) + '\n')
