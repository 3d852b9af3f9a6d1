"""
Start a narrower network from a trained one: keep its most important channels, drop the rest.

    python -m training.narrow --source RUN --config CONFIG --output FOLDER

CONFIG describes the narrower network (fewer filters in some layers, or a new 1x1 `reduce`
layer before an upsampling). Every layer of it that the trained run (RUN, its config.yaml
and best.weights.h5) also has gets that layer's weights, restricted to the channels kept; a
new 1x1 layer starts as a selection of kept channels (one-hot kernel, identity batch norm). A
channel's importance is the first-order estimate of how much the loss on frames of the
validation set would rise without it (activation x gradient after its ReLU, every class
weighted alike), and each narrowed layer keeps its most important ones. So the narrowed
network starts as the trained one with the other channels switched off (a test checks exactly
that), and fine-tuning it (`train.init_weights: FOLDER`) recovers from there, where fresh
layers would start from nothing. FOLDER gets
config.yaml, best.weights.h5, narrow.json (the channels kept per layer) and the source run's
data_fingerprint.json, so `training.export` can also write the narrowed start as it is.
"""

import argparse
import json
from pathlib import Path
import shutil
import sys

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

CONVOLUTIONS = ('Conv2D', 'SeparableConv2D')


class NarrowError(ValueError):
    """The target network is not a narrowing the source's weights can start."""


def _producers(layer) -> list:
    nodes = layer._inbound_nodes
    return [t._keras_history.operation for t in nodes[0].input_tensors] if nodes else []


def _consumers(model, layer) -> list:
    return [other for other in model.layers if layer in _producers(other)]


def _kind(layer) -> str:
    return type(layer).__name__


def _relu_after(model, conv):
    """Find the ReLU that conv -> batch norm -> ReLU ends in (where the channels signal)."""
    layer = conv
    for expected in ('BatchNormalization', 'ReLU'):
        after = _consumers(model, layer)
        if len(after) != 1 or _kind(after[0]) != expected:
            raise NarrowError(f'cannot narrow {conv.name}: it is not followed by batch norm '
                              'and ReLU alone')
        layer = after[0]
    return layer


def _taylor_importance(model, relus, frames, truth_ids, batch_size=8) -> dict:
    """
    Per channel of each ReLU's output: |activation x d loss / d activation|, summed.

    The first-order estimate of how much the loss would rise with the channel switched off
    (Molchanov et al., "Pruning convolutional neural networks for resource efficient
    inference", 2017). The loss is cross-entropy with every class weighted alike, so channels
    that carry the rare hero count as much as those that carry the background: a mean
    activation alone keeps the background's channels and drops the hero's.
    """
    import keras
    import tensorflow as tf
    if not relus:
        return {}
    probe = keras.Model(model.input, [relu.output for relu in relus] + [model.output])
    sums = [np.zeros(relu.output.shape[-1]) for relu in relus]
    for start in range(0, len(frames), batch_size):
        truth = tf.one_hot(truth_ids[start:start + batch_size], model.output.shape[-1])
        with tf.GradientTape() as tape:
            *activations, probs = probe(frames[start:start + batch_size], training=False)
            tape.watch(activations)
            pixels = tf.reduce_sum(truth, axis=(0, 1, 2))
            per_class = -tf.reduce_sum(truth * tf.math.log(probs + 1e-7), axis=(0, 1, 2))
            loss = tf.reduce_sum(tf.math.divide_no_nan(per_class, pixels))
        for total, activation, gradient in zip(sums, activations,
                                               tape.gradient(loss, activations)):
            total += np.abs(tf.reduce_sum(activation * gradient, axis=(1, 2)).numpy()).sum(0)
    return {relu.name: total for relu, total in zip(relus, sums)}


def _strongest(importance, candidates, count) -> np.ndarray:
    order = np.argsort(-importance[candidates], kind='stable')[:count]
    return np.sort(candidates[order])


