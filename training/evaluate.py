"""
Score a model on the classic evaluation sets: the final score, per set, and by hero size.

    python -m training.evaluate --model models/followme_fcn.onnx
    python -m training.evaluate --model training_runs/shipped-main   (a run's best weights)
    python -m training.evaluate --model training_runs/<run>/epochs/epoch_03.weights.h5

Writes report.json, one PNG grid (image | truth | prediction) per evaluation set and
hero_iou_vs_size.png, where the far-away hero (the classic weak spot) shows up on the left.
"""

import argparse
import json
from pathlib import Path
import sys
import time

from followme_common import scoring
import numpy as np
from tqdm import tqdm

REPO = Path(__file__).resolve().parent.parent
# Hero size bins in pixels at the model's input size (160x160 -> 25,600 pixels).
HERO_SIZE_BINS = (50, 200, 800, 3200, 10 ** 9)


def check_provider(provider):
    """Raise ValueError, saying how to get one, if this ONNX Runtime build lacks `provider`."""
    import onnxruntime as ort
    available = ort.get_available_providers()
    if provider not in available:
        raise ValueError(f'this ONNX Runtime build has no {provider} (it has '
                         f'{", ".join(available)}); `make gpu` or `make openvino` installs '
                         'another build')


class OnnxPredictor:
    """An ONNX model following the project contract; settings come from its metadata."""

    def __init__(self, path, provider='CPUExecutionProvider'):
        import onnxruntime as ort
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f'{self.path} not found')
        check_provider(provider)
        # int8 kernels round differently from one provider to another: score with the one the
        # node will run on.
        self.session = ort.InferenceSession(str(self.path),
                                            providers=list(dict.fromkeys(
                                                [provider, 'CPUExecutionProvider'])))
        self.provider = self.session.get_providers()[0]
        if self.provider != provider:
            raise ValueError(f'ONNX Runtime could not start {provider} (it fell back to '
                             f'{self.provider})')
        # The node's own reading of the model contract; its errors as the CLIs catch them.
        from followme_perception.segmenter import ModelError, read_model_info
        try:
            info = read_model_info(self.path, self.session)
        except ModelError as error:
            raise ValueError(str(error)) from None
        self.input_size = (info.height, info.width)
        self.scale, self.offset, self.pad_channels = info.scale, info.offset, info.pad_channels
        self.order = [info.classes.index(name) for name in scoring.CLASSES]
        self.input_name = info.input_name
        # An int8 model takes its input quantized (each pixel value's code) and gives its
        # logits quantized: scored on their softmax, as from a float model.
        self.input_codes = info.input_codes
        self._output_scale = info.output_quantization and info.output_quantization[0]
        self.metadata = info.metadata

    def model_input(self, images_uint8):
        """
        Turn uint8 RGB frames into the network's input.

        Each pixel value's code for a uint8 input (an int8 model), else float32 normalised
        as the metadata says; zeros in the padding channels.
        """
        if self.input_codes is not None:
            pixels = self.input_codes[images_uint8]
        else:
            pixels = (images_uint8.astype(np.float32) * np.float32(self.scale)
                      + np.float32(self.offset))
        if self.pad_channels:    # channels the network reads with zero weights
            pixels = np.concatenate(
                [pixels, np.zeros((*pixels.shape[:-1], self.pad_channels), pixels.dtype)],
                axis=-1)
        return pixels

    def __call__(self, images_uint8):
        scores = self.session.run(None, {self.input_name: self.model_input(images_uint8)})[0]
        if self._output_scale:
            from followme_perception.segmenter import softmax_of_codes
            scores = softmax_of_codes(scores, self._output_scale)
        return scores[..., self.order]


class KerasPredictor:
    """A training run's weights (best.weights.h5 by default), rebuilt from its config."""

    def __init__(self, run_dir, weights='best.weights.h5'):
        import yaml

        from training.model import build_model, ModelConfig
        self.path = Path(run_dir)
        config_file = self.path / 'config.yaml'
        if not config_file.is_file():
            raise FileNotFoundError(f'{config_file} not found: --model takes an .onnx file or '
                                    'a training run folder')
        config = yaml.safe_load(config_file.read_text())
        model_config = ModelConfig.from_dict(config['model'])
        self.model = build_model(model_config)
        self.model.load_weights(self.path / weights)
        self.input_size = model_config.input_size
        self.metadata = {}
        self.provider = None  # Keras, not ONNX Runtime

    def __call__(self, images_uint8):
        from training.data import to_model_input
        return np.asarray(self.model.predict_on_batch(to_model_input(images_uint8)))


class FlipAveraged:
    """A predictor whose output is averaged with its output on the mirrored frames."""

    def __init__(self, predictor):
        self.predictor = predictor
        self.path, self.input_size = predictor.path, predictor.input_size
        self.metadata, self.provider = predictor.metadata, predictor.provider

    def __call__(self, images_uint8):
        mirrored = self.predictor(np.ascontiguousarray(images_uint8[:, :, ::-1]))
        return (self.predictor(images_uint8) + mirrored[:, :, ::-1]) * np.float32(0.5)


