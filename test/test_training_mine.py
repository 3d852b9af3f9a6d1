"""training.mine_false_heroes: hero-free frames where a real ONNX model sees a hero."""

import json

import cv2
import numpy as np
from perception_models import colour_model
import pytest
from training.data import MASK_COLOURS
from training.mine_false_heroes import main, mine

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def write_pair(root, name, image, ids):
    for folder, pixels in (('images', image), ('masks', MASK_COLOURS[ids])):
        (root / folder).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / folder / f'{name}.png'), cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR))


def frame(blue_box=None, hero_in_mask=False, size=64):
    """Draw a red frame with a green bystander; a blue patch is what the model calls a hero."""
    image = np.full((size, size, 3), RED, np.uint8)
    ids = np.zeros((size, size), np.uint8)
    image[5:25, 5:12], ids[5:25, 5:12] = GREEN, 1
    if blue_box is not None:
        y0, y1, x0, x1 = blue_box
        image[y0:y1, x0:x1] = BLUE
        if hero_in_mask:
            ids[y0:y1, x0:x1] = 2
    return image, ids


def test_only_hero_free_frames_with_a_seen_hero_are_copied(tmp_path):
    source, output = tmp_path / 'pool', tmp_path / 'mined'
    model = colour_model(tmp_path / 'colour.onnx', size=(64, 64))
    write_pair(source, 'a_false_hero', *frame(blue_box=(30, 40, 30, 40)))
    write_pair(source, 'b_nobody', *frame())
    write_pair(source, 'c_real_hero', *frame(blue_box=(30, 40, 30, 40), hero_in_mask=True))
    write_pair(source, 'd_three_pixels', *frame(blue_box=(30, 31, 30, 33)))  # not "present"
    manifest = mine(model, source, output)
    assert manifest['frames_read'] == 4 and manifest['false_heroes'] == 1
    assert manifest['frames'] == [{'image': 'a_false_hero.png', 'hero_pixels': 100}]
    for folder in ('images', 'masks'):
        assert sorted(p.name for p in (output / folder).iterdir()) == ['a_false_hero.png']
    assert json.loads((output / 'manifest.json').read_text())['false_heroes'] == 1


def test_bad_arguments_say_what_is_wrong(tmp_path, capsys):
    with pytest.raises(SystemExit, match='not found'):
        main(['--model', str(tmp_path / 'missing.onnx'), '--source', str(tmp_path),
              '--output', str(tmp_path / 'out')])
    model = colour_model(tmp_path / 'colour.onnx', size=(64, 64))
    with pytest.raises(SystemExit, match='images/ and masks/'):
        main(['--model', str(model), '--source', str(tmp_path / 'nowhere'),
              '--output', str(tmp_path / 'out')])
    with pytest.raises(SystemExit):
        main(['--model', str(model), '--source', str(tmp_path), '--output', str(tmp_path)])
    assert 'must differ' in capsys.readouterr().err
