"""followme_sim.record: frames and masks in the classic data-set layout."""

import subprocess
import sys

from conftest import REPO
import cv2
from followme_sim import record
import numpy as np


def test_help_describes_the_command():
    out = subprocess.run([sys.executable, '-m', 'followme_sim.record', '--help'], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    assert '--frames' in out and 'classic' in out


def test_writes_pairs_in_the_classic_layout(tmp_path):
    assert record.main(['--out', str(tmp_path), '--frames', '6', '--scenarios',
                        'straight,occlusion', '--seeds', '1', '--size', '64',
                        '--hero-fraction', '1.0']) == 0
    images = sorted((tmp_path / 'images').glob('*.jpeg'))
    masks = sorted((tmp_path / 'masks').glob('*.png'))
    assert len(images) == len(masks) == 6
    for image_path, mask_path in zip(images, masks):
        assert image_path.name.replace('_cam1_', '_mask_').replace('.jpeg', '.png') == \
            mask_path.name
        assert cv2.imread(str(image_path)).shape == (64, 64, 3)
        colours = np.unique(cv2.imread(str(mask_path))[:, :, ::-1].reshape(-1, 3), axis=0)
        assert {tuple(c) for c in colours} <= {(255, 0, 0), (0, 255, 0), (0, 0, 255)}
    with_hero = sum((cv2.imread(str(m))[:, :, 0] == 255).any() for m in masks)
    assert with_hero >= 4  # aimed at the hero: nearly every frame shows her (blue)