def load_predictor(path, flip_average=False, provider='CPUExecutionProvider'):
    """Load a predictor: an .onnx file, a run folder (its best weights) or a run's weights file."""
    path = Path(path)
    if path.suffix == '.onnx':
        predictor = OnnxPredictor(path, provider)
    elif path.name.endswith('.weights.h5'):
        # best/last.weights.h5 sit in the run folder, epochs/epoch_NN.weights.h5 one below.
        run_dir = next((folder for folder in (path.parent, path.parent.parent)
                        if (folder / 'config.yaml').is_file()), path.parent)
        predictor = KerasPredictor(run_dir, path.resolve().relative_to(run_dir.resolve()))
    else:
        predictor = KerasPredictor(path)
    return FlipAveraged(predictor) if flip_average else predictor


def predict_all(predictor, images, batch_size=32, desc='predicting'):
    out = []
    for start in tqdm(range(0, len(images), batch_size), desc=desc, unit='batch', leave=False):
        out.append(predictor(images[start:start + batch_size]))
    return np.concatenate(out)


def hero_size_table(frames) -> list:
    """Hero IoU and detection rate per hero-size bin, over frames that show the hero."""
    rows = []
    low = scoring.PRESENT_PIXELS + 1
    for high in HERO_SIZE_BINS:
        chosen = [f for f in frames if low <= f.truth_hero_pixels < high and f.truth_present]
        rows.append({
            'hero_pixels': [low, high - 1] if high < HERO_SIZE_BINS[-1] else [low, None],
            'frames': len(chosen),
            'hero_iou': float(np.mean([f.hero_iou for f in chosen])) if chosen else None,
            'detected': float(np.mean([f.pred_present for f in chosen])) if chosen else None,
        })
        low = high
    return rows


def save_grid(images, truth_ids, probs, path, count, seed=0):
    """Save image | truth | prediction rows for a fixed random sample of frames."""
    import cv2

    from training.data import MASK_COLOURS
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(images), size=min(count, len(images)), replace=False))
    rows = [np.hstack([images[i], MASK_COLOURS[truth_ids[i]],
                       MASK_COLOURS[np.argmax(probs[i], axis=-1)]]) for i in chosen]
    cv2.imwrite(str(path), cv2.cvtColor(np.vstack(rows), cv2.COLOR_RGB2BGR))


def plot_hero_size(frames, path):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    present = [f for f in frames if f.truth_present]
    fig, axis = plt.subplots(figsize=(7, 4))
    axis.scatter([f.truth_hero_pixels for f in present], [f.hero_iou for f in present], s=6,
                 alpha=0.5)
    axis.set_xscale('log')
    axis.set_xlabel('hero pixels in the truth mask (input size)')
    axis.set_ylabel('hero IoU')
    axis.set_title('hero IoU against hero size (following_images + patrol_with_targ)')
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def score_folder(predictor, folder, batch_size=32, desc=None) -> tuple:
    """Score every frame of one classic-layout folder: (SetScore, frames, probabilities)."""
    from training.data import find_pairs, materialize
    desc = desc or Path(folder).name
    frames = materialize(find_pairs(folder), predictor.input_size, f'decoding {desc}')
    probs = predict_all(predictor, frames.images, batch_size, f'predicting {desc}')
    return score_frames(probs, frames.ids), frames, probs


def score_frames(probs, truth_ids) -> scoring.SetScore:
    result = scoring.SetScore()
    for prob, ids in zip(probs, truth_ids):
        result.add(scoring.score_frame(prob, ids))
    return result


def selection_figures(result: scoring.SetScore, frame_pixels: int) -> dict:
    """Compute the validation figures training can choose an epoch by (train.select_by)."""
    return {'val_score': scoring.single_set_score(result),
            'val_mix_score': scoring.eval_mix_score(result, frame_pixels)}


def selection_scores(predictor, folders, batch_size=32) -> dict:
    """Score the validation figures training chooses an epoch by (train.select_by), any model."""
    from training.data import find_all_pairs, materialize
    frames = materialize(find_all_pairs(folders), predictor.input_size, 'decoding validation')
    probs = predict_all(predictor, frames.images, batch_size, 'predicting validation')
    result = score_frames(probs, frames.ids)
    return {'frames': result.count,
            **selection_figures(result, probs.shape[1] * probs.shape[2])}


