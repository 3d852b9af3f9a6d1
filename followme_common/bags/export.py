"""
bag_export: camera frames + true masks from a bag -> the classic training layout.

Writes OUTPUT/images/<prefix>_cam1_NNNNNN.jpeg (RGB, 256x256 by default) and
OUTPUT/masks/<prefix>_mask_NNNNNN.png (one-hot RGB: red background, green other people, blue
hero), the layout of the classic follow-me data set, so `training/` reads it as one more data
root. A frame is paired with the mask that has the same header stamp; frames without a mask are
skipped and counted (or, with --images-only, every frame is written to images/ alone, for
inference or labelling). ROS-free: messages are decoded with `rosbags`.
"""

import argparse
from dataclasses import dataclass, field
from pathlib import Path
import re
import sys

import cv2
from followme_common.bags.storage import BagError, BagReader
from followme_common.image_msgs import (compressed_to_rgb, image_to_array, image_to_rgb,
                                        ImageConversionError)
import numpy as np
from rosbags.typesys import get_typestore, Stores

IMAGE_TYPE = 'sensor_msgs/msg/Image'
# Camera bags from real robots mostly hold the frames compressed (JPEG or PNG).
COMPRESSED_TYPE = 'sensor_msgs/msg/CompressedImage'
# Classic mask colours, RGB, in class-id order: red background, green others, blue hero.
MASK_COLOURS = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], dtype=np.uint8)
MASK_ENCODINGS = ('mono8', '8UC1')
# How many frames (or masks) may wait for their partner; the simulator publishes both together.
PAIRING_WINDOW = 100
JPEG_QUALITY = 95


@dataclass
class ExportSummary:
    output: Path
    pairs: int = 0               # image + mask written
    images_only: int = 0         # images written without a mask (--images-only)
    images_without_mask: int = 0  # skipped: no mask with the same stamp
    masks_without_image: int = 0
    thinned: int = 0             # skipped by --every
    bad: int = 0                 # undecodable frames or masks
    problems: list = field(default_factory=list)  # the first few reasons, for the user

    def note(self, text):
        self.bad += 1
        if len(self.problems) < 5:
            self.problems.append(text)


def topic_name(name: str) -> str:
    return name if name.startswith('/') else '/' + name


def mask_ids_to_rgb(ids: np.ndarray) -> np.ndarray:
    """Class ids (0 background, 1 others, 2 hero) -> classic one-hot RGB mask."""
    if ids.size and int(ids.max()) >= len(MASK_COLOURS):
        raise ValueError(f'mask has class id {int(ids.max())}; expected 0, 1 or 2')
    return MASK_COLOURS[ids]


