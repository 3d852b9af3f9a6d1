"""
Rebuild a Keras training run from an exported followme ONNX model, to fine-tune it.

    python -m training.onnx_import --model models/followme_fcn.onnx \
        --output training_runs/shipped-from-onnx

A training run's Keras weights stay on the machine that trained it (training_runs/ is not
committed), so without this the shipped model could only be retrained from scratch. The
exported graph holds every weight, in a different shape: tf2onnx folded each batch norm into
the convolution before it, and `graph_rewrite` split each decoder concatenation into one
separable convolution per input and folded the separable convolutions over RGB into dense
ones. This module undoes each step exactly (a folded 3x3 kernel is rank one per input channel,
so one SVD recovers its depthwise and pointwise parts), rebuilds the network from the model's
`followme.architecture` metadata and checks it against ONNX Runtime on real frames.

Batch norm: the folded graph keeps only each channel's scale (in the convolution) and shift.
Inference needs nothing more, but a fine-tune runs batch norm on batch statistics, so each
layer's moving mean and variance are measured on real frames (`--calibration-frames`) and its
gamma and beta set so that inference stays exactly the exported function while a training
batch sees what the original network's batch norm saw.

The output folder holds what a fine-tune and `training.evaluate` read of a run folder
(config.yaml, best.weights.h5): give it as `train.init_weights` (also with `init_partial`)
or `--model`. It has no data fingerprint, so `training.export` needs a run trained from it.
"""

import argparse
import json
from pathlib import Path
import re

import numpy as np
import yaml


class OnnxImportError(ValueError):
    """The ONNX file is not a float followme export this module can invert."""


def read_architecture(proto):
    """Return the `ModelConfig` an export recorded in its metadata; refuse other files."""
    from training.model import ModelConfig
    metadata = {p.key: p.value for p in proto.metadata_props}
    if metadata.get('followme.quantized'):
        raise OnnxImportError('this is the int8 model; import the float model it was made from '
                              f"({metadata.get('followme.float_model', 'followme_fcn.onnx')})")
    if 'followme.architecture' not in metadata:
        raise OnnxImportError('no followme.architecture metadata: only models written by '
                              'training.export can be imported')
    return ModelConfig.from_dict(json.loads(metadata['followme.architecture']))


class _Graph:
    """The ONNX graph's weights and which node produces each tensor."""

    def __init__(self, proto):
        from onnx import numpy_helper
        self.nodes = list(proto.graph.node)
        self.weights = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
        self.producer = {out: node for node in self.nodes for out in node.output}
        self.used = set()

    def conv_weights(self, node):
        """(kernel O x C x kh x kw, bias or None) of a Conv node; marks it used."""
        if node is None or node.op_type != 'Conv':
            raise OnnxImportError(f"expected a Conv, found {node.op_type if node else 'nothing'}")
        try:
            kernel = self.weights[node.input[1]]
            bias = self.weights[node.input[2]] if len(node.input) > 2 else None
        except KeyError as missing:
            raise OnnxImportError(f'Conv {node.name}: weight {missing} is not a constant'
                                  ) from None
        self.used.add(node.name)
        return kernel, bias

    def relu_of(self, layer_name):
        pattern = re.compile(rf'/{re.escape(layer_name)}_relu(_\d+)?/Relu$')
        found = [n for n in self.nodes if n.op_type == 'Relu' and pattern.search(n.name)]
        if len(found) != 1:
            raise OnnxImportError(f'expected one Relu for layer {layer_name}, found {len(found)}')
        return found[0]


def _group(node):
    return next((a.i for a in node.attribute if a.name == 'group'), 1)


def _factor_dense(kernel):
    """Split a dense kernel W[o, c] = pw[o, c] * dw[c] (a folded separable conv) into dw, pw."""
    out_channels, in_channels, height, width = kernel.shape
    depthwise = np.empty((in_channels, 1, height, width), np.float32)
    pointwise = np.empty((out_channels, in_channels, 1, 1), np.float32)
    for c in range(in_channels):
        u, s, vt = np.linalg.svd(kernel[:, c].reshape(out_channels, -1).astype(np.float64))
        if len(s) > 1 and s[1] > 1e-5 * s[0]:
            raise OnnxImportError('a dense convolution that is not a folded separable one '
                                  f'(channel {c}: second singular value {s[1]:.3g} of {s[0]:.3g})')
        depthwise[c, 0] = vt[0].reshape(height, width)
        pointwise[:, c, 0, 0] = u[:, 0] * s[0]
    return depthwise, pointwise


def _separable_branch(graph, node):
    """(depthwise C x 1 x k x k or None, pointwise O x C x kh x kw, bias) of one branch."""
    kernel, bias = graph.conv_weights(node)
    source = graph.producer.get(node.input[0])
    if source is not None and source.op_type == 'Conv' and _group(source) > 1:
        return graph.conv_weights(source)[0], kernel, bias
    if kernel.shape[2:] != (1, 1):
        return (*_factor_dense(kernel), bias)
    return None, kernel, bias