def evaluate(predictor, data_root, output_dir=None, grid_frames=8, batch_size=32,
             size_sets=None) -> dict:
    """
    Compute the classic final score on data_root/<set>/ for the three evaluation sets.

    size_sets ({name: folder}, e.g. the train and validation sets) adds their hero IoU and
    detection rate by hero size, to compare with the evaluation's: a gap between the train set
    and the rest is the network learning the training scenes rather than small people.
    """
    data_root = Path(data_root)
    sets, frames_with_size = {}, []
    if output_dir is not None:
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
    for name in scoring.EVAL_SETS:
        result, frames, probs = score_folder(predictor, data_root / name, batch_size, name)
        sets[name] = result
        if name in scoring.IOU_SETS:
            frames_with_size.extend(result.frames)
        if output_dir is not None and grid_frames > 0:
            save_grid(frames.images, frames.ids, probs, output_dir / f'grid_{name}.png',
                      grid_frames)
    report = scoring.final_score(sets)
    report['hero_iou_by_size'] = hero_size_table(frames_with_size)
    report['hero_iou_by_size_other_sets'] = {
        name: hero_size_table(score_folder(predictor, folder, batch_size, name)[0].frames)
        for name, folder in (size_sets or {}).items()}
    report['model'] = str(predictor.path)
    report['data'] = str(data_root)
    report['input_size'] = list(predictor.input_size)
    report['flip_average'] = isinstance(predictor, FlipAveraged)
    report['provider'] = predictor.provider
    if output_dir is not None:
        plot_hero_size(frames_with_size, output_dir / 'hero_iou_vs_size.png')
        (output_dir / 'report.json').write_text(json.dumps(report, indent=2) + '\n')
    return report


def format_report(report) -> str:
    lines = [f"final score {report['final_score']:.4f} = final IoU "
             f"{report['final_iou']:.4f} x weight {report['weight']:.4f}"
             + (' (flip-averaged)' if report.get('flip_average') else '')
             + (f" on {report['provider']}" if report.get('provider') else '')]
    for name, summary in report['sets'].items():
        lines.append(f"  {name:18s} frames {summary['frames']:4d}  hero IoU "
                     f"{summary['iou']['hero']:.4f}  TP {summary['true_positives']:4d}  "
                     f"FN {summary['false_negatives']:4d}  FP {summary['false_positives']:4d}")
    tables = {'following_images + patrol_with_targ': report['hero_iou_by_size']}
    tables.update(report.get('hero_iou_by_size_other_sets', {}))
    for name, rows in tables.items():
        lines.append(f'  hero IoU by hero size (pixels at input size), {name}:')
        for row in rows:
            low, high = row['hero_pixels']
            span = f'{low}-{high}' if high is not None else f'{low}+'
            iou = f"{row['hero_iou']:.3f}" if row['hero_iou'] is not None else '  -  '
            detected = f"{row['detected']:.2f}" if row['detected'] is not None else ' - '
            lines.append(f"    {span:>11s}: {row['frames']:4d} frames  IoU {iou}  "
                         f'detected {detected}')
    return '\n'.join(lines)


def main(argv=None):
    from training.data import DataError, DEFAULT_DATA_ROOT
    parser = argparse.ArgumentParser(
        description='Compute the classic follow-me final score of a model (ONNX file or '
                    'training run folder) on the three evaluation sets.')
    parser.add_argument('--model', required=True,
                        help='an .onnx file, a training run folder (uses best.weights.h5) or '
                             'one weights file of a run, e.g. <run>/epochs/epoch_03.weights.h5')
    parser.add_argument('--data', default=str(DEFAULT_DATA_ROOT / 'sample_evaluation_data'),
                        help='folder holding following_images/, patrol_with_targ/ and '
                             'patrol_non_targ/ (default: %(default)s)')
    parser.add_argument('--output', help='folder for report.json and the PNGs (default: '
                                         'training_runs/eval/<model name>-<time>)')
    parser.add_argument('--grid-frames', type=int, default=8,
                        help='frames per set in the PNG grids (default: %(default)s)')
    parser.add_argument('--batch-size', type=int, default=32, help='default: %(default)s')
    parser.add_argument('--flip-average', action='store_true',
                        help="average each frame's prediction with that of its mirror image, "
                             "as perception_node's flip_average parameter does")
    parser.add_argument('--provider', default='CPUExecutionProvider',
                        help='ONNX Runtime execution provider for an .onnx model, e.g. '
                             'OpenVINOExecutionProvider after `make openvino`: the int8 '
                             "model's score moves by a few thousandths from one provider to "
                             'another (default: %(default)s)')
    parser.add_argument('--size-set', action='append', default=[], metavar='NAME=FOLDER',
                        help='also report hero IoU and detection by hero size on this '
                             'classic-layout folder (repeatable), e.g. '
                             'train=../shared/data/udacity_followme/train: a gap to the '
                             'evaluation sets shows the far hero overfitted')
    args = parser.parse_args(argv)
    size_sets = {}
    for item in args.size_set:
        name, _, folder = item.partition('=')
        if not name or not folder:
            parser.error(f'--size-set wants NAME=FOLDER, got {item!r}')
        size_sets[name] = folder
    output = Path(args.output) if args.output else (
        REPO / 'training_runs' / 'eval' / f"{Path(args.model).stem}-{time.strftime('%H%M%S')}")
    try:
        predictor = load_predictor(args.model, args.flip_average, args.provider)
        report = evaluate(predictor, args.data, output, args.grid_frames, args.batch_size,
                          size_sets)
    except (DataError, FileNotFoundError, ValueError) as err:
        parser.exit(2, f'error: {err}\n')
    print(format_report(report))
    print(f"report: {output / 'report.json'}", file=sys.stderr)


if __name__ == '__main__':
    main()