def narrow(source, target, frames, truth_ids) -> dict:
    """
    Set `target`'s weights from `source`'s, keeping the most important channels.

    `frames` are model inputs (N, H, W, 3) and `truth_ids` their class ids (N, H, W), to
    rank the channels on. Returns the kept source channels per narrowed or new layer.
    """
    by_name = {layer.name: layer for layer in source.layers}
    narrowed = []  # (target conv, source ReLU whose channels rank it)
    for layer in target.layers:
        if _kind(layer) not in CONVOLUTIONS:
            continue
        match = by_name.get(layer.name)
        if match is None:
            producer = by_name.get(_producers(layer)[0].name)
            if producer is None or _kind(producer) != 'ReLU' or layer.kernel_size != (1, 1):
                raise NarrowError(f'{layer.name} is new: only a 1x1 convolution right after '
                                  'a ReLU of the trained network can start as a selection')
            narrowed.append((layer, producer))
        elif layer.filters > match.filters:
            raise NarrowError(f'{layer.name} has {layer.filters} filters, more than the '
                              f"trained network's {match.filters}: this narrows only")
        elif layer.filters < match.filters:
            narrowed.append((layer, _relu_after(source, match)))
    relus = list({relu.name: relu for _, relu in narrowed}.values())
    importance = _taylor_importance(source, relus, frames, truth_ids)
    rank = {layer.name: relu.name for layer, relu in narrowed}

    # Channels of each target layer's output, as indices into the matching source tensor.
    kept = {}
    for layer in target.layers:
        kind, producers = _kind(layer), _producers(layer)
        inputs = [kept[p.name] for p in producers]
        match = by_name.get(layer.name)
        if kind == 'InputLayer':
            kept[layer.name] = np.arange(layer.output.shape[-1])
        elif kind == 'Concatenate':
            offsets = np.cumsum([0] + [p.output.shape[-1] for p in _producers(match)])
            kept[layer.name] = np.concatenate([k + o for k, o in zip(inputs, offsets)])
        elif kind in CONVOLUTIONS and match is None:
            source_channels = inputs[0]
            chosen = _strongest(importance[rank[layer.name]], source_channels, layer.filters)
            kernel = np.zeros(layer.weights[0].shape, np.float32)
            kernel[0, 0, np.searchsorted(source_channels, chosen), np.arange(len(chosen))] = 1
            layer.set_weights([kernel] + [w.numpy() * 0 for w in layer.weights[1:]])
            kept[layer.name] = chosen
        elif kind in CONVOLUTIONS:
            out = np.arange(match.filters)
            if layer.name in rank:
                out = _strongest(importance[rank[layer.name]], out, layer.filters)
            rows = inputs[0]
            weights = [w.numpy() for w in match.weights]
            if kind == 'SeparableConv2D':
                values = [weights[0][:, :, rows, :], weights[1][:, :, rows, :][..., out]]
            else:
                values = [weights[0][:, :, rows, :][..., out]]
            values += [bias[out] for bias in weights[len(values):]]
            layer.set_weights(values)
            kept[layer.name] = out
        elif kind == 'BatchNormalization' and match is None:
            gamma, beta, mean, variance = (w.numpy() for w in layer.weights)
            # y = gamma (x - mean) / sqrt(variance + epsilon) + beta = x
            layer.set_weights([np.ones_like(gamma), np.zeros_like(beta), np.zeros_like(mean),
                               np.full_like(variance, 1.0 - layer.epsilon)])
            kept[layer.name] = inputs[0]
        else:
            if any(not np.array_equal(inputs[0], other) for other in inputs[1:]):
                raise NarrowError(f'{layer.name} adds tensors narrowed to different channels')
            if layer.weights:  # batch norm of a source layer
                layer.set_weights([w.numpy()[inputs[0]] for w in match.weights])
            kept[layer.name] = inputs[0]
    return {name: kept[name].tolist() for name in rank}


def main(argv=None):
    parser = argparse.ArgumentParser(
        description='Start a narrower network from a trained run: its most important channels '
                    'kept, written as a run folder a fine-tune can start from '
                    '(train.init_weights).')
    parser.add_argument('--source', required=True, type=Path,
                        help='trained run folder (config.yaml, best.weights.h5)')
    parser.add_argument('--weights', default='best.weights.h5',
                        help='weights file in the run folder (default: %(default)s)')
    parser.add_argument('--config', required=True, type=Path,
                        help='training config whose model: section is the narrower network')
    parser.add_argument('--output', required=True, type=Path, help='folder to write')
    parser.add_argument('--frames', type=int, default=64,
                        help='validation frames that rank the channels (default: %(default)s)')
    args = parser.parse_args(argv)

    import yaml
    from training.data import DataError, find_all_pairs, materialize, to_model_input
    from training.evaluate import KerasPredictor
    from training.model import build_model, ModelConfig
    from training.train import ConfigError, data_roots, load_config
    try:
        config = load_config(args.config)
        source = KerasPredictor(args.source, args.weights).model
        target = build_model(ModelConfig.from_dict(config['model']))
        pairs = find_all_pairs(data_roots(config['data']['val'], 'val'))
        step = max(1, len(pairs) // args.frames)
        frames = materialize(pairs[::step][:args.frames], target.input.shape[1:3],
                             'ranking frames')
        kept = narrow(source, target, to_model_input(frames.images), frames.ids)
    except (ConfigError, DataError, FileNotFoundError, NarrowError) as error:
        parser.exit(2, f'error: {error}\n')
    args.output.mkdir(parents=True, exist_ok=True)
    target.save_weights(args.output / 'best.weights.h5')
    # The weights were trained on the source run's data: export's model card reads it here.
    fingerprint = args.source / 'data_fingerprint.json'
    if fingerprint.is_file():
        shutil.copyfile(fingerprint, args.output / fingerprint.name)
    (args.output / 'config.yaml').write_text(yaml.safe_dump(config, sort_keys=False))
    (args.output / 'narrow.json').write_text(json.dumps(
        {'source': str(args.source / args.weights), 'frames': len(frames.images), 'kept': kept},
        indent=1) + '\n')
    for name, channels in kept.items():
        print(f'{name}: kept {len(channels)} channels {channels}')
    print(f'wrote {args.output}: fine-tune it with train.init_weights: {args.output}')


if __name__ == '__main__':
    main()
