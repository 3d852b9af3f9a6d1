"""
Turn raw simulator captures into classic image/mask pairs.

    python -m training.raw_import --raw path/to/raw_sim_data/run1 --output data/sim_run1

A raw capture is four PNGs per frame, told apart by a camera tag in the file name:
`cam1_` the RGB frame, `cam2_` the other-people mask camera, `cam3_` the hero mask camera and
`cam4_` the environment mask camera. A mask camera draws its own class darker than the rest,
so each pixel gets the class whose camera is darkest there (ties go to the environment, then
to other people), as the original project's preprocess_ims.py did. The output is the classic
layout: images/<name>_cam1_<frame>.jpeg + masks/<name>_mask_<frame>.png (RGB one-hot).
"""

import argparse
from collections import defaultdict
from pathlib import Path
import re

import cv2
import numpy as np
from tqdm import tqdm

from training.data import DataError, MASK_COLOURS, read_rgb

CAMERAS = {'cam1': 'image', 'cam2': 'others', 'cam3': 'hero', 'cam4': 'environment'}
_CAMERA_TAG = re.compile(r'(cam[1-4])_')


def group_frames(raw_root) -> dict:
    """{frame key: {camera role: path}} for every PNG under raw_root; incomplete -> DataError."""
    raw_root = Path(raw_root)
    if not raw_root.is_dir():
        raise DataError(f'{raw_root} is not a folder of raw captures')
    frames = defaultdict(dict)
    for path in sorted(raw_root.rglob('*.png')):
        found = _CAMERA_TAG.search(path.name)
        if not found:
            continue
        key = str(path.relative_to(raw_root).with_name(_CAMERA_TAG.sub('', path.name, 1)))
        frames[key][CAMERAS[found.group(1)]] = path
    if not frames:
        raise DataError(f'{raw_root}: no raw captures (PNG files tagged cam1_ .. cam4_)')
    for key, cameras in frames.items():
        missing = [role for role in CAMERAS.values() if role not in cameras]
        if missing:
            raise DataError(f'{next(iter(cameras.values()))}: frame {key} lacks the '
                            f"{', '.join(missing)} camera image(s)")
    return dict(frames)


def combine_masks(environment, others, hero) -> np.ndarray:
    """Class ids (0 background, 1 others, 2 hero): per pixel, the darkest mask camera."""
    if not environment.shape == others.shape == hero.shape:
        raise ValueError(f'mask cameras differ in size: {environment.shape}, {others.shape}, '
                         f'{hero.shape}')
    stacked = np.stack([environment, others, hero], axis=-1).astype(np.int16)
    return np.argmin(stacked, axis=-1).astype(np.uint8)


def convert_frame(cameras: dict) -> tuple:
    """(RGB image, RGB one-hot mask) for one raw frame."""
    image = read_rgb(cameras['image'])
    # The mask cameras are grey renders; their red channel carries the response.
    layers = [read_rgb(cameras[role])[:, :, 0] for role in ('environment', 'others', 'hero')]
    for role, layer in zip(('environment', 'others', 'hero'), layers):
        if layer.shape != image.shape[:2]:
            raise DataError(f'{cameras[role]}: size {layer.shape[::-1]} differs from the RGB '
                            f'frame {image.shape[1::-1]}')
    return image, MASK_COLOURS[combine_masks(*layers)]


def import_raw(raw_root, output, prefix=None, jpeg_quality=95) -> int:
    """Write the classic layout under output; return the number of frames written."""
    frames = group_frames(raw_root)
    output = Path(output)
    (output / 'images').mkdir(parents=True, exist_ok=True)
    (output / 'masks').mkdir(parents=True, exist_ok=True)
    prefix = prefix or Path(raw_root).name
    for index, key in enumerate(tqdm(sorted(frames), desc='importing', unit='frame')):
        image, mask = convert_frame(frames[key])
        cv2.imwrite(str(output / 'images' / f'{prefix}_cam1_{index:05d}.jpeg'),
                    cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                    [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
        cv2.imwrite(str(output / 'masks' / f'{prefix}_mask_{index:05d}.png'),
                    cv2.cvtColor(mask, cv2.COLOR_RGB2BGR))
    return len(frames)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description='Convert raw simulator captures (cam1 RGB + cam2/cam3/cam4 mask cameras) '
                    'into classic images/ + masks/ pairs.')
    parser.add_argument('--raw', required=True, help='folder of raw captures (searched '
                                                     'recursively)')
    parser.add_argument('--output', required=True, help='classic-layout folder to write')
    parser.add_argument('--prefix', help='file name prefix (default: the raw folder name)')
    parser.add_argument('--jpeg-quality', type=int, default=95,
                        help='JPEG quality of the images, 1-100 (default: %(default)s)')
    args = parser.parse_args(argv)
    if not 1 <= args.jpeg_quality <= 100:
        parser.error('--jpeg-quality must be in 1..100')
    try:
        count = import_raw(args.raw, args.output, args.prefix, args.jpeg_quality)
    except DataError as err:
        parser.exit(2, f'error: {err}\n')
    print(f'wrote {count} image/mask pairs to {args.output}')


if __name__ == '__main__':
    main()