def _layer_weights(graph, relu):
    """
    Return the weights of the conv that feeds `relu`.

    That is its depthwise kernel (None for a plain conv), pointwise or plain kernel and bias,
    and the kernel of the context projection added before it (None if there is none).
    """
    node = graph.producer.get(relu.input[0])
    context = None
    if node is not None and node.op_type == 'Add':
        sources = [graph.producer.get(i) for i in node.input]
        upsampled = [n for n in sources if n is not None and n.op_type == 'Resize']
        if len(upsampled) == 1 and len(sources) == 2:  # bottleneck + upsampled context level
            context = graph.conv_weights(graph.producer.get(upsampled[0].input[0]))[0]
            node = next(n for n in sources if n is not upsampled[0])
    branches = ([graph.producer.get(i) for i in node.input] if node is not None
                and node.op_type == 'Add' else [node])
    # Branch order is the concatenation's order: graph_rewrite keeps it in the Add's inputs.
    parts = [_separable_branch(graph, branch) for branch in branches]
    # The folded batch norm's shift, on one branch; tf2onnx drops a bias that is all zeros.
    pointwise = np.concatenate([pw for _, pw, _ in parts], axis=1)
    bias = sum((b for _, _, b in parts if b is not None), np.zeros(pointwise.shape[0], np.float32))
    depthwise = [dw for dw, _, _ in parts]
    if any(dw is None for dw in depthwise) and len(parts) > 1:
        raise OnnxImportError(f'{relu.name}: a split convolution without a depthwise part')
    dw = None if depthwise[0] is None else np.concatenate(depthwise, axis=0)
    return dw, pointwise, bias, context


def keras_model_from_onnx(proto):
    """
    Rebuild the Keras network an exported ONNX model computes, batch norms as identity + shift.

    Each batch norm gets moving mean 0, variance 1 until `calibrate_batch_norm` measures them.
    """
    from training.model import build_model
    config = read_architecture(proto)
    model = build_model(config)
    graph = _Graph(proto)
    for layer in model.layers:
        if not layer.name.endswith('_bn'):
            continue
        name = layer.name[:-len('_bn')]
        dw, pw, bias, context = _layer_weights(graph, graph.relu_of(name))
        if context is not None:
            _assign(model.get_layer('context_project'), [context.transpose(2, 3, 1, 0)])
        conv = model.get_layer(f'{name}_sepconv' if dw is not None else name)
        kernels = ([dw.transpose(2, 3, 0, 1), pw.transpose(2, 3, 1, 0)] if dw is not None
                   else [pw.transpose(2, 3, 1, 0)])
        _assign(conv, kernels)
        channels = bias.shape[0]
        _assign(layer, [np.full(channels, np.sqrt(1 + layer.epsilon), np.float32), bias,
                        np.zeros(channels, np.float32), np.ones(channels, np.float32)])
    softmax = [n for n in graph.nodes if n.op_type == 'Softmax']
    if len(softmax) != 1:
        raise OnnxImportError(f'expected one Softmax, found {len(softmax)}')
    kernel, bias = graph.conv_weights(graph.producer.get(softmax[0].input[0]))
    if bias is None:
        bias = np.zeros(kernel.shape[0], np.float32)
    _assign(model.get_layer('classes'), [kernel.transpose(2, 3, 1, 0), bias])
    convs = {n.name for n in graph.nodes if n.op_type == 'Conv'}
    if convs - graph.used:
        raise OnnxImportError(f'convolutions the network does not have: '
                              f'{", ".join(sorted(convs - graph.used))}')
    return model, config


def _assign(layer, arrays):
    shapes = [tuple(w.shape) for w in layer.weights]
    if shapes != [a.shape for a in arrays]:
        raise OnnxImportError(f'layer {layer.name}: the ONNX weights have shapes '
                              f'{[a.shape for a in arrays]}, the architecture {shapes}')
    layer.set_weights([a.astype(np.float32) for a in arrays])


def calibrate_batch_norm(model, images_uint8, batch_size=16):
    """
    Set each batch norm's moving statistics to its input's on these frames, output unchanged.

    Gamma and beta are rescaled so that inference computes exactly what it did before; a
    training batch is then normalised by statistics close to these.
    """
    import keras

    from training.data import to_model_input
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    probe = keras.Model(model.inputs, [layer.input for layer in norms])
    sums = [np.zeros(layer.input.shape[-1], np.float64) for layer in norms]
    squares = [np.zeros_like(s) for s in sums]
    counts = [0] * len(norms)
    for start in range(0, len(images_uint8), batch_size):
        outputs = probe.predict_on_batch(to_model_input(images_uint8[start:start + batch_size]))
        for i, values in enumerate(outputs):
            values = np.asarray(values, np.float64)
            sums[i] += values.sum(axis=(0, 1, 2))
            squares[i] += np.square(values).sum(axis=(0, 1, 2))
            counts[i] += int(np.prod(values.shape[:3]))
    for layer, total, square, count in zip(norms, sums, squares, counts):
        mean = total / count
        variance = np.maximum(square / count - np.square(mean), 0.0)
        # Inference computes scale * input + offset; keep that, with the measured statistics.
        gamma, beta, old_mean, old_variance = layer.get_weights()
        scale = gamma / np.sqrt(old_variance + layer.epsilon)
        offset = beta - scale * old_mean
        layer.set_weights([(scale * np.sqrt(variance + layer.epsilon)).astype(np.float32),
                           (offset + scale * mean).astype(np.float32), mean.astype(np.float32),
                           variance.astype(np.float32)])


