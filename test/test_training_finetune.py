"""A fine-tune starts from the weights it names (train.init_weights)."""

import json

import numpy as np
import pytest
from test_training_data import write_classic_set
from test_training_onnx_import import export_to, trained_looking
from training import train
from training.model import build_model, ModelConfig
import yaml

TINY_MODEL = {'input_size': [32, 32], 'encoder_filters': [4, 8], 'bottleneck_filters': 8,
              'decoder_convs': 1}


def tiny_config(root, **train_settings):
    return train.merge_config({
        'name': 'tiny',
        'data': {'train': str(write_classic_set(root / 'train', frames=8, seed=1)),
                 'val': str(write_classic_set(root / 'val', frames=4, seed=2))},
        'model': TINY_MODEL,
        'train': {'batch_size': 4, 'epochs': 1, 'steps_per_epoch': 1, **train_settings},
    })


def kernels(weights_file):
    model = build_model(ModelConfig.from_dict(TINY_MODEL))
    model.load_weights(weights_file)
    return [w.numpy() for w in model.trainable_weights if 'kernel' in w.path]


def test_fine_tune_starts_from_the_given_weights(tmp_path):
    start = tmp_path / 'start.weights.h5'
    build_model(ModelConfig.from_dict(TINY_MODEL)).save_weights(start)
    # Learning rate 0: the kernels cannot move, so the result is the start, not a fresh init.
    run_dir = train.train(tiny_config(tmp_path, learning_rate=0.0, init_weights=str(start)),
                          tmp_path / 'runs', 'finetune')
    for before, after in zip(kernels(start), kernels(run_dir / 'last.weights.h5')):
        np.testing.assert_array_equal(before, after)
    fresh = train.train(tiny_config(tmp_path, learning_rate=0.0), tmp_path / 'runs', 'fresh')
    assert any(not np.array_equal(a, b) for a, b in
               zip(kernels(start), kernels(fresh / 'last.weights.h5')))


def test_fine_tune_starts_from_an_exported_onnx_model(tmp_path):
    """Users have the shipped .onnx, not its run folder: a fine-tune imports it first."""
    config = ModelConfig.from_dict(TINY_MODEL)
    # No weight at its initial value: every one must load.
    export_to(tmp_path / 'start.onnx', trained_looking(config), config)
    run_dir = train.train(tiny_config(tmp_path, learning_rate=0.0,
                                      init_weights=str(tmp_path / 'start.onnx')),
                          tmp_path / 'runs', 'from-onnx')
    imported = run_dir / 'init_from_onnx'
    assert json.loads((imported / 'import.json').read_text())['parity_max_abs_diff'] <= 1e-4
    assert not json.loads((run_dir / 'init_weights.json').read_text())['unchanged']
    for before, after in zip(kernels(imported / 'best.weights.h5'),
                             kernels(run_dir / 'last.weights.h5')):
        np.testing.assert_array_equal(before, after)


def test_an_int8_start_is_refused_before_training(tmp_path):
    import onnx
    from onnx import helper
    from training.export import set_metadata
    proto = helper.make_model(helper.make_graph([], 'empty', [], []))
    set_metadata(proto, {'followme.quantized': 'int8'})
    int8 = tmp_path / 'model_int8.onnx'
    onnx.save(proto, int8)
    with pytest.raises(train.ConfigError, match='init_weights: this is the int8 model'):
        train.train(tiny_config(tmp_path, init_weights=str(int8)), tmp_path / 'runs', 'int8')


def test_missing_init_weights_is_a_clear_error(tmp_path):
    with pytest.raises(train.ConfigError, match='init_weights: .*does not exist'):
        train.train(tiny_config(tmp_path, init_weights=str(tmp_path / 'nope')),
                    tmp_path / 'runs', 'broken')


def start_run(folder, model=TINY_MODEL):
    """Write a run folder as training leaves it, as far as a fine-tune reads it."""
    folder.mkdir()
    (folder / 'config.yaml').write_text(yaml.safe_dump({'model': model}))
    keras_model = build_model(ModelConfig.from_dict(model))
    rng = np.random.default_rng(7)
    for weight in keras_model.weights:  # no two alike, none at an initialiser's value
        weight.assign(rng.uniform(0.5, 1.5, tuple(weight.shape)).astype('float32'))
    keras_model.save_weights(folder / 'best.weights.h5')
    return folder / 'best.weights.h5'


