"""bag_export: frames + true masks from a bag -> the classic images/ + masks/ layout."""

from bag_helpers import frame, image_cdr, mask_ids, NS, START_NS, string_cdr
import cv2
from followme_common.bags.export import export_bag, main
from followme_common.bags.storage import BagError, BagWriter
import numpy as np
import pytest

RED, GREEN, BLUE = ([255, 0, 0], [0, 255, 0], [0, 0, 255])


def write_camera_bag(path, frames=6, masked=(0, 1, 2, 3, 4), bad_mask_at=None,
                     encoding='rgb8'):
    """
    Frames at 10 Hz; masks (same stamps) for the `masked` ones, written after the frame.

    Encoding 'png' writes the frames as CompressedImage on /image/compressed instead.
    """
    with BagWriter(path) as writer:
        writer.add_topic('/image', 'sensor_msgs/msg/Image')
        writer.add_topic('/image/compressed', 'sensor_msgs/msg/CompressedImage')
        writer.add_topic('/true_mask', 'sensor_msgs/msg/Image')
        writer.add_topic('/chatter', 'std_msgs/msg/String')
        for i in range(frames):
            stamp = START_NS + i * NS // 10
            pixels = frame(40 * (i + 1))
            if encoding == 'bgr8':
                pixels = pixels[:, :, ::-1]
            if encoding == 'png':
                writer.write('/image/compressed', stamp, png_cdr(pixels, stamp))
            else:
                writer.write('/image', stamp, image_cdr(pixels, encoding, stamp))
            writer.write('/chatter', stamp, string_cdr('not an image'))
            if i in masked:
                ids = mask_ids()
                if i == bad_mask_at:
                    ids[0, 0] = 7
                writer.write('/true_mask', stamp + 1000, image_cdr(ids, 'mono8', stamp))
    return path


def png_cdr(rgb, stamp_ns):
    from rclpy.serialization import serialize_message
    from sensor_msgs.msg import CompressedImage
    msg = CompressedImage(format='rgb8; png compressed bgr8')
    msg.data.frombytes(cv2.imencode('.png', cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1])
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(int(stamp_ns), NS)
    return serialize_message(msg)


def read_rgb(path):
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


@pytest.mark.parametrize('encoding', ['rgb8', 'bgr8', 'png'])
def test_export_writes_the_classic_layout(tmp_path, encoding):
    bag = write_camera_bag(tmp_path / 'run1', encoding=encoding)
    summary = export_bag(bag, tmp_path / 'data', progress=False,
                         image_topic='image/compressed' if encoding == 'png' else 'image')
    images = sorted((tmp_path / 'data' / 'images').iterdir())
    masks = sorted((tmp_path / 'data' / 'masks').iterdir())
    assert summary.pairs == 5 and summary.images_without_mask == 1 and summary.bad == 0
    assert [p.name for p in images][:2] == ['run1_cam1_000000.jpeg', 'run1_cam1_000001.jpeg']
    assert [p.name for p in masks][:2] == ['run1_mask_000000.png', 'run1_mask_000001.png']
    assert len(images) == len(masks) == 5

    mask = read_rgb(masks[0])
    assert mask.shape == (256, 256, 3)
    assert (mask[10, 10] == GREEN).all(), 'top left: other people'
    assert (mask[200, 200] == BLUE).all(), 'bottom right: the hero'
    assert (mask[10, 200] == RED).all() and (mask[200, 10] == RED).all(), 'background'
    colours = np.unique(mask.reshape(-1, 3), axis=0)
    assert len(colours) == 3, 'one-hot: only pure red, green and blue'

    image = read_rgb(images[1]).astype(int)  # frame 1: value 80
    assert image.shape == (256, 256, 3)
    assert np.abs(image[128, 40] - [80, 0, 0]).max() <= 6, 'left half red, as sent (JPEG)'
    assert np.abs(image[128, 220] - [0, 0, 80]).max() <= 6, 'right half blue, as sent'


def test_masks_are_paired_by_stamp_not_by_order(tmp_path):
    bag = write_camera_bag(tmp_path / 'bag', masked=(1, 3, 5))
    summary = export_bag(bag, tmp_path / 'data', progress=False)
    assert (summary.pairs, summary.images_without_mask) == (3, 3)
    images = sorted((tmp_path / 'data' / 'images').iterdir())
    values = [int(read_rgb(p)[128, 40, 0]) for p in images]
    assert [round(v / 40) - 1 for v in values] == [1, 3, 5], 'the masked frames, in order'


def test_bad_masks_are_skipped_with_a_reason(tmp_path):
    bag = write_camera_bag(tmp_path / 'bag', bad_mask_at=2)
    summary = export_bag(bag, tmp_path / 'data', progress=False)
    assert summary.pairs == 4 and summary.bad == 1
    assert 'class id 7' in summary.problems[0]


def test_images_only_for_bags_without_masks(tmp_path):
    bag = write_camera_bag(tmp_path / 'bag', masked=())
    with pytest.raises(BagError, match='no messages on topic /true_mask.*--images-only'):
        export_bag(bag, tmp_path / 'data', progress=False)
    summary = export_bag(bag, tmp_path / 'data', images_only=True, progress=False)
    assert summary.images_only == 6 and summary.pairs == 0
    assert not (tmp_path / 'data' / 'masks').exists()


def test_every_thins_the_pairs_and_prefixes_keep_bags_apart(tmp_path):
    bag = write_camera_bag(tmp_path / 'bag')
    summary = export_bag(bag, tmp_path / 'data', every=2, prefix='a', progress=False)
    assert (summary.pairs, summary.thinned) == (3, 2)
    with pytest.raises(BagError, match='already has files named a_'):
        export_bag(bag, tmp_path / 'data', prefix='a', progress=False)
    export_bag(bag, tmp_path / 'data', prefix='b', progress=False)
    assert len(list((tmp_path / 'data' / 'masks').iterdir())) == 3 + 5


def test_wrong_topic_type_is_refused(tmp_path):
    bag = write_camera_bag(tmp_path / 'bag')
    with pytest.raises(BagError, match='/chatter .* is std_msgs/msg/String, not '
                                       'sensor_msgs/msg/Image or sensor_msgs/msg/CompressedImage'):
        export_bag(bag, tmp_path / 'data', image_topic='chatter', progress=False)


@pytest.mark.tensorflow
def test_classic_training_reader_accepts_the_export(tmp_path):
    training_data = pytest.importorskip('training.data')
    bag = write_camera_bag(tmp_path / 'bag')
    export_bag(bag, tmp_path / 'data', progress=False)
    pairs = training_data.find_pairs(tmp_path / 'data')
    assert len(pairs) == 5
    ids = training_data.mask_to_ids(read_rgb(pairs[0].mask), pairs[0].mask)
    assert set(np.unique(ids)) == {0, 1, 2}


def test_command_line(tmp_path, capsys):
    bag = write_camera_bag(tmp_path / 'bag')
    assert main([str(bag), str(tmp_path / 'data'), '--size', '128', '160',
                 '--no-progress']) == 0
    out = capsys.readouterr().out
    assert 'wrote 5 image/mask pairs' in out and '1 frames without a mask' in out
    mask = read_rgb(sorted((tmp_path / 'data' / 'masks').iterdir())[0])
    assert mask.shape == (128, 160, 3)
    assert main([str(tmp_path / 'missing'), str(tmp_path / 'out'), '--no-progress']) == 2
    assert 'does not exist' in capsys.readouterr().err
