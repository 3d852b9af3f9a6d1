"""An exported model comes back as the Keras network it was exported from (onnx_import)."""

import dataclasses

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from test_training_data import write_classic_set
from training import onnx_import
from training.data import find_all_pairs, materialize, to_model_input
from training.evaluate import KerasPredictor
from training.export import contract_metadata, convert, set_metadata
from training.model import build_model, ModelConfig

# Every shape the export rewrites: the RGB separable folded into a dense conv (first encoder
# block, last decoder block's input branch), each decoder concatenation split in two, a
# reduce conv before an upsampling, one and two convs per decoder block.
TINY = ModelConfig(input_size=(32, 32), encoder_filters=(4, 8, 8), bottleneck_filters=8,
                   decoder_convs=(2, 1, 1), decoder_reduce=(0, 0, 4))


def trained_looking(config, seed=3):
    """Build a model whose every weight and batch-norm statistic is off its initial value."""
    model = build_model(config)
    rng = np.random.default_rng(seed)
    for weight in model.weights:  # signed and small: a softmax far from saturated
        positive = 'variance' in weight.path or 'gamma' in weight.path
        low, high = (0.5, 1.5) if positive else (-0.5, 0.5)
        weight.assign(rng.uniform(low, high, tuple(weight.shape)).astype('float32'))
    return model


def export_to(path, model, config, **metadata):
    proto = convert(model, config.input_size)
    set_metadata(proto, {**contract_metadata(config.input_size, {}, None, 'test',
                                             dataclasses.asdict(config)), **metadata})
    onnx.save(proto, path)
    return path


@pytest.fixture(scope='module')
def frames(tmp_path_factory):
    root = tmp_path_factory.mktemp('frames')
    return (write_classic_set(root / 'train', frames=12, size=(48, 40), seed=1),
            write_classic_set(root / 'val', frames=6, size=(48, 40), seed=2))


def images(root, size):
    return materialize(find_all_pairs([root]), size, 'frames').images


def test_the_imported_run_computes_what_was_exported(tmp_path, frames):
    original = trained_looking(TINY)
    model_file = export_to(tmp_path / 'model.onnx', original, TINY)
    report = onnx_import.import_onnx(model_file, tmp_path / 'run', frames[0], frames[1],
                                     calibration_frames=12, parity_frames=6)
    imported = KerasPredictor(tmp_path / 'run')
    pixels = to_model_input(images(frames[1], TINY.input_size))
    np.testing.assert_allclose(imported.model(pixels, training=False),
                               original(pixels, training=False), atol=1e-4)
    assert report['parity_max_abs_diff'] <= 1e-4
    assert report['calibration_frames'] == 12 and report['parity_frames'] == 6


def test_batch_norm_sees_in_training_what_the_network_computes(tmp_path, frames):
    """On the calibration frames as one batch, training mode equals inference mode."""
    config = ModelConfig(input_size=(32, 32), encoder_filters=(4, 8), bottleneck_filters=8,
                         decoder_convs=1)
    model_file = export_to(tmp_path / 'model.onnx', trained_looking(config), config)
    pixels = to_model_input(images(frames[0], config.input_size))
    uncalibrated, _ = onnx_import.keras_model_from_onnx(onnx.load(model_file))
    exported = np.asarray(uncalibrated(pixels, training=False))
    # Without the statistics, training mode computes another function.
    assert np.abs(uncalibrated(pixels, training=True) - exported).max() > 1e-2
    model, _ = onnx_import.keras_model_from_onnx(onnx.load(model_file))
    onnx_import.calibrate_batch_norm(model, images(frames[0], config.input_size), batch_size=5)
    np.testing.assert_allclose(model(pixels, training=False), exported, atol=1e-5)
    np.testing.assert_allclose(model(pixels, training=True), exported, atol=1e-4)


def test_the_int8_model_is_refused_with_the_file_to_use(tmp_path):
    model_file = export_to(tmp_path / 'model_int8.onnx', build_model(TINY), TINY,
                           **{'followme.quantized': 'int8',
                              'followme.float_model': 'followme_fcn.onnx'})
    with pytest.raises(onnx_import.OnnxImportError, match='float model.*followme_fcn.onnx'):
        onnx_import.keras_model_from_onnx(onnx.load(model_file))


def test_a_freshly_initialised_model_comes_back_too(tmp_path, frames):
    """Zero batch-norm shifts: tf2onnx then writes convolutions without a bias."""
    original = build_model(TINY)
    model_file = export_to(tmp_path / 'model.onnx', original, TINY)
    model, _ = onnx_import.keras_model_from_onnx(onnx.load(model_file))
    pixels = to_model_input(images(frames[1], TINY.input_size))
    np.testing.assert_allclose(model(pixels, training=False), original(pixels, training=False),
                               atol=1e-4)


def test_a_model_not_written_by_our_export_is_refused(tmp_path):
    model_file = export_to(tmp_path / 'model.onnx', build_model(TINY), TINY)
    proto = onnx.load(model_file)
    del proto.metadata_props[:]
    with pytest.raises(onnx_import.OnnxImportError, match='only models written by'):
        onnx_import.keras_model_from_onnx(proto)


def test_weights_that_do_not_fit_the_recorded_architecture_are_refused(tmp_path):
    wider = dataclasses.replace(TINY, bottleneck_filters=16)
    model_file = export_to(tmp_path / 'model.onnx', trained_looking(wider), TINY)
    with pytest.raises(onnx_import.OnnxImportError, match='layer bottleneck'):
        onnx_import.keras_model_from_onnx(onnx.load(model_file))


def test_command_line_errors_name_the_problem(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        onnx_import.main(['--model', str(tmp_path / 'missing.onnx'),
                          '--output', str(tmp_path / 'run')])
    assert stop.value.code == 2
    assert 'missing.onnx does not exist' in capsys.readouterr().err
    assert not (tmp_path / 'run').exists()


def test_a_network_with_a_context_level_comes_back(tmp_path, frames):
    config = dataclasses.replace(TINY, context_filters=8)
    original = trained_looking(config)
    model_file = export_to(tmp_path / 'model.onnx', original, config)
    model, imported_config = onnx_import.keras_model_from_onnx(onnx.load(model_file))
    assert imported_config == config
    pixels = to_model_input(images(frames[1], config.input_size))
    expected = np.asarray(original(pixels, training=False))
    np.testing.assert_allclose(model(pixels, training=False), expected, atol=1e-4)
    # The export itself (graph rewrites included) computes the context level too.
    session = ort.InferenceSession(str(model_file), providers=['CPUExecutionProvider'])
    np.testing.assert_allclose(session.run(None, {'image': pixels})[0], expected, atol=1e-4)
