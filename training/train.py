"""
Train the follow-me FCN from a YAML experiment config.

    python -m training.train --config training/configs/classic.yaml
    python -m training.train --resume training_runs/<run>     # go on after a stop

Each run writes to training_runs/<name>-<time>/: the resolved config, a fingerprint of the
data, best.weights.h5 (best validation score so far, saved as soon as it improves, so a run
can be stopped at any time), last.weights.h5, history.csv, curves.png, TensorBoard logs and
backup/ (the training state after the last finished epoch, for --resume).
"""

import argparse
import copy
import csv
import json
import math
from pathlib import Path
import shutil
import subprocess
import sys
import time

from followme_common import scoring
import numpy as np
import yaml

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO / 'training_runs'

DEFAULTS = {
    'name': 'run',
    'seed': 42,
    'data': {'train': None, 'val': None},  # None: the shared data set's train / validation
    'model': {},                           # training.model.ModelConfig fields
    'augment': {},                         # training.augment.AugmentConfig fields
    'train': {
        'batch_size': 32,
        'epochs': 30,
        'steps_per_epoch': 100,
        'learning_rate': 0.01,
        'lr_schedule': 'constant',   # or 'cosine': decays to 0 over epochs x steps
        'hero_weight': 1.0,          # cross-entropy weight of hero pixels (others: 1)
        'dice_weight': 0.0,          # weight of a soft-dice term on the hero class
        'small_hero_pixels': 0,      # frames whose hero covers 1..N pixels at input size...
        'small_hero_repeats': 1,     # ...are seen this many times per pass
        'false_hero_repeats': 1,     # frames without a hero where init_weights see one: hard
                                     # negatives, seen this many times per pass
        'max_minutes': 0.0,          # stop after this much wall time (0: no limit)
        'max_train_frames': 0,       # a seeded random subset of the data (0: all of it),
        'max_val_frames': 0,         # e.g. for the hyper-parameter search
        'init_weights': '',          # start from these weights (a fine-tune; a run folder,
                                     # .weights.h5 or exported .onnx); '' = random
        'init_partial': False,       # load only the init weights whose shapes fit this model
        'paste_source': '',          # classic-layout folder to cut people from for...
        'paste_share': 0.0,          # ...this share of draws: far heroes pasted on the fly
        'select_by': 'val_score',    # the best epoch: the validation set as it is, or
                                     # 'val_mix_score', reweighted to the evaluation sets' mix
        'keep_epoch_weights': False,  # also keep every epoch's weights in epochs/
    },
}


SELECTION_METRICS = ('val_score', 'val_mix_score')


class ConfigError(ValueError):
    """An experiment config that cannot be run; the message says which key and why."""