def test_partial_init_loads_what_fits_and_names_the_rest(tmp_path):
    start = start_run(tmp_path / 'start')
    slim = {**TINY_MODEL, 'decoder_filters': [8, 2]}  # the last decoder block is narrower
    config = tiny_config(tmp_path, learning_rate=0.0, init_weights=str(start.parent),
                         init_partial=True)
    config['model'] = slim
    run_dir = train.train(config, tmp_path / 'runs', 'partial')
    report = json.loads((run_dir / 'init_weights.json').read_text())
    assert report['partial'] is True
    assert 'decoder2_1_sepconv/pointwise_kernel' in report['unchanged']
    assert 'classes/kernel' in report['unchanged']
    assert 'encoder1_sepconv/depthwise_kernel' in report['loaded']
    assert 'decoder1_1_sepconv/pointwise_kernel' in report['loaded']
    # The loaded kernels are the start's (learning rate 0 keeps them there).
    result = build_model(ModelConfig.from_dict(slim))
    result.load_weights(run_dir / 'last.weights.h5')
    original = build_model(ModelConfig.from_dict(TINY_MODEL))
    original.load_weights(start)
    want = {w.path: w.numpy() for w in original.weights}
    for weight in result.weights:
        if weight.path in report['loaded']:
            np.testing.assert_array_equal(weight.numpy(), want[weight.path])


def test_partial_init_matches_layers_by_name_when_a_layer_is_added(tmp_path):
    # Keras keys weights files by layer type and position: an extra Conv2D before the last
    # upsampling would hand its weights on to the wrong layers. Matching by name must not.
    start = start_run(tmp_path / 'start')
    wider = {**TINY_MODEL, 'decoder_reduce': [0, 4]}
    model = build_model(ModelConfig.from_dict(wider))
    report = train.load_init_weights(model, start, partial=True)
    assert 'decoder2_reduce/kernel' in report['unchanged']
    assert 'decoder2_1_sepconv/depthwise_kernel' in report['unchanged']  # 4 + 3 channels now
    assert 'classes/kernel' in report['loaded']
    original = build_model(ModelConfig.from_dict(TINY_MODEL))
    original.load_weights(start)
    want = {w.path: w.numpy() for w in original.weights}
    for weight in model.weights:  # moving statistics included
        if weight.path.split('/')[0] not in ('decoder2_reduce', 'decoder2_reduce_bn',
                                             'decoder2_1_sepconv'):
            np.testing.assert_array_equal(weight.numpy(), want[weight.path], err_msg=weight.path)
    # The added layers keep their initial values (a positional load would fill them).
    reduce_bn = model.get_layer('decoder2_reduce_bn')
    np.testing.assert_array_equal(reduce_bn.moving_variance.numpy(), 1.0)
    np.testing.assert_array_equal(reduce_bn.gamma.numpy(), 1.0)


def test_partial_init_without_the_run_config_says_what_it_needs(tmp_path):
    start = tmp_path / 'start.weights.h5'
    build_model(ModelConfig.from_dict(TINY_MODEL)).save_weights(start)
    model = build_model(ModelConfig.from_dict({**TINY_MODEL, 'decoder_filters': [8, 2]}))
    with pytest.raises(train.ConfigError, match='init_partial needs .*config.yaml'):
        train.load_init_weights(model, start, partial=True)


def test_a_start_that_does_not_fit_says_how_to_load_part_of_it(tmp_path):
    start = tmp_path / 'start.weights.h5'
    build_model(ModelConfig.from_dict(TINY_MODEL)).save_weights(start)
    config = tiny_config(tmp_path, init_weights=str(start))
    config['model'] = {**TINY_MODEL, 'decoder_filters': [8, 2]}
    with pytest.raises(train.ConfigError, match='does not fit this model.*init_partial'):
        train.train(config, tmp_path / 'runs', 'misfit')