def _spread(pairs, count):
    """`count` pairs evenly spread over the list (all of them if there are fewer)."""
    if count >= len(pairs):
        return list(pairs)
    return [pairs[i] for i in np.linspace(0, len(pairs) - 1, count).round().astype(int)]


def import_onnx(model_path, output, calibration_data=None, parity_data=None,
                calibration_frames=64, parity_frames=32, tolerance=1e-4) -> dict:
    """Write a run folder (config.yaml, best.weights.h5, import.json) from an exported model."""
    import dataclasses
    import hashlib

    import onnx

    from training.data import find_all_pairs, materialize
    from training.export import check_parity
    from training.train import data_roots
    model_path, output = Path(model_path), Path(output)
    if not model_path.is_file():
        raise FileNotFoundError(f'{model_path} does not exist (give an .onnx file written by '
                                'training.export, such as models/followme_fcn.onnx)')
    if calibration_frames < 1 or parity_frames < 1:
        raise ValueError('--calibration-frames and --parity-frames must be at least 1')
    model, config = keras_model_from_onnx(onnx.load(str(model_path)))
    calibration_roots = data_roots(calibration_data, 'train')
    calibration = _spread(find_all_pairs(calibration_roots), calibration_frames)
    calibrate_batch_norm(model, materialize(calibration, config.input_size,
                                            'calibration frames').images)
    parity_roots = data_roots(parity_data, 'val')
    parity_images = materialize(find_all_pairs(parity_roots)[:parity_frames],
                                config.input_size, 'parity frames').images
    parity = check_parity(model_path, model, parity_images, tolerance)
    output.mkdir(parents=True, exist_ok=True)
    model.save_weights(output / 'best.weights.h5')
    run_config = {'name': f'{model_path.stem}-imported',
                  'data': {'train': [str(r) for r in calibration_roots],
                           'val': [str(r) for r in parity_roots]},
                  'model': dataclasses.asdict(config)}
    (output / 'config.yaml').write_text(yaml.safe_dump(run_config, sort_keys=False))
    report = {'source': str(model_path),
              'source_sha256': hashlib.sha256(model_path.read_bytes()).hexdigest(),
              'calibration_frames': len(calibration), 'parity_frames': len(parity_images),
              'parity_max_abs_diff': parity, 'tolerance': tolerance}
    (output / 'import.json').write_text(json.dumps(report, indent=2) + '\n')
    return report


def main(argv=None):
    from training.data import DataError
    from training.export import ParityError
    from training.train import ConfigError
    parser = argparse.ArgumentParser(
        description='Rebuild a Keras run folder (config.yaml, best.weights.h5) from a float '
                    'ONNX model written by training.export, checked against ONNX Runtime on '
                    'real frames, so it can be fine-tuned (train.init_weights) or evaluated.')
    parser.add_argument('--model', required=True,
                        help='float ONNX model from training.export (models/followme_fcn.onnx)')
    parser.add_argument('--output', required=True, help='run folder to write')
    parser.add_argument('--calibration-data', nargs='+',
                        help='classic-layout folders whose frames measure the batch-norm '
                             "statistics (default: the shared data set's train split)")
    parser.add_argument('--parity-data', nargs='+',
                        help='folders for the parity check (default: the shared validation split)')
    parser.add_argument('--calibration-frames', type=int, default=64,
                        help='frames for the batch-norm statistics (default: %(default)s)')
    parser.add_argument('--parity-frames', type=int, default=32,
                        help='frames for the parity check (default: %(default)s)')
    parser.add_argument('--tolerance', type=float, default=1e-4,
                        help='max abs probability difference allowed (default: %(default)s)')
    args = parser.parse_args(argv)
    try:
        report = import_onnx(args.model, args.output, args.calibration_data, args.parity_data,
                             args.calibration_frames, args.parity_frames, args.tolerance)
    except (ConfigError, DataError, FileNotFoundError, OnnxImportError, ParityError,
            ValueError) as err:
        parser.exit(2, f'error: {err}\n')
    print(f'imported {args.model} into {args.output}: parity max abs diff '
          f"{report['parity_max_abs_diff']:.3g} on {report['parity_frames']} real frames, "
          f"batch norm measured on {report['calibration_frames']} frames")


if __name__ == '__main__':
    main()