class _Exporter:
    """Pairs frames and masks by stamp and writes them, counting what it skips."""

    def __init__(self, output: Path, prefix: str, size, every: int, images_only: bool):
        self.summary = ExportSummary(output)
        self._images_dir = output / 'images'
        self._masks_dir = output / 'masks'
        self._prefix = prefix
        self._size = size
        self._every = every
        self._images_only = images_only
        self._frames = {}  # stamp -> resized RGB frame waiting for its mask
        self._masks = {}   # stamp -> resized mask ids waiting for their frame
        self._index = 0
        self._matched = 0
        taken = [d for d in (self._images_dir, self._masks_dir)
                 if d.is_dir() and any(d.glob(f'{prefix}_*'))]
        if taken:
            raise BagError(f'{taken[0]} already has files named {prefix}_*; choose another '
                           '--prefix or output folder (nothing is overwritten)')
        self._images_dir.mkdir(parents=True, exist_ok=True)
        if not images_only:
            self._masks_dir.mkdir(parents=True, exist_ok=True)

    def add_frame(self, msg, where, compressed=False):
        try:
            rgb = compressed_to_rgb(msg) if compressed else image_to_rgb(msg)
        except ImageConversionError as err:
            self.summary.note(f'frame at {where}: {err}')
            return
        height, width = self._size
        rgb = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_LINEAR)
        if self._images_only:
            self._write(rgb, None)
            return
        stamp = _stamp(msg)
        if stamp in self._masks:
            self._pair(rgb, self._masks.pop(stamp))
        else:
            self._frames[stamp] = rgb
            self.summary.images_without_mask += _trim(self._frames)

    def add_mask(self, msg, where):
        if self._images_only:
            return
        try:
            if msg.encoding not in MASK_ENCODINGS:
                raise ImageConversionError(
                    f"mask encoding is '{msg.encoding}'; expected mono8 class ids")
            ids = image_to_array(msg)
            mask_ids_to_rgb(ids)  # check the ids before keeping the mask
        except (ImageConversionError, ValueError) as err:
            self.summary.note(f'mask at {where}: {err}')
            return
        height, width = self._size
        ids = cv2.resize(ids, (width, height), interpolation=cv2.INTER_NEAREST)
        stamp = _stamp(msg)
        if stamp in self._frames:
            self._pair(self._frames.pop(stamp), ids)
        else:
            self._masks[stamp] = ids
            self.summary.masks_without_image += _trim(self._masks)

    def finish(self) -> ExportSummary:
        self.summary.images_without_mask += len(self._frames)
        self.summary.masks_without_image += len(self._masks)
        self._frames.clear()
        self._masks.clear()
        return self.summary

    def _pair(self, rgb, ids):
        self._matched += 1
        if (self._matched - 1) % self._every:
            self.summary.thinned += 1
            return
        self._write(rgb, ids)

    def _write(self, rgb, ids):
        name = f'{self._prefix}_%s_{self._index:06d}'
        image_path = self._images_dir / (name % 'cam1' + '.jpeg')
        if not cv2.imwrite(str(image_path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]):
            raise OSError(f'cannot write {image_path} (disk full or read-only?)')
        if ids is None:
            self.summary.images_only += 1
        else:
            mask_path = self._masks_dir / (name % 'mask' + '.png')
            if not cv2.imwrite(str(mask_path), cv2.cvtColor(mask_ids_to_rgb(ids),
                                                            cv2.COLOR_RGB2BGR)):
                raise OSError(f'cannot write {mask_path} (disk full or read-only?)')
            self.summary.pairs += 1
        self._index += 1


def _stamp(msg):
    return int(msg.header.stamp.sec), int(msg.header.stamp.nanosec)


def _trim(waiting: dict) -> int:
    """Drop the oldest entries beyond the pairing window; return how many were dropped."""
    dropped = 0
    while len(waiting) > PAIRING_WINDOW:
        del waiting[next(iter(waiting))]
        dropped += 1
    return dropped


