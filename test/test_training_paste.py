"""training.paste_people: shrunk people pasted into hero-free frames, on synthetic frames."""

import json

import cv2
from followme_common.scoring import HERO, OTHERS
import numpy as np
import pytest
from training.data import DataError, find_pairs, MASK_COLOURS
from training.paste_people import (
    Cutout, main, online_dataset, paste, person_cutouts, synthesize, write_pasted)

HERO_RGB, OTHERS_RGB, GROUND_RGB = (200, 30, 30), (30, 200, 30), (90, 90, 90)


def scene(size=(96, 96), hero=True):
    """Draw a grey frame with a standing 'other' (green) and, optionally, a hero (red)."""
    image = np.full((*size, 3), GROUND_RGB, np.uint8)
    ids = np.zeros(size, np.uint8)
    for class_id, colour, (y, x) in ((OTHERS, OTHERS_RGB, (10, 10)),
                                     (HERO, HERO_RGB, (40, 60))):
        if class_id == HERO and not hero:
            continue
        ids[y:y + 40, x:x + 12] = class_id
        image[y:y + 40, x:x + 12] = colour
    return image, ids


def test_whole_standing_people_are_cut_out():
    image, ids = scene()
    heroes = person_cutouts(image, ids, HERO, min_pixels=100)
    assert len(heroes) == 1 and heroes[0].alpha.shape == (40, 12)
    assert (heroes[0].rgb == HERO_RGB).all()
    # Touching the frame's edge (cut off), too small, or wider than tall: not a whole person.
    ids_edge = np.zeros_like(ids)
    ids_edge[0:40, 30:42] = HERO
    ids_edge[60:66, 60:63] = HERO
    ids_edge[80:90, 10:40] = HERO
    assert person_cutouts(image, ids_edge, HERO, min_pixels=100) == []
    assert len(person_cutouts(image, ids_edge, HERO, min_pixels=1)) == 1  # the 6x3 one


def test_paste_moves_image_and_mask_together():
    image, ids = scene(hero=False)
    cutout = Cutout(np.full((40, 12, 3), HERO_RGB, np.uint8), np.ones((40, 12), np.float32),
                    HERO)
    rng = np.random.default_rng(3)
    x, y, w, h = paste(image, ids, cutout, 20.0, rng, flip=False)
    assert (h, w) == (20, 6)
    assert y + h >= int(0.3 * 96), 'feet in the lower part of the frame'
    hero = ids == HERO
    assert hero.sum() == 20 * 6
    assert (image[hero] == HERO_RGB).all()
    assert not (image[~hero] == HERO_RGB).all(axis=-1).any()


def test_synthesized_frames_have_one_small_hero_and_are_reproducible():
    frames = [scene(hero=True), scene(hero=False), scene(hero=False)]
    images, ids = [f[0] for f in frames], [f[1] for f in frames]
    first = list(synthesize(images, ids, 12, seed=5, height_range=(8.0, 16.0),
                            min_cutout_pixels=100))
    second = list(synthesize(images, ids, 12, seed=5, height_range=(8.0, 16.0),
                             min_cutout_pixels=100))
    assert len(first) == 12
    for (image, mask), (image2, mask2) in zip(first, second):
        assert np.array_equal(image, image2) and np.array_equal(mask, mask2)
        rows = np.nonzero((mask == HERO).any(axis=1))[0]
        assert 8 <= rows.max() - rows.min() + 1 <= 16, 'one hero, as tall as asked'
        # Every hero pixel of the mask is (mostly) hero-coloured in the image.
        assert (image[mask == HERO][:, 0] > 120).mean() > 0.9
    # The source frames are left as they were.
    assert (ids[1] == HERO).sum() == 0


def test_hero_share_leaves_some_frames_with_small_others_only():
    # Empty ground to paste into, so every pasted person shows in the mask.
    empty = (np.full((96, 96, 3), GROUND_RGB, np.uint8), np.zeros((96, 96), np.uint8))
    frames = [scene(hero=True), empty, empty]
    images, ids = [f[0] for f in frames], [f[1] for f in frames]
    kwargs = {'seed': 5, 'height_range': (8.0, 16.0), 'min_cutout_pixels': 100}
    none = list(synthesize(images, ids, 20, hero_share=0.0, **kwargs))
    for _, mask in none:
        assert (mask == HERO).sum() == 0, 'no hero at share 0'
        assert (mask == OTHERS).any(), 'at least one small other pasted'
    half = list(synthesize(images, ids, 40, hero_share=0.5, **kwargs))
    with_hero = sum(bool((mask == HERO).any()) for _, mask in half)
    assert 8 <= with_hero <= 32, with_hero
    # The default share draws exactly as before: pasted sets made earlier stay the same.
    default = list(synthesize(images, ids, 12, **kwargs))
    full = list(synthesize(images, ids, 12, hero_share=1.0, **kwargs))
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
               for a, b in zip(default, full))
    assert all((mask == HERO).any() for _, mask in default)