def load_config(path, overrides=None) -> dict:
    """Read a YAML config over the defaults; refuse unknown keys."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f'config file {path} not found (see training/configs/)')
    loaded = yaml.safe_load(path.read_text()) or {}
    return merge_config(loaded, overrides)


def merge_config(loaded: dict, overrides=None) -> dict:
    config = copy.deepcopy(DEFAULTS)
    for source in (loaded, overrides or {}):
        for key, value in source.items():
            if key not in config:
                raise ConfigError(f"unknown config key '{key}' (known: {', '.join(config)})")
            if key == 'train':
                unknown = set(value) - set(DEFAULTS['train'])
                if unknown:
                    raise ConfigError(f"unknown train settings: {', '.join(sorted(unknown))} "
                                      f"(known: {', '.join(DEFAULTS['train'])})")
            if isinstance(config[key], dict) and key != 'model' and key != 'augment':
                config[key].update(value or {})
            else:
                config[key] = value
    if config['train']['lr_schedule'] not in ('constant', 'cosine'):
        raise ConfigError("train.lr_schedule must be 'constant' or 'cosine'")
    if int(config['train']['false_hero_repeats']) > 1 and not config['train']['init_weights']:
        raise ConfigError('train.false_hero_repeats needs train.init_weights: the frames are '
                          'those where the starting weights see a hero that is not there')
    if config['train']['select_by'] not in SELECTION_METRICS:
        raise ConfigError(f"train.select_by must be one of {', '.join(SELECTION_METRICS)}, "
                          f"not {config['train']['select_by']!r}")
    return config


def data_roots(spec, split: str) -> list:
    """Turn a data entry (path or list; None: the shared set's split) into a list of Paths."""
    from training.data import DEFAULT_DATA_ROOT
    if spec is None:
        if not DEFAULT_DATA_ROOT.is_dir():
            raise ConfigError(f'no data.{split} in the config and the default data set '
                              f'{DEFAULT_DATA_ROOT} does not exist')
        return [DEFAULT_DATA_ROOT / {'train': 'train', 'val': 'validation'}[split]]
    paths = [spec] if isinstance(spec, (str, Path)) else list(spec)
    return [Path(p).expanduser().resolve() for p in paths]


def subset(pairs: list, count: int, seed: int) -> list:
    """Pick a seeded random subset of count pairs, in file order (all when count <= 0)."""
    if count <= 0 or count >= len(pairs):
        return pairs
    chosen = np.random.default_rng(seed).choice(len(pairs), size=count, replace=False)
    return [pairs[i] for i in sorted(chosen)]


def make_loss(hero_weight: float, dice_weight: float):
    """Class-weighted cross-entropy plus an optional soft-dice term on the hero class."""
    import keras
    import tensorflow as tf
    ops = keras.ops
    weights = ops.convert_to_tensor([1.0, 1.0, float(hero_weight)])

    def followme_loss(y_true, y_pred):
        onehot = ops.one_hot(ops.cast(y_true, 'int32'), scoring.HERO + 1)
        ce = -ops.sum(onehot * ops.log(ops.clip(y_pred, 1e-7, 1.0)), axis=-1)
        pixel_weight = ops.sum(onehot * weights, axis=-1)
        loss = ops.sum(ce * pixel_weight) / ops.sum(pixel_weight)
        if dice_weight:
            truth, pred = onehot[..., scoring.HERO], y_pred[..., scoring.HERO]
            dice = (2.0 * ops.sum(truth * pred) + 1.0) / (ops.sum(truth) + ops.sum(pred) + 1.0)
            loss = loss + dice_weight * (1.0 - dice)
        # One value for the whole batch, which Keras passes on as it is: it divides only
        # per-frame losses by the replica count. Under MirroredStrategy each device sees part of
        # the batch and the gradients are summed across devices, so divide here, or N devices
        # would step N times as far and log N times the loss.
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        return loss / replicas if replicas > 1 else loss

    return followme_loss


def predict(model, images_uint8, batch_size=32, chunk=256) -> np.ndarray:
    """Softmax probabilities for uint8 frames, in batches, under any distribution strategy."""
    from training.data import to_model_input
    # model.predict, not predict_on_batch: under MirroredStrategy, Keras 3's predict_on_batch
    # returns every replica's output for the whole batch, one after the other (2N rows for N
    # frames on two devices). Chunks keep the float copy of the frames small.
    out = [model.predict(to_model_input(images_uint8[start:start + chunk]),
                         batch_size=batch_size, verbose=0)
           for start in range(0, len(images_uint8), chunk)]
    return np.concatenate(out)


# A far-away hero covers under 0.4 % of the frame (200 pixels at 224x224): the classic weak
# spot, and rare in the validation set, so its one-set score hardly sees it (docs/training.md).
FAR_HERO_SHARE = 200 / (224 * 224)


def far_hero_detected(frame_scores, frame_pixels: int) -> float:
    """Share of the frames with a far-away hero where the hero was found (NaN: none)."""
    far = [f for f in frame_scores
           if f.truth_present and f.truth_hero_pixels < FAR_HERO_SHARE * frame_pixels]
    return float(np.mean([f.pred_present for f in far])) if far else math.nan


def validation_metrics(model, frames, loss_fn, batch_size=32) -> dict:
    """Loss, hero IoU, the one-set and mix scores, far-hero detection on the validation set."""
    from training.evaluate import score_frames, selection_figures
    probs = predict(model, frames.images, batch_size)
    losses = [float(loss_fn(frames.ids[s:s + batch_size], probs[s:s + batch_size]))
              for s in range(0, len(probs), batch_size)]
    result = score_frames(probs, frames.ids)
    with_hero = [f.hero_iou for f in result.frames if f.truth_present]
    frame_pixels = probs.shape[1] * probs.shape[2]
    return {
        'val_loss': float(np.mean(losses)),
        'val_hero_iou': float(np.mean(with_hero)) if with_hero else 0.0,
        'val_weight': scoring.detection_weight([result]),
        **selection_figures(result, frame_pixels),
        'val_far_hero_detected': far_hero_detected(result.frames, frame_pixels),
    }


def false_hero_frames(model, frames, batch_size=32, chunk=256) -> np.ndarray:
    """Find the frames without a hero where `model` predicts one (the classic test): indices."""
    empty = np.flatnonzero(frames.hero_pixels == 0)
    found = []
    for start in range(0, len(empty), chunk):
        index = empty[start:start + chunk]
        probs = predict(model, frames.images[index], batch_size)
        # The classic score's test, not the arg-max.
        seen = [scoring.score_frame(p, frames.ids[i]).pred_present for p, i in zip(probs, index)]
        found.append(index[np.asarray(seen, bool)])
    return np.concatenate(found) if found else np.zeros(0, np.int64)


def _hard_negatives(model, settings, frames, run_dir) -> np.ndarray:
    """Mine the starting weights' false heroes in the training frames; record them."""
    from training.data import save_json
    repeats = int(settings['false_hero_repeats'])
    if repeats <= 1:
        return np.zeros(0, np.int64)
    index = false_hero_frames(model, frames)
    empty = int((frames.hero_pixels == 0).sum())
    print(f'false heroes: {len(index)} of {empty} training frames without a hero, '
          f'seen {repeats} times per pass', flush=True)
    save_json(run_dir / 'false_heroes.json', {
        'frames_without_hero': empty, 'false_heroes': len(index), 'repeats': repeats,
        'files': [str(frames.pairs[i].image) for i in index]})
    return index


def git_commit() -> str:
    try:
        return subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=REPO, text=True,
                              capture_output=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return 'unknown'


def plot_curves(history: list, path: Path):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    epochs = [h['epoch'] for h in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.plot(epochs, [h['loss'] for h in history], label='train loss')
    left.plot(epochs, [h['val_loss'] for h in history], label='val loss')
    left.set_xlabel('epoch')
    left.legend()
    for key in ('val_score', 'val_mix_score', 'val_hero_iou', 'val_weight',
                'val_far_hero_detected'):
        right.plot(epochs, [h[key] for h in history], label=key)
    right.set_xlabel('epoch')
    right.set_ylim(0, 1)
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


BACKUP = 'backup'  # Keras' BackupAndRestore folder in a run folder


def make_callbacks(run_dir: Path, val_frames, loss_fn, steps: int, epochs: int,
                   max_minutes: float, select_by='val_score', keep_epoch_weights=False,
                   history=()):
    """
    Build the callback that scores, checkpoints, logs, plots and shows progress.

    best.weights.h5 is the epoch with the highest `select_by`; with keep_epoch_weights every
    epoch's weights are also kept, as epochs/epoch_NN.weights.h5. `history` holds the rows of
    the epochs a resumed run has already done. Last in the list, Keras' BackupAndRestore keeps
    the weights, the optimizer's state and the epoch count in backup/ after each epoch's row
    is written, for `--resume`.
    """
    import keras
    from tqdm import tqdm

    class FollowmeCallback(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.history = list(history)
            self.best = max((h[select_by] for h in self.history), default=-math.inf)
            self.started = time.monotonic()
            self.bar = None
            self.scalars = ScalarLog(run_dir / 'tensorboard')

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch_started = time.monotonic()
            self.bar = tqdm(total=steps, desc=f'epoch {epoch + 1}/{epochs}', unit='step',
                            mininterval=5.0, file=sys.stdout)

        def on_train_batch_end(self, batch, logs=None):
            self.bar.update(1)
            if logs and 'loss' in logs:
                self.bar.set_postfix(loss=f"{float(logs['loss']):.4f}", refresh=False)

        def on_epoch_end(self, epoch, logs=None):
            self.bar.close()
            train_seconds = time.monotonic() - self.epoch_started
            metrics = validation_metrics(self.model, val_frames, loss_fn)
            logs.update(metrics)
            row = {'epoch': epoch + 1, 'loss': float(logs['loss']), **metrics,
                   'learning_rate': float(keras.ops.convert_to_numpy(
                       self.model.optimizer.learning_rate)),
                   'train_seconds': train_seconds,
                   'epoch_seconds': time.monotonic() - self.epoch_started}
            self.history.append(row)
            self.scalars.write(epoch + 1, {k: v for k, v in row.items() if k != 'epoch'})
            self.model.save_weights(run_dir / 'last.weights.h5')
            if keep_epoch_weights:
                (run_dir / 'epochs').mkdir(exist_ok=True)
                self.model.save_weights(run_dir / 'epochs' / f'epoch_{epoch + 1:02d}.weights.h5')
            if metrics[select_by] > self.best:
                self.best = metrics[select_by]
                self.model.save_weights(run_dir / 'best.weights.h5')
                (run_dir / 'best.json').write_text(json.dumps(row, indent=2) + '\n')
            with open(run_dir / 'history.csv', 'w', newline='') as out:
                writer = csv.DictWriter(out, fieldnames=list(row))
                writer.writeheader()
                writer.writerows(self.history)
            plot_curves(self.history, run_dir / 'curves.png')
            tqdm.write(f"epoch {epoch + 1}: loss {row['loss']:.4f} val_loss "
                       f"{row['val_loss']:.4f} val_hero_iou {row['val_hero_iou']:.3f} "
                       f"val_far_hero_detected {row['val_far_hero_detected']:.2f} "
                       f"val_score {row['val_score']:.3f} val_mix_score "
                       f"{row['val_mix_score']:.3f} (best {select_by} {self.best:.3f}) "
                       f"{row['epoch_seconds']:.0f} s", file=sys.stdout)
            sys.stdout.flush()
            if max_minutes and time.monotonic() - self.started > 60.0 * max_minutes:
                tqdm.write(f'time limit of {max_minutes} min reached, stopping', file=sys.stdout)
                self.model.stop_training = True

    followme = FollowmeCallback()
    # Kept when the run ends too: a run stopped by max_minutes can be resumed later.
    backup = keras.callbacks.BackupAndRestore(str(run_dir / BACKUP), delete_checkpoint=False)
    return followme, [followme, backup]


def epochs_done(run_dir: Path) -> int:
    """How many epochs the run's backup holds (0: none)."""
    state = run_dir / BACKUP / 'training_metadata.json'
    return int(json.loads(state.read_text())['epoch']) if state.is_file() else 0


def read_history(run_dir: Path, epochs: int) -> list:
    """Read the rows of history.csv for the first `epochs` epochs, as train wrote them."""
    with open(run_dir / 'history.csv', newline='') as rows:
        history = [{key: int(value) if key == 'epoch' else float(value)
                    for key, value in row.items()} for row in csv.DictReader(rows)]
    # A run killed after writing an epoch's row but before its backup does that epoch again.
    return [row for row in history if row['epoch'] <= epochs]


def load_run_config(run_dir: Path) -> dict:
    """Load the config a run folder was trained with (its config.yaml)."""
    if not (run_dir / 'config.yaml').is_file():
        raise ConfigError(f'--resume {run_dir}: no config.yaml there (give a run folder that '
                          'training.train wrote)')
    return load_config(run_dir / 'config.yaml')


def check_resumable(run_dir: Path, epochs: int) -> int:
    """Return the epochs a run folder has done; raise ConfigError if it cannot go on."""
    done = epochs_done(run_dir)
    if done == 0:
        raise ConfigError(f'--resume {run_dir}: no finished epoch is backed up there '
                          f'({BACKUP}/ is missing: the run stopped in its first epoch, or was '
                          'trained before --resume existed). Start it again with --config')
    if done >= epochs:
        raise ConfigError(f'--resume {run_dir}: all {epochs} epochs are done; nothing to '
                          'resume (a longer schedule is a new run: --config with '
                          'train.init_weights set to this run folder)')
    return done


class ScalarLog:
    """TensorBoard scalars written with tf.summary.write, which needs no tensorboard package."""

    def __init__(self, log_dir: Path):
        import tensorflow as tf
        from tensorflow.core.framework import summary_pb2
        self._tf = tf
        self._writer = tf.summary.create_file_writer(str(log_dir))
        self._metadata = summary_pb2.SummaryMetadata()
        self._metadata.plugin_data.plugin_name = 'scalars'

    def write(self, step: int, values: dict):
        with self._writer.as_default():
            for tag, value in values.items():
                self._tf.summary.write(tag, self._tf.constant(float(value)), step=step,
                                       metadata=self._metadata)
        self._writer.flush()


def resolve_init_weights(path) -> Path:
    """Return the weights file a fine-tune starts from: a .weights.h5 file or a run's best."""
    path = Path(path)
    if path.is_dir():
        path = path / 'best.weights.h5'
    if not path.is_file():
        raise ConfigError(f'train.init_weights: {path} does not exist (give a .weights.h5 '
                          'file, a run folder that holds best.weights.h5 or a float .onnx '
                          'model written by training.export)')
    return path


def _import_onnx_start(model_file, run_dir: Path, train_roots, val_roots) -> Path:
    """Rebuild an exported model's Keras weights in the run folder (training/onnx_import.py)."""
    from training.export import ParityError
    from training.onnx_import import import_onnx, OnnxImportError
    folder = run_dir / 'init_from_onnx'
    try:
        import_onnx(model_file, folder, train_roots, val_roots)
    except (FileNotFoundError, OnnxImportError, ParityError) as error:
        raise ConfigError(f'train.init_weights: {error}') from None
    return folder


def load_init_weights(model, path: Path, partial: bool) -> dict:
    """
    Load a fine-tune's starting weights; with `partial`, only the layers that fit, by name.

    A partial start lets a changed architecture (say, a narrower decoder, or a layer more)
    keep everything it shares with a trained model. Keras keys a weights file by layer type
    and position, not by layer name, so an added layer would shift every later one; a partial
    start therefore rebuilds the model the weights came from (from the `config.yaml` of their
    run folder) and copies each layer whose name and shapes match. Returns which variables
    were loaded and which were not.
    """
    import keras
    import numpy as np
    values = keras.ops.convert_to_numpy
    trainable = [w for w in model.weights if w.trainable]
    before = [values(w) for w in trainable]
    if partial:
        _copy_matching_layers(_source_model(path), model)
    else:
        try:
            model.load_weights(path)
        except ValueError as error:
            first_line = str(error).strip().splitlines()[0]
            raise ConfigError(f'train.init_weights: {path} does not fit this model '
                              f'({first_line}); set train.init_partial: true to load only the '
                              'layers that fit') from None
    # Variables the file left as initialised: new, or their shape differs from the file's (or,
    # in principle, trained to exactly their initial value).
    unchanged = [w.path for w, old in zip(trainable, before) if np.array_equal(old, values(w))]
    loaded = [w.path for w in trainable if w.path not in unchanged]
    print(f'init weights {path}: {len(loaded)} of {len(trainable)} trainable variables loaded'
          + (f", unchanged: {', '.join(unchanged)}" if unchanged else ''), flush=True)
    return {'weights': str(path), 'partial': partial, 'unchanged': unchanged, 'loaded': loaded}


def _source_model(weights: Path):
    """Rebuild the model a weights file was saved from, from its run's config.yaml."""
    from training.evaluate import KerasPredictor
    config_file = weights.parent / 'config.yaml'
    if not config_file.is_file():
        raise ConfigError(f'train.init_partial needs {config_file}: the architecture of the run '
                          f'that wrote {weights.name} names its layers. Give that run folder '
                          'as train.init_weights')
    return KerasPredictor(weights.parent, weights.name).model


def _copy_matching_layers(source, target):
    """Copy every layer's weights from source to the target layer of the same name and shapes."""
    by_name = {layer.name: layer for layer in source.layers if layer.weights}
    for layer in target.layers:
        match = by_name.get(layer.name)
        if match is None or not layer.weights:
            continue
        if [tuple(w.shape) for w in layer.weights] == [tuple(w.shape) for w in match.weights]:
            layer.set_weights(match.get_weights())


def _online_pasted(settings, size, seed, run_dir):
    """Return the stream of frames pasted on the fly (paste_people), or None when off."""
    from training.data import find_pairs, fingerprint, materialize, save_json
    from training.paste_people import online_dataset
    share = float(settings['paste_share'])
    if not 0.0 <= share < 1.0:
        raise ConfigError(f'train.paste_share must be in [0, 1), not {share}')
    if share == 0.0:
        return None
    if not settings['paste_source']:
        raise ConfigError('train.paste_share needs train.paste_source: a classic-layout folder '
                          'to cut people from (the classic train set, say)')
    pairs = find_pairs(Path(settings['paste_source']).expanduser().resolve())
    save_json(run_dir / 'paste_source_fingerprint.json', fingerprint(pairs))
    frames = materialize(pairs, size, 'decoding paste source')
    return online_dataset(frames.images, frames.ids, seed)


def distribution_strategy(device_type='GPU'):
    """
    Return MirroredStrategy over all visible `device_type` devices, or the default for one.

    One GPU or none gets the default strategy. The tests mirror over two logical CPUs, as no
    machine of ours has several GPUs.
    """
    import tensorflow as tf
    devices = tf.config.list_logical_devices(device_type)
    if len(devices) > 1:
        return tf.distribute.MirroredStrategy([device.name for device in devices])
    return tf.distribute.get_strategy()


def train(config: dict, output_root=DEFAULT_OUTPUT, run_name=None, resume=False) -> Path:
    """
    Run one experiment; return its run folder (best.weights.h5 is the result).

    With `resume`, `run_name` names an existing run folder, `config` is its config.yaml, and
    training goes on from its last finished epoch: weights, optimizer state (so the learning
    rate schedule too) and the epoch count come from its backup.
    """
    import keras

    from training.augment import AugmentConfig, make_augment_fn
    from training.data import find_all_pairs, fingerprint, materialize, save_json, \
        training_dataset
    from training.model import build_model, ModelConfig

    model_config = ModelConfig.from_dict(config['model'])
    augment_config = AugmentConfig.from_dict(config['augment'])
    settings = config['train']
    train_roots = data_roots(config['data']['train'], 'train')
    val_roots = data_roots(config['data']['val'], 'val')
    config = copy.deepcopy(config)
    config['data'] = {'train': [str(p) for p in train_roots],
                      'val': [str(p) for p in val_roots]}

    run_name = run_name or f"{config['name']}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(output_root) / run_name
    steps, epochs = int(settings['steps_per_epoch']), int(settings['epochs'])
    if resume:
        done = check_resumable(run_dir, epochs)
        print(f'resuming {run_dir} after epoch {done} of {epochs}', flush=True)
    else:
        _clear_finished_backup(run_dir)
        done = 0
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / 'config.yaml').write_text(yaml.safe_dump(config, sort_keys=False))
    print(f'run folder: {run_dir}', flush=True)

    keras.utils.set_random_seed(int(config['seed']))
    pasted = _online_pasted(settings, model_config.input_size, int(config['seed']), run_dir)
    train_pairs = subset(find_all_pairs(train_roots), int(settings['max_train_frames']),
                         int(config['seed']))
    val_pairs = subset(find_all_pairs(val_roots), int(settings['max_val_frames']),
                       int(config['seed']))
    data = {'train': fingerprint(train_pairs), 'val': fingerprint(val_pairs)}
    if resume:
        _check_same_data(run_dir, data)
    else:
        save_json(run_dir / 'data_fingerprint.json', {**data, 'commit': git_commit()})
    size = model_config.input_size
    train_frames = materialize(train_pairs, size, 'decoding train')
    val_frames = materialize(val_pairs, size, 'decoding val')
    for label, frames in (('train', train_frames), ('val', val_frames)):
        if frames.resized:
            print(f'{label}: {frames.resized} frames had an unusual size and were resized',
                  flush=True)

    learning_rate = float(settings['learning_rate'])
    if settings['lr_schedule'] == 'cosine':
        learning_rate = keras.optimizers.schedules.CosineDecay(learning_rate, steps * epochs)
    loss_fn = make_loss(float(settings['hero_weight']), float(settings['dice_weight']))

    init_weights = settings['init_weights']
    if str(init_weights).endswith('.onnx'):
        init_weights = _import_onnx_start(init_weights, run_dir, train_roots, val_roots)
    with distribution_strategy().scope():
        model = build_model(model_config)
        if init_weights:
            report = load_init_weights(model, resolve_init_weights(init_weights),
                                       bool(settings['init_partial']))
            save_json(run_dir / 'init_weights.json', report)
        model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=loss_fn)
    # A resumed run draws new shuffles and augmentations, not those of the first epochs again.
    dataset = training_dataset(
        train_frames, int(settings['batch_size']), int(config['seed']) + 7919 * done,
        make_augment_fn(augment_config), int(settings['small_hero_pixels']),
        int(settings['small_hero_repeats']), pasted, float(settings['paste_share']),
        _hard_negatives(model, settings, train_frames, run_dir),
        int(settings['false_hero_repeats']))
    select_by = settings['select_by']
    followme, callbacks = make_callbacks(run_dir, val_frames, loss_fn, steps, epochs,
                                         float(settings['max_minutes']), select_by,
                                         bool(settings['keep_epoch_weights']),
                                         read_history(run_dir, done) if done else ())
    try:
        model.fit(dataset, epochs=epochs, steps_per_epoch=steps, callbacks=callbacks,
                  shuffle=False, verbose=0)
    except KeyboardInterrupt:
        print('\ninterrupted: best.weights.h5 holds the best epoch so far', flush=True)
    finished = epochs_done(run_dir)
    if finished < epochs:
        print(f'stopped after epoch {finished} of {epochs}: '
              f'`python -m training.train --resume {run_dir}` goes on', flush=True)
    if followme.history:
        best = max(followme.history, key=lambda h: h[select_by])
        print(f"best epoch {best['epoch']}: {select_by} {best[select_by]:.4f}, "
              f"weights in {run_dir / 'best.weights.h5'}", flush=True)
    return run_dir


def _clear_finished_backup(run_dir: Path):
    """Let a new run reuse a finished run's folder, never an unfinished one's."""
    done = epochs_done(run_dir)
    if not done:
        return
    if done < int(load_run_config(run_dir)['train']['epochs']):
        raise ConfigError(f'{run_dir} holds an unfinished run: --resume {run_dir} goes on '
                          'with it, or choose another --name')
    # Keras would restore it, and a new run would start as finished.
    shutil.rmtree(run_dir / BACKUP)


def _check_same_data(run_dir: Path, data: dict):
    saved = json.loads((run_dir / 'data_fingerprint.json').read_text())
    for split in ('train', 'val'):
        if saved[split]['sha256'] != data[split]['sha256']:
            raise ConfigError(f'--resume {run_dir}: the {split} data is not what the run '
                              f"started with ({data[split]['frames']} frames now, "
                              f"{saved[split]['frames']} then, or the files changed)")


def main(argv=None):
    parser = argparse.ArgumentParser(
        description='Train the follow-me FCN from a YAML experiment config, or go on with an '
                    'interrupted run (--resume).')
    start = parser.add_mutually_exclusive_group(required=True)
    start.add_argument('--config', help='experiment YAML (training/configs/)')
    start.add_argument('--resume', metavar='RUN',
                       help='run folder to go on with from its last finished epoch (Ctrl-C, a '
                            'crash or max_minutes stopped it); its config.yaml is used')
    parser.add_argument('--output', default=str(DEFAULT_OUTPUT),
                        help='folder for run folders (default: %(default)s)')
    parser.add_argument('--name', help='run folder name (default: <config name>-<time>)')
    parser.add_argument('--epochs', type=int, help='override train.epochs')
    parser.add_argument('--steps-per-epoch', type=int, help='override train.steps_per_epoch')
    parser.add_argument('--max-minutes', type=float, help='override train.max_minutes')
    parser.add_argument('--seed', type=int, help='override seed (the same run, another draw)')
    parser.add_argument('--select-by', choices=SELECTION_METRICS,
                        help='override train.select_by (the figure that picks best.weights.h5)')
    parser.add_argument('--keep-epoch-weights', action='store_true', default=None,
                        help="also keep every epoch's weights in <run>/epochs/")
    args = parser.parse_args(argv)
    overrides = {key: value for key, value in (
        ('epochs', args.epochs), ('steps_per_epoch', args.steps_per_epoch),
        ('max_minutes', args.max_minutes), ('select_by', args.select_by),
        ('keep_epoch_weights', args.keep_epoch_weights)) if value is not None}
    from training.data import DataError
    try:
        if args.resume:
            fixed = [flag for flag, value in (
                ('--epochs', args.epochs), ('--steps-per-epoch', args.steps_per_epoch),
                ('--seed', args.seed), ('--select-by', args.select_by),
                ('--keep-epoch-weights', args.keep_epoch_weights), ('--name', args.name))
                if value is not None]
            if fixed:
                raise ConfigError(f"--resume goes on with the run's own config.yaml: "
                                  f"{', '.join(fixed)} cannot change it (--max-minutes can)")
            run_dir = Path(args.resume)
            config = load_run_config(run_dir)
            if args.max_minutes is not None:
                config['train']['max_minutes'] = args.max_minutes
            train(config, run_dir.parent, run_dir.name, resume=True)
        else:
            config = load_config(args.config, {} if args.seed is None else {'seed': args.seed})
            config['train'].update(overrides)
            train(config, args.output, args.name)
    except (ConfigError, DataError) as err:
        parser.exit(2, f'error: {err}\n')


if __name__ == '__main__':
    main()