def export_bag(bag, output, image_topic='image', mask_topic='true_mask', size=(256, 256),
               prefix=None, every=1, images_only=False, progress=True) -> ExportSummary:
    """Export one bag; BagError with the reason when the bag or topics do not fit."""
    output = Path(output)
    image_topic, mask_topic = topic_name(image_topic), topic_name(mask_topic)
    if every < 1:
        raise ValueError(f'every must be >= 1, not {every}')
    store = get_typestore(Stores.ROS2_JAZZY)
    with BagReader(bag) as reader:
        for note in reader.notes:
            print(f'bag_export: note: {note}', file=sys.stderr)
        topics = {t.name: t for t in reader.topics}
        wanted = [image_topic] if images_only else [image_topic, mask_topic]
        for name in wanted:
            if name not in topics or not topics[name].count:
                hint = ('' if name == image_topic else
                        '; without true masks, --images-only exports the frames alone')
                present = ', '.join(t for t, info in topics.items() if info.count) or 'none'
                raise BagError(f'{reader.path} has no messages on topic {name} (it has: '
                               f'{present}){hint}')
            allowed = (IMAGE_TYPE, COMPRESSED_TYPE) if name == image_topic else (IMAGE_TYPE,)
            if topics[name].msgtype not in allowed:
                raise BagError(f'{name} in {reader.path} is {topics[name].msgtype}, not '
                               f'{" or ".join(allowed)}')
        name = prefix or re.sub(r'[^A-Za-z0-9]+', '-', Path(reader.path).stem).strip('-')
        exporter = _Exporter(output, name or 'bag', size, every, images_only)
        bar = None
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=sum(topics[n].count for n in wanted), unit='msg', desc='export')
        for message in reader.messages(set(wanted)):
            where = f'{message.topic} @ {message.timestamp / 1e9:.3f} s'
            try:
                msg = store.deserialize_cdr(message.data, topics[message.topic].msgtype)
            except Exception as err:  # rosbags raises assorted errors on damaged CDR
                exporter.summary.note(f'{where}: cannot decode ({err})')
                continue
            finally:
                if bar is not None:
                    bar.update()
            if message.topic == image_topic:
                exporter.add_frame(msg, where, topics[image_topic].msgtype == COMPRESSED_TYPE)
            else:
                exporter.add_mask(msg, where)
        if bar is not None:
            bar.close()
        summary = exporter.finish()
        summary.problems.extend(reader.read_errors)
        return summary


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog='bag_export',
        description='Export camera frames and true masks from a bag into the classic data-set '
                    'layout (images/*.jpeg, masks/*.png) for retraining.')
    parser.add_argument('bag', help='bag folder (with metadata.yaml) or .mcap/.db3 file')
    parser.add_argument('output', type=Path,
                        help='data folder to write images/ and masks/ into (created; other '
                             'bags may be exported into the same folder with other prefixes)')
    parser.add_argument('--image-topic', default='image',
                        help='camera topic, sensor_msgs/Image or CompressedImage (JPEG/PNG, '
                             'e.g. /camera/image_raw/compressed; default image)')
    parser.add_argument('--mask-topic', default='true_mask',
                        help='mono8 class-id mask topic, 0/1/2 (default true_mask)')
    parser.add_argument('--size', type=int, nargs=2, default=(256, 256), metavar=('H', 'W'),
                        help='output size (default 256 256, as the classic data set)')
    parser.add_argument('--prefix', default=None,
                        help='file-name prefix (default: the bag name)')
    parser.add_argument('--every', type=int, default=1, metavar='N',
                        help='keep every N-th pair (neighbouring frames are near copies)')
    parser.add_argument('--images-only', action='store_true',
                        help='write every frame to images/ without masks (for inference '
                             'or labelling; not a training set)')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')
    options = parser.parse_args(argv)
    if min(options.size) < 8:
        parser.error('--size must be at least 8 8')
    if options.every < 1:
        parser.error('--every must be >= 1')
    return options


def main(args=None):
    options = parse_args(sys.argv[1:] if args is None else args)
    try:
        summary = export_bag(options.bag, options.output, options.image_topic,
                             options.mask_topic, tuple(options.size), options.prefix,
                             options.every, options.images_only, not options.no_progress)
    except (BagError, OSError) as err:
        print(f'bag_export: error: {err}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print('bag_export: interrupted; the files written so far stay',
              file=sys.stderr)
        return 130
    print(f'bag_export: wrote {summary.pairs} image/mask pairs'
          + (f' and {summary.images_only} images' if summary.images_only else '')
          + f' to {summary.output}')
    skipped = {'frames without a mask (skipped)': summary.images_without_mask,
               'masks without a frame': summary.masks_without_image,
               'pairs thinned by --every': summary.thinned,
               'undecodable frames or masks': summary.bad}
    for what, count in skipped.items():
        if count:
            print(f'bag_export: {count} {what}')
    for problem in summary.problems:
        print(f'bag_export: {problem}', file=sys.stderr)
    if summary.pairs + summary.images_only == 0:
        print('bag_export: error: nothing exported', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