def test_online_stream_is_the_synthesized_frames_without_end():
    frames = [scene(hero=True), scene(hero=False), scene(hero=False)]
    images, ids = np.stack([f[0] for f in frames]), np.stack([f[1] for f in frames])
    stream = online_dataset(images, ids, seed=5, height_range=(8.0, 16.0))
    draws = list(stream.take(20).as_numpy_iterator())
    expected = synthesize(images, ids, 20, seed=5, height_range=(8.0, 16.0))
    for (image, mask), (want_image, want_mask) in zip(draws, expected):
        assert image.dtype == mask.dtype == np.uint8
        assert image.shape == (96, 96, 3) and mask.shape == (96, 96)
        np.testing.assert_array_equal(image, want_image)
        np.testing.assert_array_equal(mask, want_mask)
        assert (mask == HERO).any()
    assert len({mask.tobytes() for _, mask in draws}) > 10, 'a new paste every draw'
    no_hero = np.stack([scene(hero=False)[1]] * 2)
    with pytest.raises(DataError, match='no whole hero'):
        online_dataset(np.stack([scene(hero=False)[0]] * 2), no_hero)


def test_bad_sources_are_clear_errors():
    no_background = [scene(hero=True)]
    with pytest.raises(DataError, match='without the hero'):
        list(synthesize([f[0] for f in no_background], [f[1] for f in no_background], 1,
                        min_cutout_pixels=100))
    no_hero = [scene(hero=False)]
    with pytest.raises(DataError, match='--min-cutout-pixels'):
        list(synthesize([f[0] for f in no_hero], [f[1] for f in no_hero], 1,
                        min_cutout_pixels=100))


def write_scenes(root):
    (root / 'images').mkdir(parents=True)
    (root / 'masks').mkdir(parents=True)
    for i, hero in enumerate((True, False, False)):
        image, ids = scene(hero=hero)
        cv2.imwrite(str(root / 'images' / f'run_cam1_{i:05d}.png'), image[:, :, ::-1])
        cv2.imwrite(str(root / 'masks' / f'run_mask_{i:05d}.png'), MASK_COLOURS[ids][:, :, ::-1])
    return root


def test_written_set_is_a_valid_classic_set(tmp_path):
    source = write_scenes(tmp_path / 'source')
    manifest = write_pasted(source, tmp_path / 'out', 5, seed=1, size=(96, 96),
                            height_range=(10.0, 20.0), min_cutout_pixels=100)
    pairs = find_pairs(tmp_path / 'out')
    assert len(pairs) == 5 and manifest['frames'] == 5
    written = json.loads((tmp_path / 'out' / 'manifest.json').read_text())
    assert written['seed'] == 1 and written['hero_share'] == 1.0
    assert written['frames_with_hero'] == 5 and written['hero_pixels_median'] > 0
    assert cv2.imread(str(tmp_path / 'out' / 'preview.png')).shape == (192, 4 * 192, 3)


def test_cli_help_and_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as done:
        main(['--help'])
    assert done.value.code == 0 and '--height-range' in capsys.readouterr().out
    with pytest.raises(SystemExit) as done:
        main(['--source', str(tmp_path), '--output', str(tmp_path / 'o'), '--frames', '0'])
    assert done.value.code == 2
    with pytest.raises(SystemExit) as done:
        main(['--source', str(tmp_path / 'missing'), '--output', str(tmp_path / 'o')])
    assert done.value.code == 2 and 'images/' in capsys.readouterr().err
    with pytest.raises(SystemExit) as done:
        main(['--source', str(tmp_path), '--output', str(tmp_path / 'o'), '--hero-share', '2'])
    assert done.value.code == 2 and '--hero-share' in capsys.readouterr().err


def test_nearest_shrink_keeps_hard_edges():
    image, ids = scene(hero=False)
    stripes = np.zeros((40, 12, 3), np.uint8)
    stripes[:, :, 0] = np.arange(40, dtype=np.uint8)[:, None] * 5 + 50
    cutout = Cutout(stripes, np.ones((40, 12), np.float32), HERO)
    paste(image, ids, cutout, 10.0, np.random.default_rng(0), flip=False, shrink='nearest')
    hero = ids == HERO
    assert hero.sum() == 10 * 3
    # Every pasted pixel is one of the cutout's own pixels, not a blend of several.
    assert set(image[hero][:, 0].tolist()) <= set(stripes[:, 0, 0].tolist())
    image2, ids2 = scene(hero=False)
    paste(image2, ids2, cutout, 10.0, np.random.default_rng(0), flip=False, shrink='area')
    assert not set(image2[ids2 == HERO][:, 0].tolist()) <= set(stripes[:, 0, 0].tolist())
