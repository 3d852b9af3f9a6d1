r"""
Hard negatives for training: the frames without a hero in which a model sees one.

Copies, from a classic-layout folder (simulator frames from `followme_sim.record`, say), the
image/mask pairs whose mask has no hero pixel but where the model marks more than 3 hero pixels
at probability > 0.5: the classic score's "false hero" test (followme_common.scoring). The
output is a classic-layout folder to add to a config's `data.train`, with a manifest.

    python -m training.mine_false_heroes --model models/followme_fcn_int8.onnx \
        --source training_runs/sim_frames_mined_pool --output training_runs/sim_frames_false_heroes
"""

import argparse
from pathlib import Path
import shutil
import sys

from followme_common.scoring import HERO, score_frame
from tqdm import tqdm
from training.data import (DataError, find_pairs, IMAGE_DIR, load_pair, MASK_DIR, save_json)
from training.evaluate import OnnxPredictor


def false_hero_pairs(predictor, pairs):
    """Yield (pair, predicted hero pixels) for the hero-free pairs where the model sees one."""
    for pair in tqdm(pairs, desc='mining', unit='frame'):
        image, ids, _ = load_pair(pair, predictor.input_size)
        if (ids == HERO).any():
            continue
        # The classic score's own test, so "false hero" means what the evaluation counts.
        frame = score_frame(predictor(image[None])[0], ids)
        if frame.pred_present:
            yield pair, frame.pred_hero_pixels


def mine(model, source, output) -> dict:
    """Copy the false-hero pairs of `source` into `output`; return the manifest."""
    predictor = OnnxPredictor(model)
    pairs = find_pairs(source)
    output = Path(output)
    for folder in (IMAGE_DIR, MASK_DIR):
        (output / folder).mkdir(parents=True, exist_ok=True)
    found = []
    for pair, hero_pixels in false_hero_pairs(predictor, pairs):
        shutil.copy2(pair.image, output / IMAGE_DIR / pair.image.name)
        shutil.copy2(pair.mask, output / MASK_DIR / pair.mask.name)
        found.append({'image': pair.image.name, 'hero_pixels': hero_pixels})
    manifest = {'model': str(model), 'source': str(source), 'frames_read': len(pairs),
                'false_heroes': len(found), 'frames': found}
    save_json(output / 'manifest.json', manifest)
    return manifest


def main(argv=None):
    parser = argparse.ArgumentParser(
        description='Copy the frames without a hero in which a model sees one (hard negatives) '
                    'from a classic-layout folder into another.')
    parser.add_argument('--model', required=True, help='ONNX model (the shipped int8 one, say)')
    parser.add_argument('--source', required=True, help='classic-layout folder to search')
    parser.add_argument('--output', required=True, help='classic-layout folder to write')
    args = parser.parse_args(argv)
    if Path(args.output).resolve() == Path(args.source).resolve():
        parser.error('--output must differ from --source')
    try:
        manifest = mine(args.model, args.source, args.output)
    except (DataError, FileNotFoundError, ValueError) as error:
        sys.exit(f'error: {error}')
    print(f"{manifest['false_heroes']} false heroes in {manifest['frames_read']} frames; "
          f'written to {args.output}')


if __name__ == '__main__':
    main()
